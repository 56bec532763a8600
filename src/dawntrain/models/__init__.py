"""Models, built by name from a config."""

from __future__ import annotations

from torch import nn

from dawntrain.models.davidnet import DavidNet
from dawntrain.models.fast import FastNet
from dawntrain.models.preact_resnet import PreActResNet

__all__ = ["DavidNet", "FastNet", "PreActResNet", "build_model"]


def build_model(
    name: str,
    num_classes: int,
    width: int = 64,
    dropout: float = 0.0,
    exact_dropout: bool = False,
    **tricks: bool,
) -> nn.Module:
    """`tricks` (whiten, dirac, frozen_bn_scale) go to FastNet; the other models take none."""
    if name == "davidnet":
        model = DavidNet(c=width, dropout=dropout, num_classes=num_classes)
    elif name == "davidnet64":
        model = DavidNet(c=width, dropout=dropout, num_classes=num_classes, stem_pool=True)
    elif name == "fast":
        model = FastNet(widths=(width, 4 * width, 4 * width), num_classes=num_classes, **tricks)
    elif name == "preact_resnet":
        model = PreActResNet(num_classes=num_classes, width=width)
    else:
        raise ValueError(f"unknown model {name!r}")
    if exact_dropout:
        for m in model.modules():
            if hasattr(m, "exact"):
                m.exact = True
    return model
