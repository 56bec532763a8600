"""Optimizer steps undone when their loss is not finite, without a host sync per step."""

from __future__ import annotations

import torch
from torch import nn


class SkipNonFinite:
    """Undo an optimizer step whose loss was not finite: parameters, momentum buffers and
    BatchNorm statistics go back to their values before the step.

    `save()` copies them before the step and `undo_if(bad)` puts them back where the 0-d
    tensor `bad` is True, with torch.where: no host sync, at the cost of one copy of the
    weights, momentum and buffers per step and a few kernels per tensor."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.backup: list[torch.Tensor] = []
        self.tracked: list[torch.Tensor] = []

    def _tensors(self) -> list[torch.Tensor]:
        params = list(self.model.parameters())
        states = [self.optimizer.state.get(p, {}) for p in params]
        # Momentum buffers (SGD's, Muon's): any tensor the optimizer keeps per parameter.
        kept = [t for state in states for _, t in sorted(state.items()) if torch.is_tensor(t)]
        return params + kept + list(self.model.buffers())

    @torch.no_grad()
    def save(self) -> None:
        tensors = self._tensors()
        if [t.shape for t in tensors] != [b.shape for b in self.backup]:
            self.backup = [t.clone() for t in tensors]
        else:
            torch._foreach_copy_(self.backup, tensors)
        self.tracked = tensors

    @torch.no_grad()
    def undo_if(self, bad: torch.Tensor) -> None:
        known = {id(t) for t in self.tracked}
        for tensor, old in zip(self.tracked, self.backup, strict=True):
            tensor.copy_(torch.where(bad, old, tensor))
        # Momentum buffers the step created (the first step) start from zero, as if never made.
        for tensor in self._tensors():
            if id(tensor) not in known:
                tensor.masked_fill_(bad, 0)
