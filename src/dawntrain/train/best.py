"""The best checkpoint: the epoch with the best value so far of config.best_metric.

The loop asks `Best.improves(metrics)` at the end of each epoch and writes checkpoints/best.pt
when it says yes; the record travels in every checkpoint, so a resumed run keeps its best so
far and does not replace a better best.pt with a worse one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from dawntrain.config import Config

FILE = "best.pt"


def mode_of(metric: str, mode: str = "auto") -> str:
    """`max` or `min`: `mode` itself, or for `auto` what the name says (*_acc up, *_loss down)."""
    if mode != "auto":
        return mode
    return "max" if metric.endswith("_acc") else "min"


@dataclass
class Best:
    """The metric, whether higher or lower is better, and its best value and epoch so far."""

    metric: str
    mode: str  # max | min
    value: float | None = None
    epoch: int | None = None

    def improves(self, metrics: dict[str, Any]) -> bool:
        """True (and remembered) when this epoch's value beats the best so far; an epoch that
        did not measure the metric (no validation) or measured NaN never does, and a tie
        keeps the earlier epoch."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.value is not None and not (
            value > self.value if self.mode == "max" else value < self.value
        ):
            return False
        self.value, self.epoch = float(value), int(metrics["epoch"])
        return True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def summary(self) -> dict[str, Any]:
        """summary.json's "best": the record, and the file where there is one."""
        return {**asdict(self), "checkpoint": f"checkpoints/{FILE}" if self.epoch else None}

    def line(self) -> str:
        if self.epoch is None:
            return f"best {self.metric}: no epoch measured it, so there is no {FILE}"
        return f"best {self.metric} {self.value:.4f} at epoch {self.epoch} (checkpoints/{FILE})"


def for_config(config: Config) -> Best | None:
    """A fresh record for config.best_metric; None when the run keeps no best checkpoint."""
    if not config.best_metric:
        return None
    return Best(config.best_metric, mode_of(config.best_metric, config.best_mode))


def restored(config: Config, saved: str | None, say) -> Best | None:
    """The record a checkpoint carried (its JSON), when it tracked the metric this config
    asks for the same way; otherwise a fresh one, said on the console, whose first epoch
    replaces whatever best.pt there is."""
    best = for_config(config)
    if best is None or saved is None:
        if best is not None:
            say(f"best {best.metric}: the checkpoint tracked none; tracking from here on")
        return best
    record = Best(**json.loads(saved))
    if (record.metric, record.mode) == (best.metric, best.mode):
        return record
    say(
        f"best checkpoint: the checkpoint tracked {record.metric} ({record.mode}), now "
        f"{best.metric} ({best.mode}); tracking from here on, the next epoch replaces {FILE}"
    )
    return best
