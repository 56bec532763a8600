"""The analysis plug-ins of fit(): the curvature probe each N epochs, TensorBoard scalars, and
RUN/report.html at the end. `for_config(config)` gives the ones a config asks for; the CLI and
the benchmarks pass them to fit(), which never imports this layer.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from dawntrain.analysis.probe import probe_during_training
from dawntrain.analysis.report import TensorBoardLogger, write_report
from dawntrain.config import Config
from dawntrain.engine.build import Run
from dawntrain.train.callbacks import Callback, LoopState


class CurvatureProbe(Callback):
    """α* and the top Hessian eigenvalue every `every` epochs, added to the epoch's metrics, on
    a fixed unaugmented batch so that the curve compares epoch to epoch."""

    def __init__(self, every: int):
        self.every = every

    def on_epoch_metrics(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None:
        if (state.epoch + 1) % self.every or not run.world.is_main:
            return
        c = run.config
        metrics.update(
            probe_during_training(
                run.model,
                lambda z, t: run.loss(run.model, z, t, c.label_smoothing),
                run.normalizer(run.train_x[: run.batch], c.channels_last),
                run.train_y[: run.batch],
                c.convention,
            )
        )


class TensorBoard(Callback):
    """Each epoch's metrics as TensorBoard scalars in RUN/tensorboard (main rank)."""

    def __init__(self):
        self.logger = None

    def on_fit_start(self, run: Run, state: LoopState) -> None:
        if run.world.is_main:
            self.logger = TensorBoardLogger(state.out, run.config)

    def on_epoch_end(self, run: Run, state: LoopState, metrics: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(metrics)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None


class Report(Callback):
    """RUN/report.html once the run has finished (main rank); a figure that fails to draw must
    not fail a finished run, so it is a warning."""

    def on_fit_end(self, run: Run, state: LoopState, summary: dict[str, Any]) -> None:
        if not run.world.is_main:
            return
        try:
            path = write_report(
                state.out, state.dataset, str(run.device), probabilities=state.test_probabilities
            )
        except Exception as e:
            warnings.warn(f"could not write {state.out / 'report.html'}: {e}", stacklevel=1)
            return
        state.say(f"report: {path} (open it in a browser: file://{Path(path).resolve()})")


def for_config(config: Config) -> list[Callback]:
    """The analysis callbacks `config` asks for (probe_every, tensorboard, report)."""
    callbacks: list[Callback] = []
    if config.probe_every:
        callbacks.append(CurvatureProbe(config.probe_every))
    if config.tensorboard:
        callbacks.append(TensorBoard())
    if config.report:
        callbacks.append(Report())
    return callbacks
