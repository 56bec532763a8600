"""The training step (loss, backward, optimizer) and its statistics, kept on the device.

No step reads a value back to the host: losses and correct counts accumulate in one float64
tensor, read once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dawntrain.runtime import distributed
from dawntrain.runtime.device import autocast


def loss_fn(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, smoothing: float):
    """Cross-entropy summed over the batch (the original's convention) plus any model penalty."""
    loss = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=smoothing)
    if hasattr(model, "l2_penalty"):
        # A Keras-style penalty is added to the mean loss; the summed loss carries it B times.
        loss = loss + len(labels) * model.l2_penalty()
    return loss


def train_step(
    model: nn.Module,
    forward,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    label_smoothing: float = 0.0,
    grad_scale: float = 1.0,
    loss=loss_fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a normalized batch; returns the (summed) loss and the logits.

    `grad_scale` = world size under DDP, whose mean over ranks then becomes the gradient of the
    loss summed over the global batch, exactly as one process with that batch computes it."""
    with autocast(x.device, precision):
        logits = forward(x)
    value = loss(model, logits, y, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(value * grad_scale if grad_scale != 1.0 else value).backward()
    scaler.step(optimizer)
    scaler.update()
    return value, logits


@dataclass
class StepStats:
    """An epoch's sums so far, one float64 device tensor with named slots: the loss and correct
    count of finite steps, their examples, the number of non-finite steps and the global index
    of the first one (-1: none). A checkpoint inside an epoch stores the sums over all ranks as
    `partial` and, under torchrun, each rank's own as the rows of `partial_ranks`."""

    sums: torch.Tensor

    LOSS, CORRECT, EXAMPLES, NONFINITE, FIRST_NONFINITE = range(5)

    @classmethod
    def zeros(cls, device: torch.device) -> StepStats:
        return cls(torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0], device=device, dtype=torch.float64))

    @classmethod
    def from_checkpoint(
        cls, partial: torch.Tensor, device: torch.device, counted: bool = True
    ) -> StepStats:
        """Resume from a checkpoint's sums. A rank resuming its own sums (same world size), or
        rank 0 resuming the global ones, counts them (`counted`); the other ranks resuming global
        sums take only the max-reduced slots (non-finite count, first index: the epoch's
        all_reduce leaves them as they are) and zero loss, correct and examples, so that the
        all_reduce adds those once."""
        if len(partial) == 4:  # written before the non-finite count existed
            partial = torch.cat([partial[:3], partial.new_zeros(1), partial[3:]])
        sums = partial.to(device=device, dtype=torch.float64).clone()
        if not counted:
            sums[: cls.NONFINITE] = 0.0
        return cls(sums)

    def gathered(self) -> torch.Tensor:
        """Every rank's sums, one row per rank (a collective: call it on every rank)."""
        return distributed.all_gather(self.sums)

    @classmethod
    def combine(cls, rows: torch.Tensor) -> StepStats:
        """The global sums of gathered rows, reduced as `all_reduce` reduces them."""
        return cls(torch.cat([rows[:, :3].sum(0), rows[:, 3:].amax(0)]))

    @torch.no_grad()
    def add(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor,
        y: torch.Tensor,
        bad: torch.Tensor,
        step: int,
    ) -> None:
        s = self.sums
        s[4] = torch.where(bad & (s[4] < 0), float(step), s[4])
        s[3] += bad
        s[0] += torch.where(bad, 0.0, loss.detach())
        s[1] += (~bad) * (logits.argmax(1) == y).sum()
        s[2] += (~bad) * len(y)

    def all_reduce(self) -> None:
        """Sums over ranks; the non-finite count and first index as their maximum."""
        distributed.all_reduce_(self.sums[:3])
        distributed.all_reduce_(self.sums[3:], op=distributed.MAX)

    def read(self) -> dict[str, float]:
        """The host values (one sync): loss_sum, correct, examples, nonfinite, first_nonfinite."""
        names = ("loss_sum", "correct", "examples", "nonfinite", "first_nonfinite")
        return dict(zip(names, self.sums.tolist()))
