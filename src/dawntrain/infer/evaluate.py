"""Use a trained checkpoint: rebuild its model and evaluate it on a data source."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dawntrain.config import Config, apply
from dawntrain.data.batches import Normalizer
from dawntrain.models import model_for
from dawntrain.runtime.device import resolve_device, resolve_precision
from dawntrain.train import checkpoint, guard
from dawntrain.train.loop import evaluate


def load_model(path: Path, device: str = "auto") -> tuple[nn.Module, Config, Normalizer, dict]:
    """(model in eval mode on the device, its config, its input normalizer, the raw checkpoint)."""
    state = checkpoint.load(path)
    config = apply(Config(), state["config"], f"checkpoint {path}")
    dev = resolve_device(device)
    model = model_for(config, len(state["class_names"]))
    model.load_state_dict(state["model"])
    norm = state["normalizer"]
    normalizer = Normalizer(norm["mean"], norm["std"], norm["samplewise"])
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return model.to(dev, memory_format=memory_format).eval(), config, normalizer, state


def evaluate_checkpoint(
    path: Path, data: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    model, config, normalizer, _ = load_model(path, device)
    # Checked and resized as the run's own data was: another source must fit the model too.
    dataset = guard.checked_dataset(replace(config, data=data or config.data))
    dev = next(model.parameters()).device
    x = torch.as_tensor(np.ascontiguousarray(dataset.test_images)).to(dev)
    y = torch.as_tensor(dataset.test_labels).long().to(dev)
    precision = resolve_precision(config.precision, dev)
    result = evaluate(
        model, x, y, normalizer, config.eval_batch_size, precision, config.channels_last
    )
    return {**result, "split": "test", "examples": len(y)}
