"""A resumed run ends with bitwise the same weights and metrics as an uninterrupted one."""

import json
import shutil

import pytest
import torch

from dawntrain.config import resolve
from dawntrain.errors import CheckpointError
from dawntrain.train import fit
from dawntrain.train.callbacks import Callback
from dawntrain.train.checkpoint import check_same_config, load
from synthetic import tiny_dataset


def config(out, **kw):
    sets = [
        "width=4",
        "epochs=3",
        "batch_size=32",
        "sanity_check=false",
        "quiet=true",
        "precision=fp32",
    ] + [f"{k}={v}" for k, v in kw.items()]
    return resolve("davidnet", sets=sets, overrides={"out": str(out)})


def final_state(out):
    return load(out / "checkpoints" / "last.pt")


def assert_same_run(a, b):
    sa, sb = final_state(a), final_state(b)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    ma = [{k: v for k, v in m.items() if not k.endswith("_s")} for m in json.loads(sa["history"])]
    mb = [{k: v for k, v in m.items() if not k.endswith("_s")} for m in json.loads(sb["history"])]
    assert ma == mb


class CrashAfterSteps(Callback):
    """Raises after the run's n-th step (counted over epochs), before the loop can save it."""

    def __init__(self, steps: int):
        self.steps, self.done = steps, 0

    def on_step_end(self, run, state):
        self.done += 1
        if self.done == self.steps:
            raise RuntimeError("simulated crash")


def crash_and_resume(make_config, tmp_path, after_steps, saved_at):
    """Runs make_config(tmp_path/"full") whole and make_config(tmp_path/"part") until a crash after
    `after_steps` steps; its last checkpoint must stand at saved_at (epoch, step in epoch), and the
    part, resumed from it, must end as the whole run."""
    data = tiny_dataset()
    full, part = tmp_path / "full", tmp_path / "part"
    fit(make_config(full), dataset=data)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_config(part), dataset=data, callbacks=[CrashAfterSteps(after_steps)])
    state = load(part / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == saved_at
    fit(make_config(part), dataset=data, resume="last")
    assert_same_run(full, part)


def test_resume_at_an_epoch_boundary_is_exact(tmp_path):
    data = tiny_dataset()
    fit(config(tmp_path / "full"), dataset=data)
    # A crash right after epoch 1: the run directory holds epoch 1's checkpoint as `last`.
    part = tmp_path / "part" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "epoch_01.pt", part / "last.pt")
    fit(config(tmp_path / "part"), dataset=data, resume="last")
    assert_same_run(tmp_path / "full", tmp_path / "part")
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_resume_inside_an_epoch_is_exact(tmp_path):
    def davidnet(out):
        return config(out, checkpoint_every_steps=2)

    # 3 steps an epoch, saved every 2: a crash in step 6 falls back to step 2 of epoch 2.
    crash_and_resume(davidnet, tmp_path, after_steps=6, saved_at=(1, 2))


def test_an_epoch_resumed_from_inside_keeps_the_time_it_had_run(tmp_path):
    """Its train_s, epoch_s and images/s cover the whole epoch, not only the part after the
    resume (which would report 3 steps' images over 1 step's time)."""
    import time

    class SlowThenCrash(Callback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, run, state):
            self.steps += 1
            if self.steps in (4, 5):  # epoch 2's first two steps, before its checkpoint
                time.sleep(0.3)
            if self.steps == 6:
                raise RuntimeError("simulated crash")

    cfg = config(tmp_path, checkpoint_every_steps=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, dataset=tiny_dataset(), callbacks=[SlowThenCrash()])
    assert load(tmp_path / "checkpoints" / "last.pt")["epoch_time_s"] >= 0.6
    fit(cfg, dataset=tiny_dataset(), resume="last")
    epochs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    second = epochs[1]
    assert second["train_s"] >= 0.6 and second["epoch_s"] >= second["train_s"]
    assert second["elapsed_s"] >= epochs[0]["elapsed_s"] + 0.6


def test_resume_refuses_another_config(tmp_path):
    data = tiny_dataset()
    fit(config(tmp_path / "a", epochs=1), dataset=data)
    with pytest.raises(CheckpointError, match="width"):
        fit(config(tmp_path / "a", width=8), dataset=data, resume="last")


def test_validating_less_often_does_not_change_training(tmp_path):
    data = tiny_dataset()
    fit(config(tmp_path / "every"), dataset=data)
    fit(config(tmp_path / "last", eval_every=0), dataset=data)
    every, last = final_state(tmp_path / "every"), final_state(tmp_path / "last")
    for k, v in every["model"].items():
        assert torch.equal(v, last["model"][k]), k
    history = [
        json.loads(line) for line in (tmp_path / "last/metrics.jsonl").read_text().splitlines()
    ]
    assert [m["val_acc"] is None for m in history] == [True, True, False]
    assert history[-1]["val_acc"] == json.loads(every["history"])[-1]["val_acc"]


def test_resume_with_other_epochs_is_refused_where_the_run_depends_on_them(tmp_path):
    data = tiny_dataset()
    fit(config(tmp_path, epochs=1), dataset=data)  # davidnet: one_cycle
    with pytest.raises(CheckpointError) as e:
        fit(config(tmp_path, epochs=2), dataset=data, resume="last")
    assert "set up for 1 epochs, not 2" in str(e.value) and "one_cycle" in str(e.value)
    assert "--init-from" in str(e.value) and "--epochs 1" in str(e.value)

    def saved(epoch, **kw):  # a checkpoint of a 3-epoch run after `epoch` epochs
        return {"config": config(tmp_path, **kw).to_dict(), "epoch": epoch, "step_in_epoch": 0}

    staircase = dict(lr_schedule='"staircase"')
    # Lookahead's averaging depends on them too, whatever the schedule.
    with pytest.raises(CheckpointError, match="lookahead"):
        check_same_config(
            saved(1, lookahead="true", **staircase),
            config(tmp_path, epochs=4, lookahead="true", **staircase),
        )
    check_same_config(saved(1, **staircase), config(tmp_path, epochs=4, **staircase))  # allowed
    # Fewer epochs than the checkpoint has trained: refused for any schedule.
    with pytest.raises(CheckpointError, match="has trained 2 epochs of its run's 3"):
        check_same_config(saved(2, **staircase), config(tmp_path, epochs=1, **staircase))


def test_a_staircase_run_resumed_with_more_epochs_is_the_longer_run(tmp_path):
    """Nothing of a staircase run without lookahead depends on epochs, so a 2-epoch run resumed
    for 3 is bitwise the 3-epoch run."""
    data, kw = tiny_dataset(), dict(lr_schedule='"staircase"', lr_milestones="[2]")
    fit(config(tmp_path / "full", **kw), dataset=data)
    fit(config(tmp_path / "part", epochs=2, **kw), dataset=data)
    fit(config(tmp_path / "part", **kw), dataset=data, resume="last")
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_a_fast_run_with_jitter_and_a_mid_epoch_freeze_resumes_exactly(tmp_path):
    """Colour jitter and the whitening bias frozen inside an epoch depend on (seed, epoch, step)
    only: a run resumed from inside its first epoch, before the freeze, ends as the whole run."""
    sets = [
        "width=4", "epochs=2", "batch_size=16", "sanity_check=false", "quiet=true",
        "precision=fp32", "brightness=0.14", "contrast=0.13", "whiten_bias_epochs=0.8",
        "muon_ns_steps=3", "activation='silu'", "checkpoint_every_steps=1",
    ]  # fmt: skip

    def fast(out):
        return resolve("fast", sets=sets, overrides={"out": str(out)})

    crash_and_resume(fast, tmp_path, after_steps=2, saved_at=(0, 1))


def test_a_data_filtered_run_resumes_exactly_with_its_proxy(tmp_path):
    """The proxy's weights and optimizer travel in the checkpoint: a run resumed between two of
    its learning steps picks the same images and ends as the whole run."""
    sets = [
        "width=4", "epochs=2", "batch_size=16", "sanity_check=false", "quiet=true",
        "precision=fp32", "filter_keep=0.5", "filter_train_every=2", "whiten_bias_epochs=0.5",
        "muon_ns_steps=3", "checkpoint_every_steps=1",
    ]  # fmt: skip

    def filtered(out):
        return resolve("fast", sets=sets, overrides={"out": str(out)})

    crash_and_resume(filtered, tmp_path, after_steps=4, saved_at=(0, 3))
    proxies = [final_state(tmp_path / d)["filter"]["model"] for d in ("full", "part")]
    for k, v in proxies[0].items():
        assert torch.equal(v, proxies[1][k]), k


def resumes_with_its_table(tmp_path, extra: list[str], key: str, table: str) -> torch.Tensor:
    """A tiny `fast` run with `extra` settings, crashed after 3 steps and resumed, ends with the
    whole run's weights and the same per-image table (state[key][table]); returns that table."""
    sets = [
        "width=4", "epochs=2", "batch_size=16", "sanity_check=false", "quiet=true",
        "precision=fp32", "muon_ns_steps=3", "checkpoint_every_steps=1", *extra,
    ]  # fmt: skip

    def make(out):
        return resolve("fast", sets=sets, overrides={"out": str(out)})

    crash_and_resume(make, tmp_path, after_steps=3, saved_at=(0, 2))
    tables = [final_state(tmp_path / d)[key][table] for d in ("full", "part")]
    assert torch.equal(tables[0].nan_to_num(-1.0), tables[1].nan_to_num(-1.0))
    return tables[0]


def test_a_run_filtered_by_its_own_last_losses_resumes_exactly_with_them(tmp_path):
    """The table of each image's last loss travels in the checkpoint: a resumed run ranks its
    batches as the whole run does and ends with the same weights and the same table."""
    extra = ["filter_keep=0.5", "filter_by='last_loss'"]
    assert resumes_with_its_table(tmp_path, extra, "filter", "last_loss").isfinite().any()


def test_a_self_distilled_run_resumes_exactly_with_its_past_predictions(tmp_path):
    """The table of each image's last predictions travels in the checkpoint: the resumed run
    builds the same targets and ends with the same weights and the same table."""
    table = resumes_with_its_table(tmp_path, ["self_distill=0.5"], "distill", "table")
    assert table.isfinite().all()
