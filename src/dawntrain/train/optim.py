"""The optimizer and the two lr/weight-decay conventions.

`original` (DavidNet): the loss is summed over the batch, each step uses lr = schedule(t) / B and adds
wd·B·w to the summed gradient. Per example that is lr·(mean gradient + wd·w): the same update at any B.
`per_example`: the loss is summed, each step uses lr = schedule(t) and adds wd·B·w, so lr and wd are
what one example contributes; a bigger batch takes a proportionally bigger step (linear scaling).
TF's MomentumOptimizer(use_nesterov=True) and torch's SGD(nesterov=True) are the same update:
v ← μv + g, w ← w − lr·(g + μv).
"""

from __future__ import annotations

import torch
from torch import nn


def step_lr(convention: str, schedule_value: float, batch_size: int) -> float:
    return schedule_value / batch_size if convention == "original" else schedule_value


def step_weight_decay(weight_decay: float, batch_size: int) -> float:
    """Decay coefficient added to the summed gradient: wd per example × examples in the batch."""
    return weight_decay * batch_size


def make_sgd(
    model: nn.Module, momentum: float, nesterov: bool, weight_decay: float, batch_size: int
) -> torch.optim.SGD:
    # The original decays every trainable variable, BatchNorm's scale and shift included.
    params = [p for p in model.parameters() if p.requires_grad]
    foreach = True if params and params[0].device.type == "cpu" else None
    return torch.optim.SGD(
        params,
        lr=0.0,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=step_weight_decay(weight_decay, batch_size),
        foreach=foreach,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
