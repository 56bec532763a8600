"""A clean stop on Ctrl-C / SIGTERM: the first signal sets a flag that the loop reads after
each step; it then saves a checkpoint and raises `RunInterrupted` (exit 128 + signal). A second
one stops now.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from dawntrain.runtime import distributed


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
