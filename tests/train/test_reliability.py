"""Nothing lost: kill -9, Ctrl-C / SIGTERM, a busy run directory, NaN losses and full disks.

The runs train DavidNet at width 4 in fp32 on one CPU thread, on a 72-image PNG folder: 3 epochs
of 4 steps with a checkpoint after every step. Runs are interrupted in subprocesses, then
finished in this process (torch is imported once), and must end with bitwise the weights,
optimizer state and metrics (timings aside) of an uninterrupted run.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dawntrain import files
from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.data.codec import tfrecord
from dawntrain.errors import CheckpointError, DawntrainError, RecordError
from dawntrain.train import checkpoint, fit, lock
from dawntrain.train.callbacks import Callback
from dawntrain.train.loop import NonFiniteLoss
from synthetic import image_folder, tiny_dataset

TRAIN = [
    *("train", "--set", "width=4", "--set", "sanity_check=false", "--precision", "fp32"),
    *("--device", "cpu", "--batch-size", "16", "--epochs", "3", "--checkpoint-every-steps", "1"),
    "--quiet",
]

# Runs the CLI (argv[3:]) with each training step slowed by argv[1] seconds, so that a signal
# lands mid-run, and when argv[2] = N > 0 it SIGKILLs itself halfway through writing its N-th
# checkpoint: a real kill inside atomic_write, with no hook in the library.
HARNESS = """
import io, os, signal, sys, time
import torch
from dawntrain.analysis import callbacks
from dawntrain.train import checkpoint
from dawntrain.train.callbacks import Callback

# Tests run as a background job would hand this process an ignored SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)
delay, kill_at = float(sys.argv[1]), int(sys.argv[2])
real_save, saves = checkpoint.save, 0

class SlowSteps(Callback):
    def on_step_end(self, run, state):
        time.sleep(delay)

# The CLI's plug-ins come from callbacks.for_config: add one that slows every step.
real_for_config = callbacks.for_config
callbacks.for_config = lambda config: [*real_for_config(config), SlowSteps()]

def save(path, state):
    global saves
    saves += 1
    if saves == kill_at:
        data = io.BytesIO()
        torch.save(state, data)
        def torn(f):
            f.write(data.getvalue()[: len(data.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.atomic_write(path, torn)
    real_save(path, state)

checkpoint.save = save
from dawntrain.cli import main
raise SystemExit(main(sys.argv[3:]))
"""


class Runs:
    """`dawntrain` processes on one data folder and cache, and the uninterrupted reference."""

    def __init__(self, root: Path):
        self.root = root
        self.data = image_folder(root / "data")
        self.env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
        self.env.update(DAWNTRAIN_DATA=str(root / "cache"), OMP_NUM_THREADS="1")
        assert self.main([*TRAIN, "--data", str(self.data), "--out", str(root / "ref")]) == 0

    def main(self, args: list[str]) -> int:
        """The CLI in this process, on one thread like the subprocesses."""
        threads, cache = torch.get_num_threads(), os.environ.get("DAWNTRAIN_DATA")
        torch.set_num_threads(1)
        os.environ["DAWNTRAIN_DATA"] = self.env["DAWNTRAIN_DATA"]
        try:
            return main(args)
        finally:
            torch.set_num_threads(threads)
            if cache is None:
                del os.environ["DAWNTRAIN_DATA"]
            else:
                os.environ["DAWNTRAIN_DATA"] = cache

    def start(self, args: list[str], delay: float = 0.0, kill_at: int = 0) -> subprocess.Popen:
        command = [sys.executable, "-c", HARNESS, str(delay), str(kill_at), *args]
        return subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def new_run(self, name: str, delay: float) -> tuple[Path, subprocess.Popen]:
        out = self.root / name
        return out, self.start([*TRAIN, "--data", str(self.data), "--out", str(out)], delay)

    def assert_same_as_reference(self, out: Path) -> None:
        ref, run = (
            checkpoint.load(p / "checkpoints" / "last.pt") for p in (self.root / "ref", out)
        )
        assert ref["epoch"] == run["epoch"] == 3
        for k, v in ref["model"].items():
            assert torch.equal(v, run["model"][k]), k
        for i, state in ref["optimizer"]["state"].items():
            assert torch.equal(
                state["momentum_buffer"], run["optimizer"]["state"][i]["momentum_buffer"]
            )
        assert untimed(json.loads(ref["history"])) == untimed(json.loads(run["history"]))
        logs = [(p / "metrics.jsonl").read_text().splitlines() for p in (self.root / "ref", out)]
        assert untimed(map(json.loads, logs[0])) == untimed(map(json.loads, logs[1]))


def untimed(metrics) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.endswith("_s")} for m in metrics]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) too early: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("runs"))


def test_kill_9_anywhere_even_inside_a_checkpoint_write_then_resume_is_exact(runs, capsys):
    out, proc = runs.new_run("killed", delay=0.1)
    last = out / "checkpoints" / "last.pt"
    wait_for(last.exists, proc)
    time.sleep(random.uniform(0, 0.4))  # any moment of the 12 steps (>= 1.2 s) still to run
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert checkpoint.load(last)["epoch"] < 3 and (out / ".lock").exists()

    # The resumed run dies halfway through writing its third checkpoint file.
    proc = runs.start(["train", "--resume", str(out)], delay=0.05, kill_at=3)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    torn = list((out / "checkpoints").glob(".*.tmp"))
    assert torn and torn[0].stat().st_size > 0
    checkpoint.load(last)  # the previous checkpoint, whole

    assert runs.main(["train", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "dawntrain: note:" in err and "took over the lock" in err
    assert not list((out / "checkpoints").glob(".*.tmp")) and not (out / ".lock").exists()
    runs.assert_same_as_reference(out)


def test_sigint_and_sigterm_finish_the_step_save_and_resume_exactly(runs, capsys):
    out, proc = runs.new_run("signalled", delay=0.1)
    last = out / "checkpoints" / "last.pt"
    wait_for(last.exists, proc)

    # While it runs, a second run into the same directory is refused.
    assert main(["train", "--data", str(runs.data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{out} is in use by another run (pid {proc.pid} on host" in err[0]

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGINT: stopping after this step" in err
    assert f"saved {last}; continue with: dawntrain train --resume {out}" in err
    state = checkpoint.load(last)
    assert state["epoch"] < 3 and not (out / ".lock").exists()

    # `--resume` (last) in the same --out, stopped by SIGTERM once it has saved a checkpoint.
    inode = last.stat().st_ino
    proc = runs.start(["train", "--out", str(out), "--resume"], delay=0.1)
    wait_for(lambda: last.stat().st_ino != inode, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopped after " in err

    assert runs.main(["train", "--resume", str(out)]) == 0
    runs.assert_same_as_reference(out)


# ------------------------------------------------------------------------- in one process


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: a second OpenMP thread only waits for the first.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(out, **kw):
    sets = ["width=4", "epochs=2", "batch_size=32", "sanity_check=false", "quiet=true"]
    sets += ["precision=fp32", "device=cpu", *(f"{k}={v}" for k, v in kw.items())]
    return resolve("davidnet", sets=sets, overrides={"out": str(out)})


def test_a_busy_run_directory_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with lock.run_lock(out):
        assert main(["train", "--data", "sample", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"(pid {os.getpid()} on host" in err[0] and ".lock" in err[0]
    assert not (out / ".lock").exists()  # released

    # A lock file that no live process holds (its run was killed), and a torn temp file.
    (out / ".lock").write_text('{"pid": 999999, "host": "gone", "started": "yesterday"}\n')
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"torn")
    with pytest.warns(lock.StaleLockWarning, match="pid 999999 on host gone"):
        fit(config(out, epochs=1), dataset=tiny_dataset())
    assert not (out / ".lock").exists() and not list((out / "checkpoints").glob(".*"))


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DawntrainError, match="larger than the training set"):
        fit(config(out, batch_size=500), dataset=tiny_dataset())
    assert not out.exists()  # no empty run directory left behind
    out.mkdir()
    with pytest.raises(DawntrainError, match="larger than the training set"):
        fit(config(out, batch_size=500), dataset=tiny_dataset())
    assert out.is_dir() and not (out / ".lock").exists()
    fit(config(out, epochs=1), dataset=tiny_dataset())


class NonFiniteLossAt(Callback):
    """Multiplies the loss of the given steps (1-based, counted over the run) by NaN."""

    def __init__(self, calls: set[int]):
        self.calls = calls

    def on_fit_start(self, run, state):
        run.loss = nan_at(self.calls, run.loss)


class NoStepAt(Callback):
    """The given step (1-based) does nothing: no forward, backward or update; its loss is NaN."""

    def __init__(self, call: int):
        self.call, self.count = call, 0

    def on_fit_start(self, run, state):
        real = run.step

        def step(stats, x, y, epoch, step):
            self.count += 1
            if self.count != self.call:
                return real(stats, x, y, epoch, step)
            nan, bad = torch.tensor(float("nan")), torch.tensor(True)
            stats.add(nan, torch.zeros(len(y), run.num_classes), y, bad, epoch * run.steps + step)

        run.step = step


def nan_at(calls: set[int], real):
    """A loss_fn (or train_step) that returns NaN on the given 1-based calls."""
    count = 0

    def fn(*args, **kw):
        nonlocal count
        count += 1
        result = real(*args, **kw)
        return result * float("nan") if count in calls else result

    return fn


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(
        NonFiniteLoss, match=r"at step 4 \(epoch 2, step 2 of 3\).*checkpoint is kept"
    ):  # 3 steps an epoch
        fit(config(tmp_path), dataset=tiny_dataset(), callbacks=[NonFiniteLossAt({5})])
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1


def test_huge_lr_stops_with_one_line_naming_the_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "data", per_class=12)
    args = ["train", "--data", str(data), "--set", "width=4", "--set", "lr=1e30", "--epochs", "1"]
    args += ["--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "run"), "--no-sanity-check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the loss became NaN or Inf at step" in err[0], err
    assert "--on-nonfinite skip-step" in err[0]


@pytest.mark.parametrize("bad_step", [1, 5], ids=["first-step", "mid-run"])
def test_skip_step_undoes_the_update_exactly_and_counts_it(tmp_path, monkeypatch, bad_step):
    # Reference: at that step nothing at all happens (no forward, backward or update).
    fit(
        config(tmp_path / "ref", on_nonfinite="skip-step"),
        dataset=tiny_dataset(),
        callbacks=[NoStepAt(bad_step)],
    )
    # The real thing: the NaN loss runs backward and the step, which is then undone.
    fit(
        config(tmp_path / "skip", on_nonfinite="skip-step"),
        dataset=tiny_dataset(),
        callbacks=[NonFiniteLossAt({bad_step})],
    )

    ref, run = (checkpoint.load(tmp_path / p / "checkpoints" / "last.pt") for p in ("ref", "skip"))
    for k, v in ref["model"].items():
        assert torch.equal(v, run["model"][k]), k
    for i, state in ref["optimizer"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], run["optimizer"]["state"][i]["momentum_buffer"]
        )
    history = untimed(json.loads(run["history"]))
    assert history == untimed(json.loads(ref["history"]))
    assert [m["skipped_steps"] for m in history] == ([1, 0] if bad_step <= 3 else [0, 1])
    assert all(np.isfinite(m["train_loss"]) for m in history)


def test_skip_step_gives_up_when_a_whole_epoch_is_skipped(tmp_path, monkeypatch):
    with pytest.raises(NonFiniteLoss, match="every step of epoch 1"):
        fit(
            config(tmp_path, on_nonfinite="skip-step"),
            dataset=tiny_dataset(),
            callbacks=[NonFiniteLossAt(set(range(1, 100)))],
        )


# ------------------------------------------------------------------------------ full disk


class FullDisk:
    """A file that takes `room` more bytes, then fails the way a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self.f.write(data[: self.room])
        if len(data) > self.room:
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"w": torch.ones(3)})
    monkeypatch.setattr(files, "open", lambda *a: FullDisk(open(*a), 100), raising=False)  # noqa: SIM115
    with pytest.raises(
        CheckpointError, match=r"last\.pt: the disk is full.*previous last\.pt is intact"
    ):
        checkpoint.save(path, {"w": torch.zeros(10_000)})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_full_disk_in_a_run_ends_it_with_the_last_checkpoint_whole(tmp_path, monkeypatch):
    real_write, saves = checkpoint.atomic_write, 0

    def second_last_pt_fills_the_disk(path, data, **kw):
        nonlocal saves
        saves += path.name == "last.pt"
        if saves == 2 and path.name == "last.pt":
            return real_write(path, lambda f: FullDisk(f, 1000).write(data), **kw)
        return real_write(path, data, **kw)

    monkeypatch.setattr(checkpoint, "atomic_write", second_last_pt_fills_the_disk)
    with pytest.raises(CheckpointError, match="disk is full"):
        fit(config(tmp_path), dataset=tiny_dataset())
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob(".*")) and not (tmp_path / ".lock").exists()


def test_full_disk_while_writing_a_shard_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "train-00000-of-00001.tfrecord.gz"
    tfrecord.write_records(path, [b"old"])
    monkeypatch.setattr(files, "open", lambda *a: FullDisk(open(*a), 50), raising=False)  # noqa: SIM115
    with pytest.raises(RecordError, match="disk is full.*partial file was removed.*intact"):
        tfrecord.write_records(path, [os.urandom(5000) for _ in range(3)])
    monkeypatch.undo()
    assert list(tfrecord.read_records(path)) == [b"old"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
