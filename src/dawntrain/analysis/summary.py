"""A layer table like Keras' model.summary(): name, type, output shape, parameters, forward
FLOPs (convolutions and linear layers, analysis/flop_count.py), totals."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dawntrain.analysis.flop_count import elementwise_flops, flops_breakdown


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


def format_flops(n: int) -> str:
    """FLOPs in a unit that keeps their digits: 0.291 G, 2.36 M, 740.5 k (a fixed "G" printed
    the fast network's elementwise 0.0024 G as 0.000 G)."""
    if n >= 1e8:
        return f"{n / 1e9:.3f} G"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n / 1e3:.1f} k" if n >= 1e3 else str(int(n))


def _flops(n: int) -> str:
    return format_flops(n) if n else ""


def format_summary(model: nn.Module, input_shape: tuple[int, int, int], title: str = "") -> str:
    """The table: one row per leaf module with its type, output shape, parameters and forward
    FLOPs per image (multiply-adds × 2 of convolutions and linear layers), then the totals."""
    rows = layer_rows(model, input_shape)
    matmul = flops_breakdown(model, input_shape, include_elementwise=False)
    columns = [
        ("Layer", [r.name for r in rows], "<"),
        ("Type", [r.kind for r in rows], "<"),
        ("Output shape", [str(r.output_shape) for r in rows], "<"),
        ("Param #", [f"{r.params:,}" for r in rows], ">"),
        ("FLOPs", [_flops(matmul.get(r.name, 0)) for r in rows], ">"),
    ]
    widths = [max(len(head), *(len(v) for v in values)) for head, values, _ in columns]
    fmt = lambda cells: "  ".join(  # noqa: E731
        f"{cell:{align}{w}}" for cell, w, (_, _, align) in zip(cells, widths, columns)
    ).rstrip()
    line = "─" * (sum(widths) + 2 * (len(widths) - 1))
    out = [title, line] if title else [line]
    out += [fmt([head for head, _, _ in columns]), line]
    out += [fmt(cells) for cells in zip(*(values for _, values, _ in columns))]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # Keras counts BatchNorm's moving mean and variance as non-trainable parameters; so do we.
    buffers = sum(
        b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")
    )
    total_flops = sum(matmul.values())
    out += [
        line,
        f"Total params: {trainable + frozen + buffers:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {frozen + buffers:,} (frozen parameters and BatchNorm statistics)",
        f"Forward FLOPs per image: {format_flops(total_flops)} in convolutions and linear "
        f"layers (+{format_flops(elementwise_flops(model, input_shape))} elementwise); "
        "training ~3x",
        line,
    ]
    return "\n".join(out)
