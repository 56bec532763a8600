"""Calibration, confused pairs, confident mistakes: the numbers behind each figure checked against
straightforward references on hand-made arrays; the commands write their files."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle
from PIL import Image

from dawntrain.analysis import plot_predictions as pp
from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.errors import ConfigError
from dawntrain.infer.predict import run_predictions
from dawntrain.train import fit
from synthetic import tiny_dataset


def reference_ece(confidence, correct, bins=15):
    """The textbook loop: bins (lo, hi] (the first one also takes 0), weighted |acc - conf|."""
    edges = np.linspace(0, 1, bins + 1)
    total, n = 0.0, len(confidence)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (confidence > lo) & (confidence <= hi)
        if i == 0:
            inside |= confidence == 0
        if inside.any():
            total += inside.sum() / n * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def predictions(labels, predicted, confidence, names=("ant", "bee", "cat"), images=None):
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    confidence = np.asarray(confidence, dtype=np.float32)
    wrong = np.flatnonzero(labels != predicted)
    mistakes = wrong[np.argsort(-confidence[wrong], kind="stable")].astype(np.int64)
    if images is None:
        images = np.zeros((len(labels), 4, 4, 3), np.uint8) + np.arange(len(labels))[
            :, None, None, None
        ].astype(np.uint8)
    return {
        "labels": labels,
        "predictions": predicted,
        "confidence": confidence,
        "class_names": np.array(names),
        "tta_level": np.array(0),
        "mistake_index": mistakes,
        "mistake_images": images[mistakes],
    }


def test_ece_matches_the_reference_loop_with_confidences_on_the_edges():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0, 1, 2000)
    # Values exactly on bin edges, and 0 and 1, go where the (lo, hi] rule says.
    confidence[:16] = np.linspace(0, 1, 16)
    correct = rng.uniform(0, 1, 2000) < confidence
    assert pp.expected_calibration_error(confidence, correct) == pytest.approx(
        reference_ece(confidence, correct), abs=1e-12
    )
    # Perfect calibration in every bin: ECE 0; always wrong at confidence 0.9: ECE 0.9.
    assert pp.expected_calibration_error(np.full(10, 1.0), np.ones(10, bool)) == 0
    assert pp.expected_calibration_error(np.full(10, 0.9), np.zeros(10, bool)) == pytest.approx(0.9)


def test_calibration_bins_and_the_bars_drawn():
    confidence = np.array([0.05, 0.06, 0.5, 0.52, 0.55, 0.99, 1.0, 1 / 15])
    correct = np.array([0, 1, 1, 1, 0, 1, 1, 0], bool)
    b = pp.calibration_bins(confidence, correct)
    # Bin 0 is [0, 1/15]: 0.05, 0.06 and 1/15 itself; bin 7 (7/15, 8/15]: 0.5, 0.52;
    # bin 8 (8/15, 9/15]: 0.55; bin 14: 0.99 and 1.0.
    expected = {0: (3, 1 / 3), 7: (2, 1.0), 8: (1, 0.0), 14: (2, 1.0)}
    assert {i: int(n) for i, n in enumerate(b["count"]) if n} == {
        i: n for i, (n, _) in expected.items()
    }
    for i, (_, acc) in expected.items():
        assert b["accuracy"][i] == pytest.approx(acc)
    assert np.isnan(b["accuracy"][1])

    # The figure reads float32 confidences (as predictions.npz holds them), and float32(1/15)
    # lies above the edge: drawn without it.
    confidence, correct = confidence[:-1], correct[:-1]
    drawn = {**expected, 0: (2, 0.5)}
    labels = np.zeros(len(confidence), int)
    fig = pp.figure_calibration(predictions(labels, np.where(correct, 0, 1), confidence))
    reliability, histogram = fig.axes[:2]
    bars = [p for p in reliability.patches if isinstance(p, Rectangle)]
    heights = {round(bar.get_x() * 15): bar.get_height() for bar in bars}
    assert heights == pytest.approx({i: acc for i, (_, acc) in drawn.items()})
    counts = sorted(int(t.get_text()) for t in reliability.texts if t.get_text().isdigit())
    assert counts == sorted(n for n, _ in drawn.values())
    ece = reference_ece(confidence, correct)
    assert f"ECE {ece:.4f}" in reliability.get_title()
    # The histogram: right and wrong images per bin, side by side, in the same bins.
    drawn_counts = {}
    for bar in histogram.patches:
        if bar.get_height():
            drawn_counts[(round(bar.get_x() * 30), bar.get_facecolor())] = bar.get_height()
    right_color, wrong_color = (to_rgba(c) for c in (pp.RIGHT, pp.WRONG))
    assert drawn_counts == {
        (0, right_color): 1,  # bin 0: 0.06 right, 0.05 wrong
        (1, wrong_color): 1,
        (14, right_color): 2,  # bin 7: 0.5, 0.52
        (17, wrong_color): 1,  # bin 8: 0.55
        (28, right_color): 2,  # bin 14: 0.99, 1.0
    }


def test_confused_pairs_count_off_the_diagonal_in_order():
    labels = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    predicted = [0, 1, 1, 2, 0, 0, 1, 1, 1, 0, 2]
    # 0→1 twice, 1→0 twice, 2→1 twice, 0→2 once, 2→0 once: ties by (true, predicted).
    assert pp.confused_pairs(labels, predicted, 3, top=4) == [
        (0, 1, 2),
        (1, 0, 2),
        (2, 1, 2),
        (0, 2, 1),
    ]
    fig = pp.figure_confused_pairs(predictions(labels, predicted, np.ones(11)), top=4)
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [2, 2, 2, 1]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "ant → bee",
        "bee → ant",
        "cat → bee",
        "ant → cat",
    ]
    assert "hold 7 of 8 mistakes" in fig.texts[0].get_text()
    perfect = pp.figure_confused_pairs(predictions([0, 1], [0, 1], [1, 1]))
    assert "no test image was misclassified" in perfect.axes[0].texts[0].get_text()


def test_mistakes_are_the_most_confident_wrong_ones_first():
    labels = [0, 1, 2, 0, 1, 2]
    predicted = [1, 1, 0, 2, 0, 2]
    confidence = [0.6, 0.99, 0.9, 0.7, 0.95, 0.5]
    p = predictions(labels, predicted, confidence)
    fig = pp.figure_mistakes(p, n=3)
    titled = [ax for ax in fig.axes if ax.get_title()]
    # Wrong: 0 (0.6), 2 (0.9), 3 (0.7), 4 (0.95): most confident first.
    assert [ax.get_title() for ax in titled] == [
        "pred ant 0.95\ntrue bee",
        "pred ant 0.90\ntrue cat",
        "pred cat 0.70\ntrue ant",
    ]
    # Each image is the one its title names (image i is filled with the value i).
    assert [int(ax.get_images()[0].get_array()[0, 0, 0]) for ax in titled] == [4, 2, 3]
    assert "the 3 most confident of 4 mistakes" in fig.texts[0].get_text()
    assert len([ax for ax in pp.figure_mistakes(p, n=10).axes if ax.get_title()]) == 4
    with pytest.raises(ConfigError, match="at least 1"):
        pp.figure_mistakes(p, n=0)
    kept = {**p, "mistake_index": p["mistake_index"][:2], "mistake_images": p["mistake_images"][:2]}
    with pytest.raises(ConfigError, match="keeps only the 2 most confident of the 4"):
        pp.figure_mistakes(kept, n=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = tiny_dataset(48, 3, 12, n_test=20, noise=120, step=60, class_names=["ant", "bee", "cat"])
    sets = ["width=4", "epochs=1", "batch_size=16", "image_size=12", "dropout=0.0"]
    sets += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu", "report=false"]
    fit(dataclasses.replace(resolve("davidnet", sets=sets), out=str(out)), dataset=data)
    run_predictions(out, data, device="cpu")  # the cache the commands read (no data given)
    return SimpleNamespace(out=out, data=data)


def test_cli_writes_each_figure_into_the_run_or_out(run, tmp_path, capsys):
    base = ["--device", "cpu"]
    for name in ("confused-pairs", "mistakes"):
        assert main(["plot", name, str(run.out), *base]) == 0  # run_predictions caches
        assert capsys.readouterr().out.strip() == f"written to {run.out / (name + '.png')}"
        with Image.open(run.out / f"{name}.png") as img:
            assert img.format == "PNG"
    out = tmp_path / "cal.png"
    assert main(["plot", "calibration", str(run.out), "--out", str(out), *base]) == 0
    lines = capsys.readouterr().out.splitlines()
    with np.load(run.out / "predictions.npz") as f:
        ece = pp.expected_calibration_error(f["confidence"], f["predictions"] == f["labels"])
    assert lines == [f"expected calibration error (15 bins): {ece:.4f}", f"written to {out}"]
    assert out.is_file()
    assert main(["plot", "mistakes", str(run.out), "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    assert main(["plot", "confused-pairs", str(tmp_path), "--top", "3"]) == 2
    assert "checkpoints/last.pt does not exist" in capsys.readouterr().err
