"""RUN/report.html is one self-contained page that a browser renders with every figure."""

import base64
import dataclasses
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dawntrain.analysis.plot_predictions import expected_calibration_error
from dawntrain.analysis.report import TensorBoardLogger, write_report
from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.errors import ConfigError
from dawntrain.train import fit
from synthetic import tiny_dataset

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = tiny_dataset(48, 3, 12, n_test=20, noise=120, step=60, class_names=["ant", "bee", "cat"])
    sets = ["width=4", "epochs=2", "batch_size=16", "image_size=12", "dropout=0.0"]
    sets += ["quiet=true", "precision=fp32", "device=cpu"]
    fit(dataclasses.replace(resolve("davidnet", sets=sets), out=str(out)), dataset=data)
    write_report(out, data, device="cpu")
    return SimpleNamespace(out=out, data=data, page=(out / "report.html").read_text())


FIGURES = 10


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)


def test_the_page_holds_everything_and_needs_nothing_else(run):
    page = run.page
    for heading in ("Final metrics", "Timings", "Hardware", "Training curves", "Config"):
        assert heading in page
    for heading in ("Accuracy against time", "Training loss per step", "Learning rates per group"):
        assert f"<h2>{heading}</h2>" in page
    assert "preset = &quot;davidnet&quot;" in page  # the config, escaped
    assert page.count("<tr>") >= 2 + 1  # the metrics table: header and one row per epoch
    sources = image_sources(page)
    # curves, accuracy against time, loss per step, rates, confusion matrix, prediction grid,
    # calibration, confused pairs, mistakes, filters
    assert len(sources) == FIGURES
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            assert img.format == "PNG" and min(img.size) > 100
            img.load()
    # No external resource of any kind: no links, scripts, style sheets or fetches.
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "", page)
    assert not re.search(r"(https?:|//[a-z]|<script|<link|<iframe|url\(|@import)", text)


def test_the_prediction_and_model_sections(run):
    page = run.page
    for heading in (
        "Calibration",
        "Most-confused pairs",
        "Most confident mistakes",
        "Model",
        "First-layer filters",  # DavidNet has no whitening layer: its prep conv
    ):
        assert f"<h2>{heading}</h2>" in page
    with np.load(run.out / "predictions.npz") as f:
        confidence, right = f["confidence"], f["predictions"] == f["labels"]
    ece = expected_calibration_error(confidence, right)
    assert f"Expected calibration error {ece:.4f} (15 bins)" in page
    check = json.loads((run.out / "sanity_check.json").read_text())
    assert html.escape(check["message"]) in page
    assert "davidnet preset: 12x12 input, 3 classes" in page  # the layer table
    assert "layer prep.conv, 4 filters of 3x3x3" in page
    assert "+0.000 G" not in page


def test_cli_rewrites_it_from_the_cached_predictions(run, capsys):
    (run.out / "report.html").unlink()
    assert main(["report", str(run.out)]) == 0  # no data given: predictions.npz answers
    assert "report.html" in capsys.readouterr().out
    assert len(image_sources((run.out / "report.html").read_text())) == FIGURES


def test_a_run_without_checkpoint_still_gets_a_page(run, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.toml", "metrics.jsonl"):
        shutil.copy(run.out / name, partial / name)
    page = write_report(partial).read_text()
    assert "the run has not finished" in page and "no test predictions" in page
    assert "no model:" in page
    assert "steps.jsonl does not exist" in page and "--set loss_every_steps=N" in page
    assert len(image_sources(page)) == 2  # the curves, accuracy against time


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_headless_chromium_renders_it_with_every_image(run, tmp_path):
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]

    def chromium(*args, profile):
        return subprocess.run(
            [*flags, f"--user-data-dir={tmp_path / profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    shot = tmp_path / "shot.png"
    url = (run.out / "report.html").as_uri()
    chromium(f"--screenshot={shot}", "--window-size=1200,2000", url, profile="a")
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200) and pixels.std() > 20  # not a blank page

    # A copy that records, once loaded, how many images decoded (a broken one has width 0).
    probe = tmp_path / "probe.html"
    script = (
        '<script>addEventListener("load", () => { const i = [...document.images]; '
        'document.title = "images " + i.length + " " + '
        "i.filter(x => x.complete && x.naturalWidth > 0).length; });</script>"
    )
    probe.write_text(run.page.replace("</body>", script + "</body>"))
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", probe.as_uri(), profile="b")
    assert f"<title>images {FIGURES} {FIGURES}</title>" in dom.stdout


def test_tensorboard_logger_without_tensorboard_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)


def test_tensorboard_logger_groups_train_and_val(tmp_path, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        add_text = flush = close = lambda self, *a: None

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=FakeWriter)
    )
    logger = TensorBoardLogger(tmp_path, resolve("davidnet"))
    metrics = {"epoch": 3, "lr": 0.1, "train_loss": 1.5, "val_acc": 0.5, "train_s": 2.0}
    logger.log({**metrics, "test_acc_tta": 0.7, "flag": True})
    logger.close()
    assert written == [
        ("dir", str(tmp_path / "tensorboard")),
        ("lr", 0.1, 3),
        ("loss/train", 1.5, 3),
        ("acc/val", 0.5, 3),
        ("time/train_s", 2.0, 3),
        ("acc_tta/test", 0.7, 3),
    ]


def test_cells_keep_the_digits_of_small_rates():
    from dawntrain.analysis.report import _cell

    assert _cell(8.5e-4) == "0.00085" and _cell(1.2e-6) == "1.2e-06"
    assert _cell(0.0) == "0.0000" and _cell(0.5250) == "0.5250" and _cell(123456.0) == "1.235e+05"
