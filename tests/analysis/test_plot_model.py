"""First-layer filters (the fast network's whitening, DavidNet's prep conv), the report's Model
section, the sanity check a fresh run keeps, and FLOPs that keep their digits."""

import dataclasses
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dawntrain.analysis import plot_model
from dawntrain.analysis.summary import format_flops, format_summary
from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.models import DavidNet, FastNet, PreActResNet
from dawntrain.train import fit
from synthetic import tiny_dataset


def test_first_layer_is_the_whitening_conv_or_the_first_image_conv():
    torch.manual_seed(0)
    fast = FastNet(widths=(8, 16, 16))
    fast.init_from_data(torch.randn(64, 3, 8, 8))
    layer = plot_model.first_layer(fast)
    assert (layer.name, layer.whitening) == ("whiten", True)
    np.testing.assert_array_equal(layer.weight, fast.whiten.weight.detach().numpy())
    assert layer.weight.shape == (24, 3, 2, 2)
    # The second half is the first half's negatives (models/fast.py).
    np.testing.assert_array_equal(layer.weight[12:], -layer.weight[:12])
    plain = plot_model.first_layer(FastNet(widths=(8, 16, 16), whiten=False))
    assert (plain.name, plain.whitening) == ("whiten", False)
    assert "trained" in plain.description
    david = plot_model.first_layer(DavidNet(c=8))
    assert (david.name, david.weight.shape) == ("prep.conv", (8, 3, 3, 3))
    assert plot_model.first_layer(PreActResNet(num_classes=5, width=8)).name == "tail.0"


def test_filter_images_scale_each_filter_around_grey():
    weight = np.zeros((2, 3, 2, 2), np.float32)
    weight[0, 0, 0, 0], weight[0, 1, 1, 1] = 4.0, -2.0  # largest |w| of filter 0: 4
    weight[1, 2, 0, 1] = -0.001  # a tiny filter gets the full range too
    images = plot_model.filter_images(weight)
    assert images.shape == (2, 2, 2, 3)
    assert images[0, 0, 0, 0] == 1.0 and images[0, 1, 1, 1] == 0.25 and images[0, 0, 1, 2] == 0.5
    assert images[1, 0, 1, 2] == 0.0 and images[1, 0, 0, 0] == 0.5
    # Not three channels: the mean over channels, as grey.
    grey = plot_model.filter_images(np.ones((1, 5, 3, 3), np.float32))
    assert grey.shape == (1, 3, 3, 3) and (grey == 1.0).all()


def test_filters_figure_shows_each_filter_with_its_norm():
    torch.manual_seed(0)
    fast = FastNet(widths=(8, 16, 16))
    fast.init_from_data(torch.randn(64, 3, 8, 8))
    layer = plot_model.first_layer(fast)
    fig = plot_model.figure_filters(layer, title="t")
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert len(shown) == 24
    norms = np.sqrt((layer.weight.astype(np.float64) ** 2).reshape(24, -1).sum(1))
    assert [ax.get_title() for ax in shown] == [f"{n:.3g}" for n in norms]
    # Filters then their negatives, half a row each: filter i above its negative.
    assert shown[0].get_position().x0 == pytest.approx(shown[12].get_position().x0)
    assert shown[0].get_position().y0 > shown[12].get_position().y0
    title = fig.texts[0].get_text()
    assert "whitening filters" in title and "layer whiten, 24 filters of 3x2x2" in title


def test_flops_keep_their_digits():
    assert format_flops(291_000_000) == "0.291 G"
    assert format_flops(2_364_000) == "2.36 M"
    assert format_flops(395_800) == "395.8 k"
    assert format_flops(12) == "12"
    fast = FastNet()
    text = format_summary(fast, (3, 32, 32))
    assert "+0.000 G" not in text
    assert "(+395.8 k elementwise)" in text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = tiny_dataset(48, 3, 12, n_test=20, noise=120, step=60, class_names=["ant", "bee", "cat"])
    sets = ["width=4", "epochs=1", "batch_size=16", "image_size=12", "tta_level=0"]
    sets += ["precision=fp32", "device=cpu", "report=false"]
    console = io.StringIO()
    fit(dataclasses.replace(resolve("fast", sets=sets), out=str(out)), dataset=data, stream=console)
    return SimpleNamespace(out=out, data=data, console=console.getvalue())


def test_a_fresh_run_keeps_its_sanity_check(run):
    check = json.loads((run.out / "sanity_check.json").read_text())
    assert check["chance_accuracy"] == pytest.approx(1 / 3)
    assert check["chance_loss"] == pytest.approx(np.log(3))
    assert check["images"] == 20  # the whole (tiny) validation set, at most 512
    assert f"got {check['accuracy']:.4f}" in check["message"]
    assert f"got {check['loss']:.3f}" in check["message"]
    assert check["message"] + "\n" in run.console  # the line the console showed
    assert plot_model.sanity_check(run.out) == check


def test_model_section_of_a_run(run):
    section = plot_model.model_report(run.out, "cpu")
    assert section["summary"].startswith("fast preset: 12x12 input, 3 classes")
    assert section["filters_heading"] == "Whitening filters"
    assert section["sanity_check"]["images"] == 20
    assert all(value[-1] in "GMk" for value in section["flops"].values())


def test_cli_plot_filters(run, tmp_path, capsys):
    assert main(["plot", "filters", str(run.out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == f"written to {run.out / 'filters.png'}"
    with Image.open(run.out / "filters.png") as img:
        assert img.format == "PNG"
    out = tmp_path / "f.png"
    assert main(["plot", "filters", str(run.out), "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["plot", "filters", str(tmp_path)]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err
