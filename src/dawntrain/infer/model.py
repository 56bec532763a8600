"""A checkpoint's model, ready to use: built as training built it, with its weights, its input
normalization and the run's evaluation settings (precision, TTA level, batch size): its trained
weights, or the EMA of them that a run with `ema` kept beside them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dawntrain.config import Config, apply
from dawntrain.data.batches import Normalizer
from dawntrain.engine.build import model_on_device
from dawntrain.engine.evaluate import evaluate
from dawntrain.errors import CheckpointError, ConfigError, DataError
from dawntrain.models import input_size as model_input_size
from dawntrain.runtime.device import resolve_device, resolve_precision
from dawntrain.train import checkpoint

# Which of a checkpoint's weights to use: the trained ones, or their EMA (config.ema).
WEIGHTS = ("raw", "ema")


@dataclass
class TrainedModel:
    """A checkpoint's model in eval mode on its device, and how the run evaluated it."""

    model: nn.Module
    config: Config
    normalizer: Normalizer
    state: dict[str, Any]  # the raw checkpoint
    precision: str
    path: Path
    weights: str = "raw"  # one of WEIGHTS

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def class_names(self) -> list[str]:
        return list(self.state["class_names"])

    def check_classes(self, classes: list[str], where: str, hint: str = "") -> None:
        """Refuse data whose class list is not the checkpoint's, naming both lists."""
        own = self.class_names
        if list(classes) != own:
            raise DataError(
                f"{self.path} was trained on {len(own)} classes ({class_list(own)}), {where} has "
                f"{len(classes)} ({class_list(list(classes))}); evaluate on data with the "
                f"checkpoint's classes{hint}"
            )

    def evaluate(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        tta_level: int = 0,
        probabilities: bool = False,
        precision: str | None = None,
        batch_size: int | None = None,
        tta_below: float | None = None,
        with_plain: bool = False,
    ) -> dict[str, Any]:
        """engine.evaluate on uint8 NHWC arrays, in this process alone; `tta_below` None: the
        run's own (config.tta_below)."""
        x = torch.as_tensor(np.ascontiguousarray(images)).to(self.device)
        y = None if labels is None else torch.as_tensor(np.asarray(labels)).long().to(self.device)
        c = self.config
        return evaluate(
            self.model, x, y, self.normalizer, batch_size or c.eval_batch_size,
            precision or self.precision, c.channels_last, tta_level=tta_level,
            probabilities=probabilities, all_ranks=False,
            tta_below=c.tta_below if tta_below is None else tta_below, with_plain=with_plain,
        )  # fmt: skip


def load_model(path: Path, device: str = "auto", weights: str = "raw") -> TrainedModel:
    """The checkpoint's model with its trained weights (`raw`) or their EMA (`ema`, which only
    a run with `ema` > 0 stored). `path`: a .pt file, a run directory (its last.pt), RUN/best."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    path = checkpoint.in_run(path)
    state = checkpoint.load(path)
    config = apply(Config(), state["config"], f"checkpoint {path}")
    if weights == "ema" and "ema" not in state:
        raise CheckpointError(
            f"{path} holds no EMA of the weights: its run trained without one (ema = "
            f"{config.ema}); use its trained weights (--weights raw), or train with --ema"
        )
    dev = resolve_device(device)
    model = model_on_device(config, len(state["class_names"]), dev)
    model.load_state_dict(state["ema" if weights == "ema" else "model"])
    normalizer = Normalizer(**state["normalizer"])
    precision = resolve_precision(config.precision, dev)
    return TrainedModel(model.eval(), config, normalizer, state, precision, Path(path), weights)


def class_list(classes: list[str], shown: int = 5) -> str:
    return ", ".join(classes[:shown]) + (", ..." if len(classes) > shown else "")


def input_size(state: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the images a checkpoint's model trained on: the checkpoint's
    `image_size` where the run stored it, else its config's (models.input_size)."""
    if "image_size" in state:
        h, w = state["image_size"]
        return int(h), int(w)
    config = apply(Config(), state.get("config", {}), "checkpoint")
    side = model_input_size(config) or 32
    return side, side
