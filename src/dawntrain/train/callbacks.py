"""What fit() does beyond training, plugged in: each hook is called by the loop, which imports
none of the plug-ins. Analysis (the curvature probe, TensorBoard, the report) adds its own
callbacks from above (dawntrain.analysis.callbacks); tests inject faults the same way.

A callback sees the `Run` (model, optimizer, data: dawntrain.engine.build) and the loop's
`LoopState` (epoch, step, history, the run directory) and may set `state.checkpoint_due` to have
the loop save after the current step.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from dawntrain.engine.evaluate import untrained_check
from dawntrain.engine.step import StepStats
from dawntrain.files import atomic_write
from dawntrain.train.log import MetricsLog
from dawntrain.train.step_records import FILE as STEPS_FILE
from dawntrain.train.step_records import StepRecorder, group_rates

if TYPE_CHECKING:
    from dawntrain.engine.build import Run

# The untrained model's check, as numbers for the report (the console shows its line).
SANITY_FILE = "sanity_check.json"


@dataclass
class LoopState:
    """Where the loop is: the epoch and the next step in it, the epochs' metrics so far."""

    out: Path
    say: Callable[..., None]  # prints on the main rank unless quiet
    dataset: Any = None
    epoch: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    # The epoch's training time before this process took it up (a resume from inside it), and
    # when this process started on it: an epoch's times span the segments it ran in.
    epoch_time_s: float = 0.0
    epoch_t0: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: StepStats | None = None
    resumed: bool = False
    # Each resume of this run: checkpoint, epoch, step, world sizes, launcher restart count.
    resumes: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_due: bool = False
    best: Any = None  # train.best.Best where config.best_metric is set: the best epoch so far
    init_from: dict[str, Any] | None = None  # the checkpoint the weights came from (--init-from)
    # The final test pass's class probabilities of last.pt's weights (one process only), for
    # callbacks that would otherwise evaluate the test set again (the report's predictions).
    test_probabilities: Any = None
    # The final test's metrics, where the last epoch's validation took them (loop.final_test_on_val).
    test_metrics: dict[str, Any] | None = None


class Callback:
    """fit() calls these in order; each does nothing unless overridden."""

    def on_fit_start(self, run: Run, state: LoopState) -> None: ...
    def on_epoch_start(self, run: Run, state: LoopState) -> None: ...
    def on_step_end(self, run: Run, state: LoopState) -> None: ...
    def on_epoch_metrics(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None:
        """Add fields to an epoch's metrics before they are logged."""

    def on_epoch_end(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None: ...
    def on_fit_end(self, run: Run, state: LoopState, summary: dict[str, Any]) -> None: ...
    def close(self) -> None:
        """Called however fit() ends (finished, interrupted, failed)."""


class Callbacks:
    """Callbacks called as one, in order: `callbacks("on_epoch_end", run, state, metrics)`."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)

    def __call__(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)


class SanityCheck(Callback):
    """Before a fresh run trains, the untrained model's accuracy and loss against chance: said,
    and kept in RUN/sanity_check.json (main rank)."""

    def on_fit_start(self, run: Run, state: LoopState) -> None:
        if not state.resumed and state.init_from is None:  # only an untrained model
            c = run.config
            check = untrained_check(
                run.model, run.val_x, run.val_y, run.normalizer, run.precision,
                run.num_classes, c.channels_last,
            )  # fmt: skip
            state.say(check["message"])
            if run.world.is_main:
                text = json.dumps(check, indent=2, ensure_ascii=False)
                atomic_write(state.out / SANITY_FILE, text.encode())


class CheckpointEverySteps(Callback):
    """A checkpoint inside the epoch every `every` steps, so a crash loses at most that many."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, run: Run, state: LoopState) -> None:
        state.checkpoint_due = state.step % self.every == 0


class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr, where stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def on_epoch_start(self, run: Run, state: LoopState) -> None:
        self.bar = tqdm(
            total=run.steps,
            initial=state.step,
            desc=f"epoch {state.epoch + 1}/{run.config.epochs}",
            leave=False,
            file=sys.stderr,
            disable=not self.enabled,
        )

    def on_step_end(self, run: Run, state: LoopState) -> None:
        self.bar.update()

    def on_epoch_end(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepLog(Callback):
    """Where stderr is no terminal (a log file, CI, Slurm), a line every `every` steps: loss so
    far this epoch, images/s, the optimizer's lr, and the time left for the whole run."""

    def __init__(self, every: int, stream=None):
        self.every, self.stream = every, stream or sys.stderr
        self.t0, self.first = 0.0, 0

    def on_epoch_start(self, run: Run, state: LoopState) -> None:
        self.t0, self.first = time.perf_counter(), state.step

    def on_step_end(self, run: Run, state: LoopState) -> None:
        every = self.every if self.every > 0 else max(1, run.steps // 10)
        if state.step % every and state.step != run.steps:
            return
        done = state.step - self.first
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        sums = state.stats.read()
        loss = sums["loss_sum"] / sums["examples"] if sums["examples"] else float("nan")
        left = (run.config.epochs - state.epoch - 1) * run.steps + run.steps - state.step
        rates = optimizer_rates(run.optimizer)
        lr = "  ".join(f"{k} {v:.3g}" for k, v in rates.items())
        print(
            f"epoch {state.epoch + 1}/{run.config.epochs} step {state.step}/{run.steps}  "
            f"loss {loss:.4f}  {done * run.batch / seconds:.0f} img/s  {lr}  "
            f"ETA {format_duration(left * seconds / max(done, 1))}",
            file=self.stream,
            flush=True,
        )


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def optimizer_rates(optimizer) -> dict[str, float]:
    """The lr each kind of parameter group last stepped with: `lr` (SGD's, the weights'; in the
    original convention lr / batch), `muon_lr` (Muon's conv filters), `bias_lr` (BatchNorm
    shifts and the whitening bias, where bias_lr_scale sets them apart)."""
    names = {"weights": "lr", "filters": "muon_lr", "norm": "bias_lr", "whiten_bias": "bias_lr"}
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        key = names.get(group.get("name"), group.get("name") or "lr")
        rates.setdefault(key, float(group["lr"]))
    if rates.get("bias_lr") == rates.get("lr"):
        rates.pop("bias_lr", None)
    order = ["lr", "muon_lr", "bias_lr"]
    return dict(sorted(rates.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 3))


class EpochRates(Callback):
    """Adds to an epoch's metrics the rates its optimizer groups stepped with last (`step_lr`,
    `muon_lr`, `bias_lr`: see optimizer_rates) and the training throughput (`images_per_s`)."""

    def on_epoch_metrics(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None:
        rates = optimizer_rates(run.optimizer)
        metrics["step_lr"] = rates.pop("lr", None)
        metrics.update(rates)
        if metrics.get("train_s"):
            metrics["images_per_s"] = round(len(run.train_y) / metrics["train_s"], 1)


class MetricsTable(Callback):
    """RUN/metrics.jsonl, one line per epoch, and the per-epoch table on the console."""

    def __init__(self, path: Path, quiet: bool, stream):
        self.log = MetricsLog(path, quiet=quiet, stream=stream)

    def on_epoch_end(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None:
        self.log.write(metrics)


class StepRecords(Callback):
    """RUN/steps.jsonl (train/step_records.py): every `every` steps of an epoch and at its last,
    the loss and accuracy since the previous record, every parameter group's lr, the time. No
    record makes the host wait for the device: the sums come back by asynchronous copies."""

    def __init__(self, path: Path, every: int):
        self.path, self.every, self.recorder = path, every, None

    def on_fit_start(self, run: Run, state: LoopState) -> None:
        # Records beyond the checkpoint a run resumes from are steps it is about to train again.
        resumed_at = state.epoch * run.steps + state.step if state.resumed else None
        self.recorder = StepRecorder(self.path, run.device, resumed_at)

    def on_epoch_start(self, run: Run, state: LoopState) -> None:
        self.recorder.epoch_start(state.stats.sums)

    def on_step_end(self, run: Run, state: LoopState) -> None:
        if state.step % self.every == 0 or state.step == run.steps:
            step = state.epoch * run.steps + state.step
            record = {"step": step, "epoch": state.epoch + 1, "lr": group_rates(run.optimizer)}
            self.recorder.snapshot(state.stats.sums, record)
        # Before a checkpoint every record it covers is on disk, so a resume from it misses none.
        self.recorder.write(wait=state.checkpoint_due)

    def on_epoch_end(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None:
        self.recorder.write(wait=True)  # the loop has read the sums: nothing left to wait for

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None


def default_callbacks(run: Run, out: Path, stream) -> list[Callback]:
    """The plug-ins the config asks for that live in train/: sanity check, checkpoints inside
    the epoch, the progress bar (a terminal) or step lines (no terminal), the optimizer's rates
    and images/s in each epoch's metrics, the metrics log and steps.jsonl (bar, lines and logs
    on the main rank)."""
    c, main = run.config, run.world.is_main
    callbacks: list[Callback] = []
    if c.sanity_check:
        callbacks.append(SanityCheck())
    if c.checkpoint_every_steps:
        callbacks.append(CheckpointEverySteps(c.checkpoint_every_steps))
    terminal = sys.stderr.isatty()
    callbacks.append(ProgressBar(main and not c.quiet and terminal))
    if main and not c.quiet and not terminal and c.log_every_steps:
        callbacks.append(StepLog(c.log_every_steps))
    callbacks.append(EpochRates())
    if main:
        callbacks.append(MetricsTable(out / "metrics.jsonl", c.quiet, stream))
    if main and c.loss_every_steps:
        # After CheckpointEverySteps: a checkpoint due at this step is known when it records.
        callbacks.append(StepRecords(out / STEPS_FILE, c.loss_every_steps))
    return callbacks
