"""RUN/steps.jsonl: the records a run writes against the sums read step by step, and a resumed
run's file continuing without a duplicated or a missing record."""

import json

import pytest

from dawntrain.config import resolve
from dawntrain.train import fit
from dawntrain.train.callbacks import Callback
from dawntrain.train.checkpoint import load
from dawntrain.train.step_records import read_steps
from synthetic import tiny_dataset

EVERY, STEPS, EPOCHS = 2, 6, 2  # 96 images in batches of 16


def config(out, **kw):
    sets = ["width=4", f"epochs={EPOCHS}", "batch_size=16", "image_size=8", "sanity_check=false"]
    sets += ["quiet=true", "precision=fp32", "device=cpu", "report=false"]
    sets += [f"loss_every_steps={EVERY}", *(f"{k}={v}" for k, v in kw.items())]
    return resolve("davidnet", sets=sets, overrides={"out": str(out)})


def data():
    return tiny_dataset(size=8)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted run and the reference records read along."""
    out = tmp_path_factory.mktemp("full")
    reference = ReadEveryRecord()
    fit(config(out), dataset=data(), callbacks=[reference])
    return out, reference.rows


class ReadEveryRecord(Callback):
    """The reference: the epoch's sums read back (a device sync) at each step that is recorded."""

    def __init__(self):
        self.rows, self.previous = [], None

    def on_epoch_start(self, run, state):
        self.previous = state.stats.read()

    def on_step_end(self, run, state):
        if state.step % EVERY and state.step != run.steps:
            return
        now, before = state.stats.read(), self.previous
        examples = now["examples"] - before["examples"]
        self.rows.append(
            {
                "step": state.epoch * run.steps + state.step,
                "epoch": state.epoch + 1,
                "loss": (now["loss_sum"] - before["loss_sum"]) / examples,
                "acc": (now["correct"] - before["correct"]) / examples,
                "lr": {g["name"]: g["lr"] for g in run.optimizer.param_groups},
            }
        )
        self.previous = now


def without_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_the_records_are_the_losses_and_rates_of_their_steps(full, tmp_path):
    out, reference = full
    records = read_steps(out / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(EVERY, STEPS * EPOCHS + 1, EVERY))
    assert without_time(records) == reference
    assert {tuple(r["lr"]) for r in records} == {("weights", "norm")}  # DavidNet's SGD groups
    times = [r["time"] for r in records]
    assert times == sorted(times) and times[0] >= 0
    # Windows of equal size: their mean is the epoch's train_loss in metrics.jsonl.
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        losses = [r["loss"] for r in records if r["epoch"] == m["epoch"]]
        assert sum(losses) / len(losses) == pytest.approx(m["train_loss"], rel=1e-12)
    # A fresh run in the same directory starts a new file; loss_every_steps = 0 writes none.
    (tmp_path / "steps.jsonl").write_text((out / "steps.jsonl").read_text())
    fit(config(tmp_path, epochs=1), dataset=data())
    assert [r["step"] for r in read_steps(tmp_path / "steps.jsonl")] == [2, 4, 6]
    fit(config(tmp_path / "off", epochs=1, loss_every_steps=0), dataset=data())
    assert not (tmp_path / "off" / "steps.jsonl").exists()


def test_a_resumed_run_drops_the_records_after_its_checkpoint_and_continues(full, tmp_path):
    full = read_steps(full[0] / "steps.jsonl")

    class CrashInEleventhStep(Callback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, run, state):
            self.steps += 1
            if self.steps == 11:
                raise RuntimeError("simulated crash")

    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(
            config(part, checkpoint_every_steps=3),
            dataset=data(),
            callbacks=[CrashInEleventhStep()],
        )
    saved = load(part / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 3)  # global step 9
    # The crashed run had recorded step 10, past its checkpoint.
    assert [r["step"] for r in read_steps(part / "steps.jsonl")] == [2, 4, 6, 8, 10]
    fit(config(part, checkpoint_every_steps=3), dataset=data(), resume="last")
    resumed = read_steps(part / "steps.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    # The resumed run trains bitwise as the uninterrupted one: the same records, except that the
    # first one after the checkpoint (step 10) covers only the step after it.
    changed = [r["step"] for r, f in zip(without_time(resumed), without_time(full)) if r != f]
    assert changed == [10]
    assert resumed[4]["lr"] == full[4]["lr"]
    times = [r["time"] for r in resumed]
    assert times == sorted(times)
