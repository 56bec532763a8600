"""A trained model looked at: its first layer's filters as images, and the report's Model
section (layer table, FLOPs, the untrained model's sanity check).

The fast network's first layer is a fixed whitening conv (models/fast.py: eigenvectors of the
training images' patch covariance, scaled by 1/sqrt(eigenvalue), and their negatives); other
models show their first trained conv (DavidNet's prep conv, the ResNet's stem).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from dawntrain.analysis.flop_count import elementwise_flops, flops
from dawntrain.analysis.plots import TITLE_INCHES_PER_POINT, figure_grid, save
from dawntrain.analysis.summary import format_flops, format_summary
from dawntrain.errors import ConfigError
from dawntrain.infer.model import TrainedModel, input_size, load_model
from dawntrain.train.callbacks import SANITY_FILE


@dataclass
class FirstLayer:
    name: str  # the module's name in the model
    weight: np.ndarray  # (filters, channels, kh, kw)
    whitening: bool  # the fixed whitening conv (not trained)

    @property
    def description(self) -> str:
        k, c, kh, kw = self.weight.shape
        what = "whitening filters (fixed from patches of the data)"
        if not self.whitening:
            what = "first conv's filters (trained)"
        return f"{what}: layer {self.name}, {k} filters of {c}x{kh}x{kw}"


def first_layer(model: nn.Module) -> FirstLayer:
    """The whitening conv where the model whitens, else the first conv on the image channels."""
    whiten = getattr(model, "whiten", None)
    if getattr(model, "use_whitening", False) and isinstance(whiten, nn.Conv2d):
        return FirstLayer("whiten", whiten.weight.detach().float().cpu().numpy(), True)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return FirstLayer(name, module.weight.detach().float().cpu().numpy(), False)
    raise ConfigError(f"{type(model).__name__} has no conv on 3 image channels to show")


def filter_images(weight: np.ndarray) -> np.ndarray:
    """(filters, kh, kw, 3) in [0, 1]: each filter scaled by its own largest |weight| and
    centred on grey, so 0 is grey and the sign shows (filters on other than 3 channels: the
    channels' mean as grey levels)."""
    w = weight.mean(1, keepdims=True).repeat(3, 1) if weight.shape[1] != 3 else weight
    scale = np.abs(w).reshape(len(w), -1).max(1)
    scaled = 0.5 + 0.5 * w / np.where(scale > 0, scale, 1.0)[:, None, None, None]
    return np.clip(scaled.transpose(0, 2, 3, 1), 0.0, 1.0)


def figure_filters(layer: FirstLayer, title: str = "") -> Figure:
    """The filters as a grid of small RGB images, normalised per filter, with each filter's
    norm (the per-filter scaling hides it)."""
    images = filter_images(layer.weight)
    norms = np.sqrt((layer.weight.astype(np.float64) ** 2).reshape(len(images), -1).sum(1))
    # The whitening layer is filters then their negatives: half a row each, so they align.
    half = len(images) // 2
    columns = half if layer.whitening and 0 < half <= 18 else min(len(images), 16)
    cell = 1.1 if layer.whitening else 0.85
    heading = (
        (title + ": " if title else "")
        + layer.description
        + "\neach scaled to its own range (grey = 0); above each, the filter's norm"
        + ("; the lower half: the upper half's negatives" if layer.whitening else "")
    )
    # Square images of `cell` inches, each under its norm at 7 pt.
    return figure_grid(
        images,
        [f"{n:.3g}" for n in norms],
        columns=columns,
        suptitle=heading,
        cell=(cell, cell + TITLE_INCHES_PER_POINT * 7),
        title_size=7,
        min_width=6.0,
    )


def plot_filters(run_dir: Path, out: Path | None = None, device: str = "auto") -> Path:
    """RUN/checkpoints/last.pt's first-layer filters as filters.png (default inside RUN)."""
    run_dir = Path(run_dir)
    trained = load_model(run_dir, device)
    fig = figure_filters(first_layer(trained.model), title=run_dir.name)
    return save(fig, out or run_dir / "filters.png")


# ---------------------------------------------------------------------------------- report


def sanity_check(run_dir: Path) -> dict[str, Any] | None:
    """RUN/sanity_check.json (written at a fresh run's start), or None where the run has none
    (an older run, a run with sanity_check = false or one started from other weights)."""
    path = Path(run_dir) / SANITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def model_section(trained: TrainedModel) -> dict[str, Any]:
    """What the report's Model section shows: the layer table, the forward FLOPs per image and
    the first layer's filters."""
    h, w = input_size(trained.state)
    shape = (3, h, w)
    c = trained.config
    model = trained.model
    what = f"{c.preset} preset" + (f", model {c.model}" if c.model != c.preset else "")
    title = f"{what}: {h}x{w} input, {len(trained.class_names)} classes"
    layer = first_layer(model)
    matmul, other = flops(model, shape), elementwise_flops(model, shape)
    return {
        "summary": format_summary(model, shape, title=title),
        "flops": {
            "forward, convolutions and linear layers": format_flops(matmul),
            "forward, elementwise (norms, activations, pooling, adds)": format_flops(other),
            "training step (~3x forward, convolutions and linear)": format_flops(3 * matmul),
        },
        "filters": figure_filters(layer),
        "filters_caption": (
            f"The {layer.description}, each shown scaled to its own range (grey is 0, the sign "
            "shows as colour); above each, its norm."
        ),
        "filters_heading": "Whitening filters" if layer.whitening else "First-layer filters",
    }


def model_report(run_dir: Path, device: str = "auto") -> dict[str, Any]:
    """model_section of RUN's last.pt, plus its sanity check (None where not recorded)."""
    trained = load_model(Path(run_dir), device)
    return {**model_section(trained), "sanity_check": sanity_check(run_dir)}
