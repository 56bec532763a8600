"""RUN/steps.jsonl: the training loss and every parameter group's lr every N steps, read back
without making the host wait for the device.

Each step adds its loss to the epoch's sums on the device (engine.step.StepStats). Reading them
at a step would stall the host until the device has run every queued kernel, and leave the
device idle while the host queues the next step. Instead, at a record the sums are copied to
host memory in the device's own order (CUDA: a non-blocking copy into pinned memory and an
event after it) and written once that copy has landed: usually by the next step, at the latest
at the epoch's end, where the loop reads the sums anyway. So a record costs a three-number copy
and a line of JSON, and no wait.

A record: `step` (steps done in the run, the engine's global step), `epoch` (1-based, as in
metrics.jsonl), `loss` and `acc` (mean per example over the steps since the previous record of
the epoch: the same sums train_loss and train_acc average over the whole epoch; the main rank's
batches under torchrun), `lr` (each parameter group's rate at that step, by group name) and
`time` (seconds since the first epoch began, validation included; a resumed run continues from
its last kept record). The last step of every epoch is recorded, so epoch boundaries are exact.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dawntrain.files import atomic_write

FILE = "steps.jsonl"


def read_steps(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def group_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The lr each parameter group stepped with last, by the group's name (engine/optim.py:
    weights, norm, whiten_bias, filters)."""
    return {
        str(group.get("name") or f"group{i}"): float(group["lr"])
        for i, group in enumerate(optimizer.param_groups)
    }


class Clock:
    """Seconds since start(), on the device's own timeline where it runs ahead of the host
    (CUDA: timing events in the stream), else the host's."""

    def __init__(self, device: torch.device):
        self.device, self.cuda, self.origin = device, device.type == "cuda", None

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start(self) -> None:
        self.origin = self.mark()

    def done(self, mark: Any) -> bool:
        return not self.cuda or mark.query()

    def seconds(self, mark: Any) -> float:
        if not self.cuda:
            return mark - self.origin
        mark.synchronize()
        return self.origin.elapsed_time(mark) / 1000


@dataclass
class Snapshot:
    """The sums (loss, correct, examples) as they stood after a step, on their way to the host;
    `record`: the step's fields, None for the sums an epoch starts from."""

    sums: torch.Tensor
    mark: Any
    record: dict[str, Any] | None


class StepRecorder:
    """Appends records to `path`. `resumed_at`: the global step a resumed run continues after;
    records beyond it (written after its checkpoint) are dropped. None: a fresh run, a new file."""

    def __init__(self, path: Path, device: torch.device, resumed_at: int | None = None):
        kept = []
        if resumed_at is not None and Path(path).is_file():
            kept = [r for r in read_steps(path) if r["step"] <= resumed_at]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.offset = kept[-1]["time"] if kept else 0.0
        self.file = open(path, "a")  # noqa: SIM115 (closed by close())
        self.clock = Clock(device)
        self.pending: deque[Snapshot] = deque()
        self.previous: list[float] | None = None

    def snapshot(self, sums: torch.Tensor, record: dict[str, Any] | None) -> None:
        if self.clock.cuda:
            host = torch.empty(3, dtype=sums.dtype, pin_memory=True)
            host.copy_(sums[:3], non_blocking=True)
        else:
            host = sums[:3].clone()  # the step adds into `sums` in place
        self.pending.append(Snapshot(host, self.clock.mark(), record))

    def epoch_start(self, sums: torch.Tensor) -> None:
        """The sums the epoch starts from: zeros, or a resumed epoch's partial sums."""
        if self.clock.origin is None:
            self.clock.start()
        self.snapshot(sums, None)

    def write(self, wait: bool = False) -> None:
        """Write the records whose copies have landed (`wait`: all of them, waiting)."""
        wrote = False
        while self.pending and (wait or self.clock.done(self.pending[0].mark)):
            snap = self.pending.popleft()
            seconds = self.clock.seconds(snap.mark)
            now = snap.sums.tolist()
            if snap.record is not None:
                loss, correct, examples = (a - b for a, b in zip(now, self.previous))
                fields = {
                    "loss": loss / examples if examples else None,  # None: only skipped steps
                    "acc": correct / examples if examples else None,
                    "time": round(self.offset + seconds, 4),
                }
                self.file.write(json.dumps({**snap.record, **fields}) + "\n")
                wrote = True
            self.previous = now
        if wrote:
            self.file.flush()

    def close(self) -> None:
        # A failed device cannot finish its copies: the records after the last written are lost,
        # as the steps after the last checkpoint are.
        with contextlib.suppress(RuntimeError):
            self.write(wait=True)
        self.file.close()
