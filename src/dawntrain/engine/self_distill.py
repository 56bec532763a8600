"""Soft targets from the model's own past predictions (progressive self-knowledge distillation:
Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets", 2021).

Each training image's target is its one-hot label mixed with the softmax the model gave it the
last time it trained on it, the mix rising linearly from 0 to config.self_distill over the run.
The predictions come from the step's own forward pass, so this costs no FLOPs beyond a softmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dawntrain.runtime import distributed


class PastPredictions:
    """A table of each training image's last predicted class probabilities (NaN: not yet seen)."""

    def __init__(self, alpha: float, n_train: int, num_classes: int, world, batch: int):
        self.alpha = alpha
        self.world = world
        self.batch = batch
        self.table = torch.full((n_train, num_classes), float("nan"), device=world.device)

    def targets(self, index: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
        """Class-probability targets for the images at dataset positions `index`: one-hot where
        the image has no prediction yet, else mixed with it by alpha × progress."""
        onehot = F.one_hot(y, self.table.shape[1]).float()
        past = self.table[index]
        seen = ~past[:, 0].isnan()
        mix = self.alpha * progress
        return torch.where(seen[:, None], (1 - mix) * onehot + mix * past.nan_to_num(), onehot)

    @torch.no_grad()
    def observe(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        """Records the softmax of the step's logits (before its update) at positions `index`;
        rows that are not finite keep the old prediction."""
        probs = logits.detach().float().softmax(1)
        if self.world.active:
            index, probs = distributed.all_gather_indexed(index, probs, self.batch)
        ok = probs.isfinite().all(1)
        self.table[index[ok]] = probs[ok]

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.table.copy_(state["table"])
