"""An exponential moving average (EMA) of the model's weights, kept beside the trained weights
and evaluated beside them. Training never reads it: the raw weights train exactly as without it.

Every `every` optimizer steps, `average ← d·average + (1 − d)·weights` for each parameter and
floating-point buffer of the bare module (under DDP the module DDP wraps, whose weights every rank
holds alike, so every rank's average is the same). d is `decay`; with `warmup` it is
min(decay, (1 + u) / (10 + u)) at the u-th update (TensorFlow's ExponentialMovingAverage with
num_updates), so that a short run's average is not mostly the initial weights: 0.999 alone still
gives the initialisation a weight of 0.999^490 = 61% after `fast`'s 490 steps.

The average is `module`, a copy of the model in eval mode without gradients, so that evaluating
it is evaluating a model (engine.evaluate.evaluate, TTA included) and a checkpoint stores it as a
state dict that loads into the model as it is. (torch's AveragedModel with get_ema_multi_avg_fn
makes the same update without the warmup; its state dict prefixes each name with `module.` and
adds a count.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, every: int = 1, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.every, self.warmup = decay, every, warmup
        self.source = model
        # BatchNorm's running statistics are averaged with the weights (timm's ModelEmaV3, and
        # AveragedModel with use_buffers=True). They are themselves averages over the last few
        # dozen batches, so their average is the statistics of the recent weights the average is
        # made of, close to what the averaged weights see when those weights move slowly. The
        # raw model's current statistics would pair the averaged weights with another model's
        # activations; recomputing them for the averaged weights (SWA's update_bn) would cost a
        # forward pass over the training set each time the average is evaluated.
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, update: int) -> float:
        """The decay of the `update`-th update (1, 2, ...)."""
        if self.warmup:
            return min(self.decay, (1.0 + update) / (10.0 + update))
        return self.decay

    @torch.no_grad()
    def step(self, global_step: int) -> None:
        """After optimizer step `global_step` (1-based over the run): update every `every` steps.
        The update count is derived from the step, so a resumed run updates as an uninterrupted
        one does without storing it."""
        if global_step % self.every:
            return
        weight = 1.0 - self.decay_at(global_step // self.every)
        averaged = self.module.state_dict()
        for name, value in self.source.state_dict().items():
            if value.is_floating_point():
                averaged[name].lerp_(value, weight)
            else:  # BatchNorm's num_batches_tracked: the count, not an average
                averaged[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
