"""A run with `ema` logs the EMA's validation and test metrics beside the raw ones, stores the
EMA in its checkpoints (bitwise the same after a resume), and `eval --weights ema` reproduces
its summary; a run without it carries no trace of one."""

import io
import json

import pytest
import torch
from safetensors.torch import load_file

from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.errors import CheckpointError
from dawntrain.infer.evaluate import evaluate_checkpoint
from dawntrain.train import fit
from dawntrain.train.callbacks import Callback
from dawntrain.train.checkpoint import load
from synthetic import tiny_dataset

SETS = ["width=4", "epochs=2", "batch_size=32", "sanity_check=false", "precision=fp32"]
SETS += ["device=cpu", "report=false"]


def config(out, **kw):
    sets = SETS + [f"{k}={str(v).lower()}" for k, v in kw.items()]
    return resolve("davidnet", sets=sets, overrides={"out": str(out)})


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_without_ema_has_no_ema_anything(tmp_path):
    fit(config(tmp_path / "run", quiet=True, epochs=1), dataset=tiny_dataset())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not [k for k in [*history(tmp_path / "run")[0], *summary["final"]] if "ema" in k]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert "ema" not in load(ckpt)
    with pytest.raises(CheckpointError, match=r"no EMA.*--weights raw"):
        evaluate_checkpoint(ckpt, tiny_dataset(), "cpu", weights="ema")


def test_ema_metrics_are_logged_and_eval_reproduces_the_summary(tmp_path):
    out, table = tmp_path / "run", io.StringIO()
    # A held-out validation split, so the final test is a pass of its own (with TTA).
    cfg = config(out, ema=0.8, eval_every=2, epochs=3, val_from_train=16, tta_level=1)
    data = tiny_dataset()
    fit(cfg, dataset=data, stream=table)
    rows = history(out)
    assert [r["ema_val_acc"] is None for r in rows] == [True, False, False]
    assert rows[1]["ema_val_loss"] != rows[1]["val_loss"]  # another model than the raw one
    header = next(line for line in table.getvalue().splitlines() if line.split()[:1] == ["epoch"])
    assert "ema_val_acc" in header.split()
    final = json.loads((out / "summary.json").read_text())["final"]
    assert {"ema_test_acc", "ema_test_loss", "ema_test_acc_tta", "ema_val_acc"} <= final.keys()
    ckpt = out / "checkpoints" / "last.pt"
    result = evaluate_checkpoint(ckpt, data, "cpu", weights="ema")
    assert result["weights"] == "ema"
    # Bitwise what the run reported: the same weights, evaluation path and batches.
    assert (result["acc"], result["loss"]) == (final["ema_test_acc"], final["ema_test_loss"])
    assert (result["tta"]["acc"], result["tta"]["loss"]) == (
        final["ema_test_acc_tta"],
        final["ema_test_loss_tta"],
    )
    assert (result["top5"], result["tta"]["top5"]) == (
        final["ema_test_top5"],
        final["ema_test_top5_tta"],
    )
    raw = evaluate_checkpoint(ckpt, data, "cpu")
    assert (raw["weights"], raw["loss"]) == ("raw", final["test_loss"])
    assert (raw["top5"], raw["tta"]["top5"]) == (final["test_top5"], final["test_top5_tta"])
    assert [r["val_top5"] is None for r in rows] == [True, False, False]
    exported = tmp_path / "ema.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "safetensors"]
                + ["--out", str(exported), "--weights", "ema"]) == 0  # fmt: skip
    tensors, stored = load_file(exported), load(ckpt)
    assert json.loads(exported.with_name("ema.safetensors.json").read_text())["weights"] == "ema"
    for k, v in stored["ema"].items():
        assert torch.equal(tensors[k], v), k
    assert not torch.equal(tensors["prep.conv.weight"], stored["model"]["prep.conv.weight"])


def test_resume_inside_an_epoch_gives_bitwise_the_same_ema(tmp_path):
    data = tiny_dataset()
    fit(config(tmp_path / "full", quiet=True, ema=0.8, ema_every=2), dataset=data)

    class CrashInFifthStep(Callback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, run, state):
            self.steps += 1
            if self.steps == 5:
                raise RuntimeError("simulated crash")

    part = config(tmp_path / "part", quiet=True, ema=0.8, ema_every=2, checkpoint_every_steps=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(part, dataset=data, callbacks=[CrashInFifthStep()])
    assert load(tmp_path / "part" / "checkpoints" / "last.pt")["step_in_epoch"] == 1
    fit(part, dataset=data, resume="last")
    full = load(tmp_path / "full" / "checkpoints" / "last.pt")
    resumed = load(tmp_path / "part" / "checkpoints" / "last.pt")
    assert full["ema"].keys() == resumed["ema"].keys()
    for k, v in full["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k
    ema_keys = lambda out: [(r["ema_val_loss"], r["ema_val_acc"]) for r in history(out)]  # noqa: E731
    assert ema_keys(tmp_path / "full") == ema_keys(tmp_path / "part")


def test_the_ema_flag(capsys):
    assert main(["train", "--ema", "--print-config"]) == 0
    assert "ema = 0.999\n" in capsys.readouterr().out
    assert main(["train", "--ema", "0.99", "--print-config"]) == 0
    assert "ema = 0.99\n" in capsys.readouterr().out
    assert main(["train", "--ema", "1", "--print-config"]) == 2
    assert "ema must be in [0, 1)" in capsys.readouterr().err


def test_last_validation_on_the_test_images_is_the_final_tests_plain_pass(tmp_path, monkeypatch):
    """Validating on the test set, the last epoch takes its figures from the final test's pass
    (raw and EMA), which then does not run again, and they are what `eval` computes."""
    import dawntrain.engine.build as build

    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("tta_level", 0))
        return evaluate(*args, **kwargs)

    evaluate = build.evaluate
    monkeypatch.setattr(build, "evaluate", counted)
    out, data = tmp_path / "run", tiny_dataset()
    fit(config(out, quiet=True, ema=0.8, eval_every=1, tta_level=1), dataset=data)
    assert calls == [0, 0, 1, 1]  # epoch 1 raw and EMA, epoch 2 raw and EMA with TTA; no more
    last = history(out)[-1]
    final = json.loads((out / "summary.json").read_text())["final"]
    for k in ("loss", "acc", "top5"):
        assert last[f"val_{k}"] == final[f"test_{k}"]
        assert last[f"ema_val_{k}"] == final[f"ema_test_{k}"]
    monkeypatch.setattr(build, "evaluate", evaluate)
    raw = evaluate_checkpoint(out / "checkpoints" / "last.pt", data, "cpu")
    assert (raw["loss"], raw["acc"], raw["tta"]["acc"]) == (
        final["test_loss"],
        final["test_acc"],
        final["test_acc_tta"],
    )
