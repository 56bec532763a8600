"""A layer table like Keras' model.summary(): name, output shape, parameters, totals."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def layer_rows(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """One row per leaf module, in call order, from a forward pass on one image in eval mode."""
    rows: list[LayerRow] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def hook(module, _inputs, output):
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerRow(names[module], type(module).__name__, shape, params))

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows


def format_summary(model: nn.Module, input_shape: tuple[int, int, int], title: str = "") -> str:
    rows = layer_rows(model, input_shape)
    width = max([len(r.name) + len(r.kind) + 3 for r in rows] + [20])
    line = "─" * (width + 40)
    out = [title, line] if title else [line]
    out.append(f"{'Layer (type)':<{width}}{'Output shape':<26}{'Param #':>14}")
    out.append(line)
    for r in rows:
        out.append(
            f"{r.name + ' (' + r.kind + ')':<{width}}{str(r.output_shape):<26}{r.params:>14,}"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # Keras counts BatchNorm's moving mean and variance as non-trainable parameters; so do we.
    buffers = sum(
        b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")
    )
    out += [
        line,
        f"Total params: {trainable + frozen + buffers:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {frozen + buffers:,} (frozen parameters and BatchNorm statistics)",
        line,
    ]
    return "\n".join(out)
