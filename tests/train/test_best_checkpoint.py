"""checkpoints/best.pt: the epoch with the best value of config.best_metric, kept across resumes."""

import io
import json
import os

import pytest
import torch

from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.errors import ConfigError
from dawntrain.train import fit
from dawntrain.train.best import mode_of
from dawntrain.train.callbacks import Callback
from dawntrain.train.checkpoint import in_run, load, prune
from synthetic import image_folder, tiny_dataset


def config(out, **kw):
    sets = ["width=4", "epochs=3", "batch_size=32", "sanity_check=false", "quiet=true"]
    sets += ["precision=fp32", *(f"{k}={v}" for k, v in kw.items())]
    return resolve("davidnet", sets=sets, overrides={"out": str(out)})


def summary(out):
    return json.loads((out / "summary.json").read_text())


def same_weights(a, b):
    return all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_best_pt_is_the_first_epoch_with_the_best_value(tmp_path):
    console = io.StringIO()
    fit(
        config(tmp_path, best_metric='"val_acc"', quiet="false"),
        dataset=tiny_dataset(),
        stream=console,
    )
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [m["val_acc"] for m in history]
    epoch = values.index(max(values)) + 1  # a tie keeps the earlier epoch
    best = summary(tmp_path)["best"]
    assert best == {
        "metric": "val_acc",
        "mode": "max",
        "value": max(values),
        "epoch": epoch,
        "checkpoint": "checkpoints/best.pt",
    }
    state = load(tmp_path / "checkpoints" / "best.pt")
    assert same_weights(state, load(tmp_path / "checkpoints" / f"epoch_{epoch:02d}.pt"))
    assert json.loads(state["best"])["epoch"] == state["epoch"] == epoch
    assert f"best val_acc {max(values):.4f} at epoch {epoch}" in console.getvalue()


def test_without_best_metric_no_best_pt_is_written(tmp_path):
    fit(config(tmp_path, epochs=1), dataset=tiny_dataset())
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    assert "best" not in summary(tmp_path) and "best" not in load(tmp_path / "checkpoints/last.pt")


def test_a_resumed_run_keeps_its_best_so_far(tmp_path):
    """Train loss falls every epoch, so its maximum is epoch 1's: a resume after epoch 2 that
    forgot the record would write epoch 3 as best.pt."""
    data, kw = tiny_dataset(), dict(best_metric='"train_loss"', best_mode='"max"')
    fit(config(tmp_path / "full", **kw), dataset=data)
    assert summary(tmp_path / "full")["best"]["epoch"] == 1  # the premise

    class CrashBeforeEpoch3(Callback):
        def on_epoch_start(self, run, state):
            if state.epoch == 2:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config(tmp_path / "part", **kw), dataset=data, callbacks=[CrashBeforeEpoch3()])
    fit(config(tmp_path / "part", **kw), dataset=data, resume="last")
    assert summary(tmp_path / "part")["best"] == summary(tmp_path / "full")["best"]
    full, part = (load(tmp_path / r / "checkpoints" / "best.pt") for r in ("full", "part"))
    assert part["epoch"] == 1 and same_weights(full, part)


def test_best_mode_follows_the_metric_name_unless_given():
    assert [mode_of(m) for m in ("val_acc", "train_acc", "val_loss", "train_loss")] == [
        "max",
        "max",
        "min",
        "min",
    ]
    assert mode_of("val_loss", "max") == "max"


def test_an_unknown_best_metric_is_refused_naming_the_metrics():
    with pytest.raises(ConfigError) as e:
        resolve("davidnet", sets=["best_metric=accuracy"])
    for name in ("'accuracy'", "val_acc", "val_loss", "train_acc", "train_loss"):
        assert name in str(e.value)
    with pytest.raises(ConfigError, match="best_mode"):
        resolve("davidnet", sets=["best_mode=up"])


def test_eval_of_best_pt_gives_the_best_epochs_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    data, run = image_folder(tmp_path / "data", per_class=12, size=16), tmp_path / "run"
    args = ["train", "--data", str(data), "--set", "width=4", "--set", "image_size=16"]
    args += ["--epochs", "2", "-b", "12", "--precision", "fp32", "--quiet", "--no-sanity-check"]
    args += ["--set", "report=false", "--best-metric", "val_loss", "--out", str(run)]
    assert main(args) == 0
    best = summary(run)["best"]
    assert best["mode"] == "min" and best["epoch"] in (1, 2)
    capsys.readouterr()
    # Validation is the test split here, so eval on best.pt measures what the best epoch did.
    assert main(["eval", "--checkpoint", str(run / best["checkpoint"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(best["value"], rel=1e-6)
    # The shorthand RUN/best names the same file; RUN alone names last.pt.
    assert main(["eval", "--checkpoint", str(run / "best"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(best["value"], rel=1e-6)
    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(
        summary(run)["final"]["val_loss"], rel=1e-6
    )


def test_in_run_names(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert in_run(tmp_path) == tmp_path / "checkpoints" / "last.pt"
    assert in_run(tmp_path / "best") == tmp_path / "checkpoints" / "best.pt"
    assert in_run(tmp_path / "last") == tmp_path / "checkpoints" / "last.pt"
    assert in_run(tmp_path / "x.pt") == tmp_path / "x.pt"


def test_pruning_never_deletes_last_or_best(tmp_path):
    """checkpoint_name "{epoch}.pt" prunes by "*.pt", which last.pt and best.pt match too."""
    for i, name in enumerate(["1.pt", "best.pt", "2.pt", "last.pt", "3.pt"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(i * 10**9, i * 10**9))
    prune(tmp_path, "*.pt", keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.pt", "best.pt", "last.pt"]


def test_best_by_the_ema_needs_an_ema_and_follows_its_metric(tmp_path):
    with pytest.raises(ConfigError, match="needs an EMA"):
        config(tmp_path, best_metric='"ema_val_acc"')
    fit(config(tmp_path, best_metric='"ema_val_loss"', ema=0.9), dataset=tiny_dataset())
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [m["ema_val_loss"] for m in history]
    best = summary(tmp_path)["best"]
    assert (best["mode"], best["value"], best["epoch"]) == (
        "min",
        min(values),
        values.index(min(values)) + 1,
    )
