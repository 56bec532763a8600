"""Models, built by name from a config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from dawntrain.models.conv import Conv3x3
from dawntrain.models.davidnet import DavidNet
from dawntrain.models.fast import FastNet
from dawntrain.models.preact_resnet import PreActResNet

if TYPE_CHECKING:
    from dawntrain.config import Config

__all__ = ["DavidNet", "FastNet", "PreActResNet", "build_model", "input_size", "model_for"]

# The input side each model was designed for. Other sizes run (the models pool globally) but
# usually mean the wrong data: 64x64 Tiny ImageNet under a CIFAR preset costs 4x per step.
INPUT_SIZES = {"davidnet": 32, "fast": 32, "davidnet64": 64, "preact_resnet": 64}


def build_model(
    name: str,
    num_classes: int,
    width: int = 64,
    dropout: float = 0.0,
    exact_dropout: bool = False,
    width_factor: float = 4.0,
    **tricks: bool | str | float,
) -> nn.Module:
    """`tricks` (whiten, dirac, frozen_bn_scale, ceil_pool, activation, whiten_eps, ghost_batch)
    go to FastNet; the other models take none. FastNet's blocks are (width, width_factor x width,
    width_factor x width) wide."""
    if name == "davidnet":
        model = DavidNet(c=width, dropout=dropout, num_classes=num_classes)
    elif name == "davidnet64":
        model = DavidNet(c=width, dropout=dropout, num_classes=num_classes, stem_pool=True)
    elif name == "fast":
        wide = round(width_factor * width)
        model = FastNet(widths=(width, wide, wide), num_classes=num_classes, **tricks)
    elif name == "preact_resnet":
        model = PreActResNet(num_classes=num_classes, width=width)
    else:
        raise ValueError(f"unknown model {name!r}")
    if exact_dropout:
        for m in model.modules():
            if hasattr(m, "exact"):
                m.exact = True
    return model


def input_size(config: Config) -> int | None:
    """The side of the square images a run expects: config.image_size, else its model's."""
    return config.image_size or INPUT_SIZES.get(config.model)


def model_for(config: Config, num_classes: int, exact_dropout: bool | None = None) -> nn.Module:
    """The model a run's config describes, its ablation switches included (every caller that
    builds from a config goes through here, so a probe or benchmark builds what fit() trains).
    `exact_dropout` overrides the config's, for benchmarks that compare the two."""
    tricks = (
        dict(
            whiten=config.whiten,
            dirac=config.dirac,
            frozen_bn_scale=config.frozen_bn_scale,
            ceil_pool=config.ceil_pool,
            activation=config.activation,
            whiten_eps=config.whiten_eps,
            ghost_batch=config.ghost_batch,
        )
        if config.model == "fast"
        else {}
    )
    exact = config.exact_dropout if exact_dropout is None else exact_dropout
    model = build_model(
        config.model,
        num_classes,
        config.width,
        config.dropout,
        exact,
        width_factor=config.width_factor,
        **tricks,
    )
    for module in model.modules():
        if isinstance(module, Conv3x3):
            module.matmul = config.matmul_conv
    return model
