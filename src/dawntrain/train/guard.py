"""Guards that keep a run's work: checked input, one run per directory, a clean stop on
Ctrl-C / SIGTERM, and optimizer steps undone when their loss is not finite.

- `checked_dataset`: loads the run's data (verifying a record manifest's sha256s), checks labels
  against the class list and image sizes against the model's input size (or resizes them).
- `run_lock`: `RUN/.lock` (pid, host) held with flock by rank 0 while a run writes RUN; a lock
  left by a killed run is free (the kernel dropped the flock) and is taken over with a note.
- `StopSignals`: the first SIGINT/SIGTERM sets a flag that the loop reads after each step; it
  then saves a checkpoint and raises `RunInterrupted` (exit 128 + signal). A second one stops now.
- `SkipNonFinite`: on_nonfinite = "skip-step" without a host sync per step.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from dawntrain.errors import DataError, DawntrainError
from dawntrain.train import distributed

if TYPE_CHECKING:
    from dawntrain.config import Config

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None

LOCK_NAME = ".lock"
# The input side each model was designed for. Other sizes run (the models pool globally) but
# usually mean the wrong data: 64x64 Tiny ImageNet under a CIFAR preset costs 4x per step.
MODEL_IMAGE_SIZE = {"davidnet": 32, "fast": 32, "davidnet64": 64, "preact_resnet": 64}


# ---------------------------------------------------------------------------------- input


def expected_image_size(config: Config) -> int | None:
    """The side of the square images a run expects: config.image_size, else the model's."""
    return config.image_size or MODEL_IMAGE_SIZE.get(config.model)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, size, size, 3), bilinear as the data readers resize."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(
            Image.fromarray(np.asarray(image)).resize((size, size), Image.Resampling.BILINEAR)
        )
    return out


def _verify_manifest(source: str) -> None:
    """A record directory's shards must still have the sha256s its manifest lists."""
    from dawntrain.data.records import MANIFEST, verify_manifest

    if Path(source).is_dir() and (Path(source) / MANIFEST).is_file():
        verify_manifest(source)


def check_labels(dataset, where: str) -> None:
    """Every train and test label indexes dataset.class_names."""
    n = len(dataset.class_names)
    for split in ("train", "test"):
        labels = getattr(dataset, f"{split}_labels", None)
        if labels is None or not len(labels):
            continue
        bad = np.flatnonzero((np.asarray(labels) < 0) | (np.asarray(labels) >= n))
        if len(bad):
            raise DataError(
                f"{where}: {split} label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
                f"0..{n - 1} ({n} classes; {len(bad)} such labels); fix the labels or the class list"
            )


def checked_dataset(config: Config, dataset=None):
    """The run's data: `dataset` as given, else loaded from config.data and checked.

    Loaded data must have the model's input size (`expected_image_size`) unless config.resize,
    which resizes it; a dataset passed in code is used at its size (its caller chose it)."""
    loaded = dataset is None
    if loaded:
        from dawntrain.data import load

        _verify_manifest(config.data)
        side = expected_image_size(config) if config.resize else None
        try:
            dataset = load(config.data, resize=config.resize, side=side)
        except OSError as e:  # a file the readers did not expect to fail, e.g. a broken link
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DataError(
                f"{e.filename or config.data}: cannot read it ({e.strerror or e}); fix the file "
                "or remove it from the data set"
            ) from e
    where = getattr(dataset, "source", None) or config.data
    check_labels(dataset, where)
    size = expected_image_size(config)
    height, width = dataset.train_images.shape[1:3]
    if not loaded or size is None or (height, width) == (size, size):
        return dataset
    if not config.resize:
        raise DataError(
            f"{where}: images are {width}x{height}, the {config.preset} preset (model "
            f"{config.model}) expects {size}x{size}; pass --resize to resize them, or "
            f"--set image_size={height} to train at their size"
        )
    dataset.train_images = resize_images(dataset.train_images, size)
    if dataset.test_images is not None:
        dataset.test_images = resize_images(dataset.test_images, size)
    return dataset


# ---------------------------------------------------------------------------------- lock


class RunLocked(DawntrainError):
    """The run directory is in use by another live process."""


class StaleLockWarning(UserWarning):
    """A lock left by a run that ended without releasing it (killed) was taken over."""


def _holder(fd: int) -> str:
    """Who wrote a lock file, in words ("" for an empty file)."""
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if not raw:
        return ""
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return raw[:200]


def _remove_partial_files(out: Path) -> None:
    """Temp files of atomic writes cut short by a kill (`.name.XXXX.tmp`): never read, removed."""
    for folder in (out, out / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _acquire(out: Path) -> int | None:
    """flock RUN/.lock and write our pid into it; the open descriptor holds the lock."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    if fcntl is None:  # pragma: no cover
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"{out} is in use by another run ({holder or 'holder unknown'}); wait for it to "
                f"end or pass another --out (if no such process runs, delete {path})"
            ) from None
        # A holder that just ended unlinks the file after we opened it: lock the current one.
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    previous = _holder(fd)
    if previous:
        warnings.warn(
            f"{path}: took over the lock of a run that stopped without releasing it "
            f"({previous}); its last checkpoint is intact",
            StaleLockWarning,
            stacklevel=3,
        )
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%c")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _remove_partial_files(out)
    return fd


@contextlib.contextmanager
def run_lock(out: Path, world: distributed.World | None = None) -> Iterator[None]:
    """Hold RUN/.lock for a run's life (rank 0 only); every rank raises RunLocked if it is taken.
    Directories that the lock created and the run left empty (it failed early) are removed."""
    out, fd, error = Path(out), None, None
    created = [d for d in (out, *out.parents) if not d.exists()]  # innermost first
    if world is None or world.is_main:
        try:
            fd = _acquire(out)
        except (RunLocked, OSError) as e:
            error = str(e) if isinstance(e, RunLocked) else f"{out}: cannot lock the run ({e})"
    error = distributed.broadcast_object(error)
    if error:
        raise RunLocked(error)
    try:
        yield
    finally:
        if fd is not None:
            # Unlink while still holding the flock, so a waiter never locks a removed file.
            with contextlib.suppress(OSError):
                os.unlink(out / LOCK_NAME)
            os.close(fd)
            for directory in created:
                try:
                    directory.rmdir()
                except OSError:  # not empty: the run wrote something
                    break


# ------------------------------------------------------------------------------- signals


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on SIGINT or SIGTERM after saving a checkpoint; exit with 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """While entered, SIGINT and SIGTERM set `signum` instead of stopping the process; the
    loop polls `should_stop` after each step. A second signal restores the previous handlers
    and stops at once (KeyboardInterrupt / SystemExit): checkpoints on disk are always whole.

    Under torchrun every rank gets the signal but rank 0's flag decides, read only at
    `sync` points (checkpoints, epoch ends) so that the ranks stop at the same step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, world: distributed.World | None = None):
        self.world = world or distributed.World()
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:  # e.g. SIGINT of a background job
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum:
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        if self.world.is_main:
            sys.stderr.write(
                f"\ndawntrain: {name}: stopping after this step to save a checkpoint "
                "(send it again to stop at once)\n"
            )

    def should_stop(self, sync: bool) -> bool:
        """True when the run should stop now. One process: at any step. Several: only at
        `sync` points, where rank 0's flag is broadcast (a host sync, so not every step)."""
        if not self.world.active:
            return bool(self.signum)
        if not sync:
            return False
        self.signum = distributed.broadcast_object(self.signum)
        return bool(self.signum)

    def interrupted(self, out: Path, epoch: int, step: int, steps: int) -> RunInterrupted:
        """The exception to raise once (epoch, step) is saved; step 0: after `epoch` epochs."""
        name = signal.Signals(self.signum).name
        done = f"epoch {epoch}" if not step else f"step {step} of {steps} in epoch {epoch + 1}"
        return RunInterrupted(
            self.signum,
            f"{name}: stopped after {done} and saved {out / 'checkpoints' / 'last.pt'}; "
            f"continue with: dawntrain train --resume {out}",
        )


# ----------------------------------------------------------------------- non-finite steps


class SkipNonFinite:
    """Undo an optimizer step whose loss was not finite: parameters, momentum buffers and
    BatchNorm statistics go back to their values before the step.

    `save()` copies them before the step and `undo_if(bad)` puts them back where the 0-d
    tensor `bad` is True, with torch.where: no host sync, at the cost of one copy of the
    weights, momentum and buffers per step and a few kernels per tensor."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.backup: list[torch.Tensor] = []
        self.tracked: list[torch.Tensor] = []

    def _tensors(self) -> list[torch.Tensor]:
        params = list(self.model.parameters())
        states = [self.optimizer.state.get(p, {}) for p in params]
        # Momentum buffers (SGD's, Muon's): any tensor the optimizer keeps per parameter.
        kept = [t for state in states for _, t in sorted(state.items()) if torch.is_tensor(t)]
        return params + kept + list(self.model.buffers())

    @torch.no_grad()
    def save(self) -> None:
        tensors = self._tensors()
        if [t.shape for t in tensors] != [b.shape for b in self.backup]:
            self.backup = [t.clone() for t in tensors]
        else:
            torch._foreach_copy_(self.backup, tensors)
        self.tracked = tensors

    @torch.no_grad()
    def undo_if(self, bad: torch.Tensor) -> None:
        known = {id(t) for t in self.tracked}
        for tensor, old in zip(self.tracked, self.backup, strict=True):
            tensor.copy_(torch.where(bad, old, tensor))
        # Momentum buffers the step created (the first step) start from zero, as if never made.
        for tensor in self._tensors():
            if id(tensor) not in known:
                tensor.masked_fill_(bad, 0)
