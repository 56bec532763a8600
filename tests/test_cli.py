"""End to end through the command line, on the sample shipped in the package."""

import json

import pytest
import torch

from dawntrain.cli import main


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))


def test_one_epoch_on_the_sample_writes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            "sample",
            "--epochs",
            "1",
            "--set",
            "width=8",
            "--batch-size",
            "256",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "train_loss" in printed and "val_acc" in printed
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["epoch"] == 1
    assert set(metrics[0]) >= {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "elapsed_s"}
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "config.toml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["torch"] == torch.__version__

    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt")]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dawntrain: error:") and "missing" in err[0]
    assert main(["train", "--set", "widht=3", "--print-config"]) == 2
    assert "did you mean width" in capsys.readouterr().err


def test_print_config_presets_and_summary(capsys):
    assert main(["train", "--preset", "davidnet", "--set", "width=32", "--print-config"]) == 0
    assert "width = 32" in capsys.readouterr().out
    assert main(["presets"]) == 0
    assert "davidnet" in capsys.readouterr().out
    assert main(["summary", "--preset", "davidnet"]) == 0
    out = capsys.readouterr().out
    assert "Trainable params: 6,573,120" in out and "(512, 4, 4)" in out and "(10,)" in out
