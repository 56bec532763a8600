"""Figures of a run and of a recipe: training curves, confusion matrix, lr schedule, input samples.

Each `figure_*` returns a matplotlib Figure built without pyplot (so no global backend is set
and nothing opens a window); each `plot_*` saves one as PNG and returns its path. The report
embeds the same figures.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from dawntrain.config import Config, resolve
from dawntrain.data.batches import steps_per_epoch
from dawntrain.engine.build import build, make_schedule, run_data
from dawntrain.errors import ConfigError, DataError
from dawntrain.train.log import read_metrics

# Training-set sizes of the built-in sources, for the lr plot's steps per epoch.
KNOWN_TRAIN_SIZES = {"cifar10": 50_000, "sample": 5_000, "tiny-imagenet": 100_000}
TRAIN, VAL = "tab:blue", "tab:orange"


def save(fig: Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """RUN/metrics.jsonl's epochs; DataError where the file is missing or empty."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a run directory written by `dawntrain train`")
    metrics = read_metrics(path)
    if not metrics:
        raise DataError(f"{path} is empty: the run finished no epoch yet")
    return metrics


# ---------------------------------------------------------------------------------- curves


def figure_curves(metrics: list[dict[str, Any]], title: str = "") -> Figure:
    """Loss, accuracy and lr per epoch (train and val); α* and λ_max when the run probed them."""
    epochs = [m["epoch"] for m in metrics]

    def series(key: str) -> tuple[list, list]:
        pairs = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
        return [e for e, _ in pairs], [v for _, v in pairs]

    probed = any("alpha_star" in m for m in metrics)
    fig = Figure(figsize=(4 * (4 if probed else 3), 3.4), layout="constrained")
    axes = fig.subplots(1, 4 if probed else 3)
    for ax, what in zip(axes, ("loss", "acc")):
        for split, color in (("train", TRAIN), ("val", VAL)):
            ax.plot(*series(f"{split}_{what}"), "o-", ms=3, color=color, label=split)
        ax.set_title("loss" if what == "loss" else "accuracy")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [m.get("lr") for m in metrics], "o-", ms=3, color="tab:green")
    axes[2].set_title("lr (schedule value at the end of the epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    if probed:
        ax = axes[3]
        e_alpha, alpha = series("alpha_star")
        ax.plot(e_alpha, alpha, "o", color="tab:red", label="α* = gᵀg / gᵀAg")
        e, lam = series("top_eigenvalue")
        limit = [2 / v if v > 0 else np.nan for v in lam]
        ax.plot(e, limit, "s", color="tab:purple", label="2 / λ_max (GD stability limit)")
        lr = [m.get("lr") for m in metrics]
        ax.plot(epochs, lr, "-", color="tab:green", label="lr")
        # α* < 0 (the loss curves down along −g) is possible: a symmetric log axis shows it.
        sizes = [abs(v) for v in [*alpha, *limit, *lr] if v and np.isfinite(v)]
        ax.set_yscale("symlog", linthresh=min(sizes) if sizes else 1.0)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_title("curvature probe (lr convention)")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """RUN/metrics.jsonl as curves.png (default inside RUN)."""
    run_dir = Path(run_dir)
    fig = figure_curves(run_metrics(run_dir), title=run_dir.name)
    return save(fig, out or run_dir / "curves.png")


# ------------------------------------------------------------------------------- confusion


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(
        classes, classes
    )


def figure_confusion(predictions: dict[str, np.ndarray], title: str = "") -> Figure:
    """Row-normalised confusion matrix (each row: where one true class's images went) and the
    per-class accuracy (the diagonal), from `run_predictions`' arrays."""
    names = [str(c) for c in predictions["class_names"]]
    k = len(names)
    counts = confusion_matrix(predictions["labels"], predictions["predictions"], k)
    per_class = counts.diagonal() / np.maximum(counts.sum(1), 1)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    accuracy = counts.trace() / max(counts.sum(), 1)
    size = min(12.0, 4.0 + 0.45 * k)
    fig = Figure(figsize=(2 * size, size), layout="constrained")
    ax, bars = fig.subplots(1, 2)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    labelled = k <= 30  # beyond that, names overlap: axes show class indices
    if labelled:
        ax.set_xticks(range(k), names, rotation=60, ha="right")
        ax.set_yticks(range(k), names)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8
                    )
    ax.set_title("confusion matrix (counts; colour: row fraction)")
    if labelled:
        bars.barh(range(k), per_class, color="tab:blue")
        bars.set_yticks(range(k), names)
        bars.set_title("per-class accuracy")
    else:  # too many to name: sorted, with the worst few named
        order = np.argsort(per_class, kind="stable")
        bars.barh(range(k), per_class[order[::-1]], height=1.0, color="tab:blue")
        bars.set_yticks([])
        bars.set_ylabel(f"{k} classes, best first")
        worst = ", ".join(f"{names[i]} {per_class[i]:.2f}" for i in order[:5])
        bars.set_title(f"per-class accuracy; worst: {worst}", fontsize=9)
    bars.axvline(accuracy, color="tab:red", ls="--", label=f"overall {accuracy:.4f}")
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.set_xlabel("accuracy")
    bars.legend(loc="lower right")
    fig.suptitle(
        (title + ": " if title else "")
        + f"{counts.sum()} test images, accuracy {accuracy:.4f}"
        + (f", TTA level {int(predictions['tta_level'])}" if int(predictions["tta_level"]) else "")
    )
    return fig


def plot_confusion(run_dir: Path, out: Path | None = None, data=None, device: str = "auto") -> Path:
    """RUN's last.pt on its test set (or `data`) as confusion.png; caches RUN/predictions.npz."""
    from dawntrain.infer.predict import run_predictions

    run_dir = Path(run_dir)
    fig = figure_confusion(run_predictions(run_dir, data, device), title=run_dir.name)
    return save(fig, out or run_dir / "confusion.png")


# -------------------------------------------------------------------------------------- lr


def train_size(config: Config) -> int:
    n = KNOWN_TRAIN_SIZES.get(config.data)
    if n is None:
        raise DataError(
            f"the training-set size of data source {config.data!r} is not known here; pass "
            "n_train (CLI: --n-train N)"
        )
    return n - config.val_from_train


def lr_steps(config: Config, n_train: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(fractional epoch, schedule lr) at every optimizer step, as the loop sets it, and the
    steps per epoch."""
    steps = steps_per_epoch(n_train or train_size(config), config.batch_size)
    schedule = make_schedule(config)
    t = np.arange(steps * config.epochs) / steps
    return t, np.array([schedule(x) for x in t]), steps


def figure_lr(config: Config, n_train: int | None = None) -> Figure:
    t, lr, steps = lr_steps(config, n_train)
    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(t, lr, color="tab:green", lw=1.5)
    ax.set_xlabel(f"epoch ({steps} steps each)")
    step_note = "optimizer lr = lr / batch" if config.convention == "original" else "per example"
    ax.set_ylabel(f"lr ({config.convention}: {step_note})")
    ax.set_title(
        f"{config.preset}: {config.lr_schedule}, peak {config.lr:g}, batch {config.batch_size}"
    )
    ax.grid(alpha=0.3)
    return fig


def plot_lr(config: Config | str, out: Path, n_train: int | None = None) -> Path:
    """The lr schedule at step resolution of a config or a preset name."""
    config = resolve(config) if isinstance(config, str) else config
    return save(figure_lr(config, n_train), out)


# --------------------------------------------------------------------------------- samples


def pipeline_samples(
    dataset, config: Config, n: int = 16, epoch: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first `n` training images of `epoch` as the model trains on them: its split, order,
    crop and flip, then Run.inputs (normalization, colour jitter, the epoch's size); mapped back
    to uint8 (samplewise-normalized images are min-max stretched: their original brightness and
    contrast are gone). (images, labels, names)."""
    # Built as fit() builds it, on the CPU, with a batch no larger than the data (tiny sets):
    # the first n images of an epoch are the same at any batch size of at least n.
    held_out = len(dataset.train_labels) - config.val_from_train
    batch = max(min(n, held_out), min(config.batch_size, held_out))
    run = build(replace(config, device="cpu", batch_size=batch, compile=False), dataset)
    x, y = next(run.batches(epoch))
    fed, y = run.inputs(x, epoch, 0)[:n].float(), y[:n]
    normalizer = run.normalizer
    if normalizer.samplewise:
        low = fed.amin(dim=(1, 2, 3), keepdim=True)
        high = fed.amax(dim=(1, 2, 3), keepdim=True)
        shown = (fed - low) / (high - low).clamp_min(1e-6) * 255
    else:
        shown = fed * normalizer.std + normalizer.mean
    images = shown.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, y.numpy(), list(run.splits.class_names)


# A grid cell's title height in inches for each point of its font size (0.32 at 8 pt).
TITLE_INCHES_PER_POINT = 0.04


def figure_grid(
    images: np.ndarray,
    titles: list[str],
    colors: list[str] | None = None,
    columns: int = 8,
    suptitle: str = "",
    cell: tuple[float, float] = (1.6, 1.75),
    title_size: float = 8,
    min_width: float = 0.0,
) -> Figure:
    """Images in rows of `columns`, each under its title (two lines fit at `title_size`) in
    `colors`, in cells of `cell` inches (width, height); a `suptitle` gets a line above them
    for each of its lines, the figure at least `min_width` inches wide so that it fits."""
    # Cells of fixed inches, not constrained layout: its solver took half of a 32-image grid's
    # 0.55 s, and the report draws two of them after every run.
    (cell_w, cell_h), title_h, margin = cell, TITLE_INCHES_PER_POINT * title_size, 0.05
    rows = max(1, -(-len(images) // columns))
    header = 0.15 + 0.2 * len(suptitle.splitlines()) if suptitle else 0.0
    width, height = max(cell_w * columns, min_width), cell_h * rows + header
    fig = Figure(figsize=(width, height))
    if suptitle:
        fig.suptitle(suptitle, y=1 - 0.08 / height, va="top")
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        box = (
            (c * cell_w + margin) / width,
            (height - header - (r + 1) * cell_h + margin) / height,
            (cell_w - 2 * margin) / width,
            (cell_h - title_h - 2 * margin) / height,
        )
        ax = fig.add_axes(box)
        ax.set_axis_off()
        ax.imshow(image, interpolation="nearest")
        ax.set_title(titles[i], fontsize=title_size, color=colors[i] if colors else "black")
    return fig


def plot_samples(data, config: Config | str, n: int = 16, out: Path | None = None) -> Path:
    """A grid of `n` training images as the pipeline feeds them, titled with class names, saved
    as `out` (default: samples.png in the config's run directory, config.out).
    `data`: a source name/path, or a data set object (train/test images, labels, class_names)."""
    config = resolve(config) if isinstance(config, str) else config
    if out is None:
        if not config.out:
            raise ConfigError(
                "plot_samples: give `out`, or a config whose `out` is a run directory"
            )
        out = Path(config.out) / "samples.png"
    # As training sees it: checked, resized where configured.
    dataset = run_data(config, str(data) if isinstance(data, Path) else data)
    images, labels, names = pipeline_samples(dataset, config, n)
    return save(figure_grid(images, [names[i] for i in labels]), out)
