"""A clean stop on Ctrl-C / SIGTERM: the first signal sets a flag that the loop reads after
each step; it then saves a checkpoint and raises `RunInterrupted` (exit 128 + signal). A second
one stops now.

Under torchrun the ranks must stop at the same step, so they agree on the flag with a collective
(a host sync). They do so at checkpoint steps, at epoch ends and, so that a scheduler's SIGTERM
is answered within its grace period, at least every `every_s` seconds of training: the number of
steps between agreements follows the step time measured between the agreements themselves.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from dawntrain.runtime import distributed


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on SIGINT or SIGTERM after saving a checkpoint; exit with 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """While entered, SIGINT and SIGTERM set `signum` instead of stopping the process; the
    loop calls `after_step` after each step. A second signal restores the previous handlers
    and stops at once (KeyboardInterrupt / SystemExit): checkpoints on disk are always whole.

    Under torchrun every rank usually gets the signal, but the ranks act on it only where they
    agree (`agree`: the flag's maximum over ranks, so any rank's signal counts), at the same step
    on every rank: at `sync` points (checkpoints, epoch ends) and whenever `interval` steps have
    passed since the last agreement. `interval` starts at 1 and then is the number of steps
    that fit in `every_s` seconds, from the slowest rank's measured step time, identical on
    every rank because it comes out of the same collective."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self, world: distributed.World | None = None, every_s: float = 5.0, clock=time.perf_counter
    ):
        self.world = world or distributed.World()
        self.every_s, self.clock = every_s, clock
        self.signum = 0
        self.interval = 1  # steps between agreements
        self._steps = 0  # steps since the last agreement
        self._since: float | None = None  # when the last agreement ended
        self._step_s = 0.0  # seconds per step measured between the last two agreements
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

    def after_step(self, sync: bool = False) -> bool:
        """Called after every training step: True when the run should stop now. One process:
        at any step. Several: at `sync` points and every `interval` steps, where they agree."""
        if not self.world.active:
            return bool(self.signum)
        self._steps += 1
        return self.should_stop(sync or self._steps >= self.interval)

    def should_stop(self, sync: bool) -> bool:
        """True when the run should stop now. One process: whenever a signal came. Several:
        only at `sync` points, where the ranks agree."""
        if not self.world.active:
            return bool(self.signum)
        return self.agree() if sync else False

    def agree(self) -> bool:
        """One collective on every rank: the flag's maximum over ranks, and from the slowest
        rank's step time the steps until the next agreement."""
        box = torch.tensor([float(self.signum), self._step_s], dtype=torch.float64)
        box = distributed.all_reduce_(box.to(self.world.device), distributed.MAX).tolist()
        now = self.clock()
        # The time from the end of one agreement to the end of the next covers the steps in
        # between as the device ran them (each agreement waits for the work queued before it).
        if self._since is not None and self._steps:
            self._step_s = (now - self._since) / self._steps
        if box[1] > 0:
            self.interval = max(1, math.floor(self.every_s / box[1]))
        self._since, self._steps = now, 0
        self.signum = int(box[0])
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
