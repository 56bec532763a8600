"""Figures: the data behind each one checked against a straightforward reference, files are PNGs."""

import dataclasses
import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from dawntrain.analysis import plots
from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.data.batches import epoch_plan, jitter_plan
from dawntrain.engine.build import build
from dawntrain.errors import DataError
from dawntrain.train import fit
from synthetic import tiny_dataset as _tiny_dataset

# Noise only: the plots need images and names, not a learnable task.
tiny_dataset = partial(
    _tiny_dataset,
    n=48,
    classes=3,
    size=12,
    n_test=16,
    noise=256,
    step=0,
    class_names=["ant", "bee", "cat"],
)


def tiny_config(**kw):
    sets = ["width=4", "epochs=2", "batch_size=16", "image_size=12", "dropout=0.0"]
    sets += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu"]
    return resolve("davidnet", sets=sets + [f"{k}={v}" for k, v in kw.items()])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = tiny_dataset()
    fit(dataclasses.replace(tiny_config(), out=str(out)), dataset=data)
    return SimpleNamespace(out=out, data=data)


def png_size(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_curves_png_and_probe_panel(run, tmp_path):
    path = plots.plot_curves(run.out)
    assert path == run.out / "curves.png"
    width, _ = png_size(path)
    metrics = [json.loads(x) for x in (run.out / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        m.update(alpha_star=0.5, top_eigenvalue=3.0)
    run_b = tmp_path / "probed"
    run_b.mkdir()
    (run_b / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    # The curvature probe adds a fourth panel.
    assert png_size(plots.plot_curves(run_b, tmp_path / "c.png"))[0] > width
    fig = plots.figure_curves(metrics)
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    assert list(lines["2 / λ_max (GD stability limit)"].get_ydata()) == [2 / 3.0, 2 / 3.0]


def test_confusion_matrix_counts_like_a_loop():
    rng = np.random.default_rng(1)
    labels, predictions = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    expected = np.zeros((5, 5), int)
    for t, p in zip(labels, predictions):
        expected[t, p] += 1
    np.testing.assert_array_equal(plots.confusion_matrix(labels, predictions, 5), expected)


def test_plot_confusion_writes_the_figure_and_the_cache(run, capsys):
    assert plots.plot_confusion(run.out, data=run.data, device="cpu") == run.out / "confusion.png"
    png_size(run.out / "confusion.png")
    with np.load(run.out / "predictions.npz") as f:
        assert list(f["labels"]) == list(run.data.test_labels)
        assert list(f["class_names"]) == ["ant", "bee", "cat"]
    # The CLI, without data: the cache of this checkpoint answers.
    assert main(["plot", "confusion", str(run.out), "--out", str(run.out / "c2.png")]) == 0
    assert "c2.png" in capsys.readouterr().out


def test_lr_at_step_resolution_is_the_loops_schedule(tmp_path):
    config = resolve("davidnet")  # 24 epochs, peak 0.4 at epoch 5, batch 512
    t, lr, steps = plots.lr_steps(config)
    assert steps == 98 and len(t) == 98 * 24  # 50,000 / 512 rounded up
    assert lr[0] == 0.0 and lr[5 * 98] == pytest.approx(0.4)
    assert lr[98 * 14] == pytest.approx(0.4 * (24 - 14) / (24 - 5))
    stairs = resolve("tiny-imagenet-resnet")  # 0.01, ×0.1 from epoch 64; 95,000 images
    t, lr, steps = plots.lr_steps(stairs)
    assert steps == 743 and set(lr[t < 64]) == {0.01} and np.allclose(lr[t >= 64], 0.001)
    with pytest.raises(DataError, match="--n-train"):
        plots.lr_steps(resolve("davidnet", overrides={"data": "/some/folder"}))
    assert plots.lr_steps(resolve("davidnet", overrides={"data": "x"}), n_train=1024)[2] == 2
    out = tmp_path / "lr.png"
    assert main(["plot", "lr", "--preset", "fast", "--set", "epochs=3", "--out", str(out)]) == 0
    png_size(out)


def reference_crop_flip(image, dx, dy, flip, pad):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = image.shape[:2]
    crop = padded[dy : dy + h, dx : dx + w]
    return crop[:, ::-1] if flip else crop


def test_samples_are_the_augmented_images_the_loop_feeds():
    data = tiny_dataset()
    config = tiny_config(crop_padding=3, flip="true", seed=5)
    images, labels, names = plots.pipeline_samples(data, config, n=10)
    plan = epoch_plan(48, 5, 0, 3, True, "cpu")
    for i in range(10):
        j = int(plan.order[i])
        ref = reference_crop_flip(
            data.train_images[j], int(plan.dx[i]), int(plan.dy[i]), bool(plan.flip[i]), 3
        )
        np.testing.assert_array_equal(images[i], ref)  # normalize, then back: exact
        assert labels[i] == data.train_labels[j]
    assert names == ["ant", "bee", "cat"]
    # Per-image standardization loses brightness: shown stretched to the full range.
    stretched, _, _ = plots.pipeline_samples(data, tiny_config(normalize="samplewise"), n=4)
    assert stretched.reshape(4, -1).min(1).tolist() == [0] * 4
    assert stretched.reshape(4, -1).max(1).tolist() == [255] * 4


def test_samples_show_the_colour_jitter_and_the_epochs_size():
    data = tiny_dataset()
    plain, _, _ = plots.pipeline_samples(data, tiny_config(seed=5), n=6)
    config = tiny_config(seed=5, brightness=0.2, contrast=0.2)
    jittered, _, _ = plots.pipeline_samples(data, config, n=6)
    normalizer = build(config, data).normalizer
    mean, std = (t.flatten().numpy().astype(np.float64) for t in (normalizer.mean, normalizer.std))
    shift, scale = (
        t[:6, None, None, None].double().numpy() for t in jitter_plan(48, 5, 0, 0.2, 0.2)
    )
    expected = ((plain - mean) / std + shift) * scale * std + mean
    inside = (expected > 0.5) & (expected < 254.5)  # shown images are clipped to 0..255
    assert inside.mean() > 0.5
    np.testing.assert_allclose(jittered[inside], expected[inside], atol=0.51)
    resized, _, _ = plots.pipeline_samples(data, tiny_config(train_sizes="[8]"), n=6)
    assert resized.shape == (6, 8, 8, 3)  # epoch 0 trains at 8x8


def test_plot_samples_grid(tmp_path):
    out = plots.plot_samples(tiny_dataset(), tiny_config(), n=6, out=tmp_path / "s.png")
    width, height = png_size(out)
    assert width > height  # one row of six


@pytest.mark.parametrize("suptitle", ["", "the 20 most confident of 57 mistakes"])
def test_grid_cells_fill_rows_in_order_inside_the_figure_without_overlap(suptitle):
    images = np.stack([np.full((4, 4, 3), i, dtype=np.uint8) for i in range(20)])
    titles = [f"class {i}\n(true: other)" for i in range(20)]
    fig = plots.figure_grid(images, titles, columns=8, suptitle=suptitle)
    boxes = [ax.get_position() for ax in fig.axes]
    assert [int(ax.get_images()[0].get_array()[0, 0, 0]) for ax in fig.axes] == list(range(20))
    assert [ax.get_title() for ax in fig.axes] == titles
    assert all(0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 1 for b in boxes)
    # Row by row, left to right: 8, 8, then 4 cells.
    assert [round(b.y0, 6) for b in boxes] == sorted((round(b.y0, 6) for b in boxes), reverse=True)
    assert len({round(b.y0, 6) for b in boxes}) == 3 and boxes[0].x0 < boxes[7].x0
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    # Drawn, no title (two lines) runs into another cell's image or into the heading.
    renderer = FigureCanvasAgg(fig).get_renderer()
    titles_drawn = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    images_drawn = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert not any(t.overlaps(im) for t in titles_drawn for im in images_drawn)
    if suptitle:
        heading = fig.texts[0].get_window_extent(renderer)
        assert fig.texts[0].get_text() == suptitle
        assert not any(heading.overlaps(t) for t in titles_drawn)
    else:
        assert not fig.texts
