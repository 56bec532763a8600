"""Lookahead toward an exponential moving average of the weights (airbench's variant).

Every `every` steps the EMA moves toward the weights and the weights are set to the EMA; the EMA's
decay grows as (progress)³ · 0.95^every, so early training is untouched and late training averages
over the last few hundred steps. At the end the model adopts the EMA. Buffers (BatchNorm running
statistics) are averaged too.
"""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    def __init__(self, model: nn.Module, every: int = 5, decay: float = 0.95):
        self.model, self.every, self.decay = model, every, decay
        self.ema = {k: v.detach().clone() for k, v in self._floats().items()}

    def _floats(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, decay: float) -> None:
        for name, value in self._floats().items():
            ema = self.ema[name]
            ema.lerp_(value, 1.0 - decay)
            value.copy_(ema)

    def step(self, global_step: int, total_steps: int) -> None:
        if global_step % self.every == 0:
            self.update(self.decay**self.every * (global_step / total_steps) ** 3)

    def finish(self) -> None:
        self.update(1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.ema)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.ema[k].copy_(v)
