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


def param_groups(model: nn.Module, bias_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in named groups: `weights`, `norm` (BatchNorm scale/shift) and
    `whiten_bias`. Groups with a larger lr get a proportionally smaller decay coefficient,
    so lr × decay, the shrink per step, is the same for every parameter."""
    norm_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters(recurse=False)
    }
    whiten = getattr(model, "whiten", None)
    whiten_ids = {id(whiten.bias)} if whiten is not None and whiten.bias is not None else set()
    groups: dict[str, list] = {"weights": [], "norm": [], "whiten_bias": []}
    for p in model.parameters():
        if p.requires_grad:
            name = (
                "whiten_bias" if id(p) in whiten_ids else "norm" if id(p) in norm_ids else "weights"
            )
            groups[name].append(p)
    scale = {"weights": 1.0, "norm": bias_lr_scale, "whiten_bias": bias_lr_scale}
    return [
        {"name": name, "params": params, "lr_scale": scale[name], "wd_scale": 1.0 / scale[name]}
        for name, params in groups.items()
        if params
    ]


def make_sgd(
    model: nn.Module,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    batch_size: int,
    bias_lr_scale: float = 1.0,
) -> torch.optim.SGD:
    # The original decays every trainable variable, BatchNorm's scale and shift included.
    groups = param_groups(model, bias_lr_scale)
    wd = step_weight_decay(weight_decay, batch_size)
    for group in groups:
        group["weight_decay"] = wd * group["wd_scale"]
    device = groups[0]["params"][0].device if groups else torch.device("cpu")
    return torch.optim.SGD(
        groups,
        lr=0.0,
        momentum=momentum,
        nesterov=nesterov,
        foreach=True if device.type == "cpu" else None,
    )


def freeze_group(optimizer: torch.optim.Optimizer, name: str, drop_grads: bool = False) -> None:
    """Stop a group from moving (its lr becomes 0 from the next set_lr on). `drop_grads` also
    stops their gradients: autograd then skips the work that only fed them (the fast net's
    whitening bias is why its first 3x3 conv computes an input gradient, at 31x31). The other
    gradients, and so training, stay the same: the optimizers skip a parameter without one, and
    a step at lr 0 left it where it was. Not under DDP, whose reducer waits for every gradient
    it was built with."""
    for group in optimizer.param_groups:
        if group.get("name") == name:
            group["lr_scale"] = 0.0
            if drop_grads:
                for p in group["params"]:
                    p.requires_grad_(False)


def fade_group(optimizer: torch.optim.Optimizer, name: str, factor: float) -> None:
    """Set a group's lr to `factor` of the lr it was built with, from the next set_lr on."""
    for group in optimizer.param_groups:
        if group.get("name") == name:
            group.setdefault("built_lr_scale", group["lr_scale"])
            group["lr_scale"] = group["built_lr_scale"] * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def make_optimizer(
    model: nn.Module, config, batch_size: int, ns_dtype: torch.dtype = torch.float32
) -> torch.optim.Optimizer:
    """SGD as the config says, or Muon for conv filters (config.optimizer == "muon") with
    SGD for the rest; the Muon group follows the same schedule, scaled to peak at muon_lr,
    and orthogonalizes in `ns_dtype` with config.muon_ns_steps iterations."""
    if config.optimizer == "sgd":
        return make_sgd(
            model,
            config.momentum,
            config.nesterov,
            config.weight_decay,
            batch_size,
            config.bias_lr_scale,
        )
    from dawntrain.engine.muon import MuonSGD

    groups = param_groups(model, config.bias_lr_scale)
    wd = step_weight_decay(config.weight_decay, batch_size)
    out = []
    for group in groups:
        filters = [p for p in group["params"] if p.ndim == 4] if group["name"] == "weights" else []
        rest = [p for p in group["params"] if not any(p is f for f in filters)]
        if filters:
            out.append(
                {
                    "name": "filters",
                    "params": filters,
                    "muon": True,
                    "momentum": config.muon_momentum,
                    "lr_scale": config.muon_lr / config.lr,
                }
            )
        if rest:
            out.append({**group, "params": rest, "weight_decay": wd * group["wd_scale"]})
    return MuonSGD(
        out,
        config.momentum,
        config.nesterov,
        ns_dtype=ns_dtype,
        ns_steps=config.muon_ns_steps,
        norm_every=config.muon_norm_every,
    )
