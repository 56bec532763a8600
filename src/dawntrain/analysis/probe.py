"""How big a step the loss surface allows, next to the step the recipe takes.

`probe_lr` measures α* = gᵀg / gᵀAg (curvature.py) on K training batches, as the loop would draw
them at a checkpoint's epoch (or at initialisation), and converts it to the preset's lr
convention so it reads against the schedule's lr. `probe_during_training` is the cheap per-epoch
version the loop can log as `alpha_star` and `top_eigenvalue`.

Both run in fp32 and in train mode (BatchNorm batch statistics, dropout on: the function
training descends). The cheap bank dropout has no second derivative, so the probe switches it to
torch's dropout, the same Bernoulli(1 − p) masks drawn differently.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dawntrain.analysis.curvature import probe_batches, to_lr_convention
from dawntrain.config import Config
from dawntrain.data.batches import (
    Normalizer,
)
from dawntrain.engine.build import build, run_data
from dawntrain.errors import CheckpointError, ConfigError, DawntrainError
from dawntrain.runtime.distributed import World
from dawntrain.train import checkpoint as ckpt


@contextlib.contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """Bank dropout → torch's dropout for the duration (its backward has a backward)."""
    banked = [m for m in model.modules() if hasattr(m, "exact") and not m.exact]
    for m in banked:
        m.exact = True
    try:
        yield
    finally:
        for m in banked:
            m.exact = False


def lr_scale(convention: str, batch_size: int) -> float:
    """lr = α*_sum × this, for α* measured on the batch's summed loss (to_lr_convention)."""
    return to_lr_convention(1.0, batch_size, "sum", lr_divided_by_batch=convention == "original")


def probe_during_training(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    convention: str = "original",
    eig_iters: int = 16,
) -> dict[str, float]:
    """α* and the top Hessian eigenvalue on one batch, both in the lr convention.

    `loss_fn(logits, y)` is the training loss summed over the batch; `x` is the normalized batch,
    in the parameters' dtype (fp32: call it outside autocast).
    Returns {"alpha_star": the lr that takes the locally best step along −g, "top_eigenvalue":
    λ_max scaled so that plain gradient descent is stable for lr < 2 / top_eigenvalue}; so
    alpha_star ≥ 1 / top_eigenvalue when λ_max > 0. The model's state, grads and RNG are left as
    they were. Pass the bare module (not DDP or compiled); with SyncBatchNorm call it on every
    rank, since its forward communicates.

    Power iteration approaches λ_max from below: on a width-16 DavidNet at init (batch 128) 8
    iterations gave 86% of it, 16 gave 99.9%. One call cost about 31 training steps at 8
    iterations there (fp32, CPU); the cost grows with eig_iters.
    """
    with twice_differentiable(model), torch.enable_grad():
        result = probe_batches(
            model,
            lambda batch: loss_fn(model(batch[0]), batch[1]),
            [(x, y)],
            eigenvalue=True,
            eig_iters=eig_iters,
        )
    scale = lr_scale(convention, len(y))
    return {
        "alpha_star": result["alpha_mean"] * scale,
        "top_eigenvalue": result["top_eigenvalue_mean"] / scale,
    }


def probe_lr(
    config: Config,
    checkpoint: Path | None = None,
    batches: int = 4,
    dataset=None,
    device: str | None = None,
) -> dict[str, Any]:
    """α* on the first `batches` training batches of the epoch the checkpoint reached (0 and the
    run's own initialisation without one), in the config's lr convention, beside the schedule's
    lr at that point. `dataset`: an object with train/test images, labels and class_names, or
    None to load `config.data`.

    Returns {"epoch", "batch_size", "batches", "convention", "alpha_sum" (α* of the summed loss,
    per batch), "alpha_lr" (per batch, in the lr convention), "alpha_lr_mean", "alpha_lr_std",
    "schedule_lr", "peak_lr", "momentum", "effective_lr" (lr / (1 − momentum): the long-run
    step with momentum, the number to hold against α*), "loss" (mean per example, per batch)}."""
    if batches < 1:
        raise ConfigError(f"--batches must be >= 1, got {batches}")
    dataset = run_data(config, dataset)
    with torch.random.fork_rng(devices=[]):
        # Seeded as fit() seeds before building it: without a checkpoint, the run's own init.
        torch.manual_seed(config.seed)
        try:
            run = build(config, dataset, World.single(device or config.device))
        except DawntrainError as e:
            raise ConfigError(str(e)) from None
    epoch, start_step = 0.0, 0
    if checkpoint is not None:
        state = ckpt.load(checkpoint)
        try:
            run.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit the config's model ({config.model}, width "
                f"{config.width}, {run.num_classes} classes); probe with the run's own "
                "config (omit --preset) or the matching --set"
            ) from e
        run.normalizer = Normalizer(**state["normalizer"])
        start_step = state["step_in_epoch"]
        epoch = state["epoch"] + start_step / run.steps
    # The batches training draws next from this point (those of the epoch after the last one,
    # for a finished run).
    drawn = [
        (run.normalizer(x, config.channels_last), y)
        for x, y in itertools.islice(run.batches(int(epoch), start_step), batches)
    ]
    model, batch = run.model, run.batch
    smoothing = config.label_smoothing
    with twice_differentiable(model), torch.enable_grad():
        raw = probe_batches(model, lambda b: run.loss(model, model(b[0]), b[1], smoothing), drawn)
    alpha_lr = [a * lr_scale(config.convention, len(y)) for a, (_, y) in zip(raw["alpha"], drawn)]
    finite = [a for a in alpha_lr if math.isfinite(a)]
    mean = sum(finite) / len(finite) if finite else math.nan
    std = (
        math.sqrt(sum((a - mean) ** 2 for a in finite) / (len(finite) - 1))
        if len(finite) > 1
        else 0.0
    )
    schedule_lr = run.schedule(epoch)
    return {
        "epoch": epoch,
        "batch_size": batch,
        "batches": len(drawn),
        "convention": config.convention,
        "alpha_sum": raw["alpha"],
        "alpha_lr": alpha_lr,
        "alpha_lr_mean": mean,
        "alpha_lr_std": std,
        "schedule_lr": schedule_lr,
        "peak_lr": config.lr,
        "momentum": config.momentum,
        "effective_lr": schedule_lr / (1 - config.momentum),
        "loss": [loss / len(y) for loss, (_, y) in zip(raw["loss"], drawn)],
    }


def format_probe(result: dict[str, Any]) -> str:
    meaning = {
        "original": "lr acts on the mean gradient; the optimizer's lr is lr / batch",
        "per_example": "lr acts on the summed gradient",
    }[result["convention"]]
    per_batch = ", ".join(f"{a:.4g}" for a in result["alpha_lr"])
    ratio = result["effective_lr"] / result["alpha_lr_mean"] if result["alpha_lr_mean"] else 0
    return "\n".join(
        [
            f"α* on {result['batches']} training batches of {result['batch_size']} at epoch "
            f"{result['epoch']:.2f} (fp32, train mode), {result['convention']} convention: "
            f"{meaning}",
            f"  α*                  {result['alpha_lr_mean']:.4g} ± {result['alpha_lr_std']:.2g}"
            f"   (per batch: {per_batch})",
            f"  schedule lr         {result['schedule_lr']:.4g}   (peak {result['peak_lr']:.4g})",
            f"  lr / (1 − {result['momentum']:g})      {result['effective_lr']:.4g}   "
            f"= {ratio:.3g} × α* (the long-run step with momentum)",
        ]
    )
