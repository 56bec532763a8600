"""Curvature probes: Hessian-vector products, the optimal step along −g, Newton steps, λ_max.

Around weights h0 the loss is modelled as a quadratic (course notes accompanying the original
DavidNet write-up):

    e(h) ≈ e(h0) + gᵀ(h − h0) + ½ (h − h0)ᵀ A (h − h0),   g the gradient, A the Hessian.

Along −g it is smallest at the step α* = gᵀg / gᵀAg; the full minimiser is h − h0 = −A⁻¹g.
Comparing α* with the learning rate a recipe uses tells how far from "steepest descent with the
locally best step" training runs; mind the loss and lr conventions (`to_lr_convention`).

Every function takes `loss_fn`, a closure that recomputes the scalar loss from the current
parameters (so train-mode BatchNorm and dropout are part of the function being probed), and
builds the gradient graph once per call: all Hessian-vector products of one call see the same
forward pass, dropout mask included. Dot products are accumulated in float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dawntrain.errors import ConfigError

LossFn = Callable[[], Tensor]


@dataclass(frozen=True)
class StepProbe:
    """α* = gᵀg / gᵀAg and its parts at one point. `loss` is the loss there."""

    alpha: float
    gTg: float
    gTAg: float
    loss: float


@dataclass(frozen=True)
class NewtonStep:
    """d ≈ −(A + damping·I)⁻¹ g from conjugate gradient; add `step` to the params to take it.

    `residual` is CG's ‖A d + g‖ / ‖g‖; `negative_curvature` is True when CG met a direction with
    pᵀAp < 0, i.e. A is not positive definite and d points at a saddle or a maximum.
    """

    step: list[Tensor]
    iterations: int
    residual: float
    negative_curvature: bool


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return (
        torch.stack(
            [
                torch.dot(x.reshape(-1).double(), y.reshape(-1).double())
                for x, y in zip(a, b, strict=True)
            ]
        )
        .sum()
        .item()
    )


def _grads_with_graph(loss_fn: LossFn, params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    loss = loss_fn()
    # materialize_grads: a parameter the loss ignores gets a zero gradient, not None.
    grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
    return loss, list(grads)


def _hvp_from_grads(
    grads: Sequence[Tensor], params: Sequence[Tensor], v: Sequence[Tensor]
) -> list[Tensor]:
    """A v as the gradient of gᵀv (v held constant); keeps the graph for the next product."""
    g_dot_v = sum((g * u).sum() for g, u in zip(grads, v, strict=True))
    if not isinstance(g_dot_v, Tensor) or not g_dot_v.requires_grad:
        # The gradient does not depend on the params: the loss is linear, A = 0.
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(g_dot_v, params, retain_graph=True, materialize_grads=True)
    return [x.detach() for x in hv]


def hvp(loss_fn: LossFn, params: Sequence[Tensor], v: Sequence[Tensor]) -> list[Tensor]:
    """Hessian-vector product A v of `loss_fn()` w.r.t. `params`, by double backprop."""
    params = list(params)
    _, grads = _grads_with_graph(loss_fn, params)
    return _hvp_from_grads(grads, params, list(v))


def optimal_step(loss_fn: LossFn, params: Sequence[Tensor]) -> StepProbe:
    """α* = gᵀg / gᵀAg, the step along −g that minimises the local quadratic model.

    Returned as is when the model has no minimum along −g: negative when gᵀAg < 0 (curving
    down: the quadratic says "step as far as you can"), inf when gᵀAg = 0 < gᵀg, nan when g = 0.
    """
    params = list(params)
    loss, grads = _grads_with_graph(loss_fn, params)
    g = [x.detach() for x in grads]
    Ag = _hvp_from_grads(grads, params, g)
    gTg, gTAg = _dot(g, g), _dot(g, Ag)
    alpha = gTg / gTAg if gTAg != 0 else math.inf if gTg > 0 else math.nan
    return StepProbe(alpha=alpha, gTg=gTg, gTAg=gTAg, loss=float(loss.detach()))


def newton_step(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    damping: float = 0.0,
) -> NewtonStep:
    """Solves (A + damping·I) d = −g by conjugate gradient on Hessian-vector products.

    One HVP per iteration: meant for small problems and tests. Stops when ‖A d + g‖ ≤ tol·‖g‖ or
    after `max_iter` iterations. CG needs A positive definite to be guaranteed; on an indefinite
    but nonsingular A it usually still converges (to the saddle-seeking step), and it stops early
    only if pᵀAp is exactly 0. Use `damping` > 0 to regularise a nearly singular Hessian.
    """
    params = list(params)
    _, grads = _grads_with_graph(loss_fn, params)
    g = [x.detach() for x in grads]
    d = [torch.zeros_like(x) for x in g]
    g_norm = math.sqrt(_dot(g, g))
    if g_norm == 0:
        return NewtonStep(step=d, iterations=0, residual=0.0, negative_curvature=False)
    r = [-x for x in g]  # residual −g − A d at d = 0
    p = [x.clone() for x in r]
    rr = _dot(r, r)
    negative_curvature = False
    iterations = 0
    for _ in range(max_iter):
        Ap = _hvp_from_grads(grads, params, p)
        if damping:
            Ap = [a + damping * x for a, x in zip(Ap, p, strict=True)]
        pAp = _dot(p, Ap)
        if pAp == 0 or not math.isfinite(pAp):
            break
        negative_curvature |= pAp < 0
        a = rr / pAp
        for di, pi, ri, Api in zip(d, p, r, Ap, strict=True):
            di.add_(pi, alpha=a)
            ri.sub_(Api, alpha=a)
        iterations += 1
        rr_next = _dot(r, r)
        if math.sqrt(rr_next) <= tol * g_norm:
            rr = rr_next
            break
        beta, rr = rr_next / rr, rr_next
        p = [ri + beta * pi for ri, pi in zip(r, p, strict=True)]
    return NewtonStep(
        step=d,
        iterations=iterations,
        residual=math.sqrt(rr) / g_norm,
        negative_curvature=negative_curvature,
    )


def top_eigenvalue(
    loss_fn: LossFn, params: Sequence[Tensor], iters: int = 20, seed: int = 0
) -> float:
    """The Hessian eigenvalue of largest magnitude, by power iteration on HVPs.

    Near a minimum that is λ_max (gradient descent diverges along its eigenvector for steps
    above 2/λ_max); if a negative eigenvalue is larger in magnitude, that one is returned, sign
    included. The Rayleigh quotient vᵀAv of the last iterate, so `iters` HVPs in all. The start
    vector is drawn on the CPU from `seed`: the same on every device. Check convergence against
    1/α* = gᵀAg / gᵀg, a Rayleigh quotient and so a lower bound on λ_max.
    """
    if iters < 1:
        raise ConfigError(f"top_eigenvalue: iters must be >= 1, got {iters}")
    params = list(params)
    _, grads = _grads_with_graph(loss_fn, params)
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p) for p in params]
    eigenvalue = 0.0
    for _ in range(iters):
        v_norm = math.sqrt(_dot(v, v))
        v = [x / v_norm for x in v]
        Av = _hvp_from_grads(grads, params, v)
        eigenvalue = _dot(v, Av)
        if _dot(Av, Av) == 0:  # v is in A's null space (or A = 0): nothing to iterate on
            break
        v = Av
    return eigenvalue


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value); inf/nan propagate instead of raising."""
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def probe_batches(
    model: nn.Module,
    loss_fn_for_batch: Callable[[Any], Tensor],
    batches: Iterable[Any],
    *,
    params: Sequence[Tensor] | None = None,
    train: bool = True,
    eigenvalue: bool = False,
    eig_iters: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """α* (and optionally the top Hessian eigenvalue) on each batch, with mean and sample std.

    `loss_fn_for_batch(batch)` returns the scalar loss of `model` on `batch`, in the convention
    the recipe trains with (see `to_lr_convention`). `params` defaults to the model's trainable
    parameters. The model runs in train mode by default (BatchNorm batch statistics, dropout on:
    the function training actually descends); `train=False` probes the eval-mode loss.

    Leaves the model as it found it: per-module train/eval flags, buffers (BatchNorm running
    statistics a train-mode forward updates), parameters and their `.grad` (never written: the
    probes use autograd.grad), and the CPU and CUDA RNG states, so a probe in the middle of a
    run does not change what the run does next.

    Returns {"alpha", "loss", "gTg", "gTAg": per-batch lists, "alpha_mean", "alpha_std"} plus
    {"top_eigenvalue": list, "top_eigenvalue_mean", "top_eigenvalue_std"} when `eigenvalue`.
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    modes = {module: module.training for module in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    grads = [p.grad for p in params]
    cuda_devices = sorted({p.get_device() for p in params if p.is_cuda})
    probes: list[StepProbe] = []
    eigenvalues: list[float] = []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            model.train(train)
            for batch in batches:
                loss_fn = functools.partial(loss_fn_for_batch, batch)
                probes.append(optimal_step(loss_fn, params))
                if eigenvalue:
                    eigenvalues.append(top_eigenvalue(loss_fn, params, iters=eig_iters, seed=seed))
    finally:
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
    if not probes:
        raise ConfigError("probe_batches: got no batches; pass at least one batch to probe")

    alphas = [probe.alpha for probe in probes]
    alpha_mean, alpha_std = _mean_std(alphas)
    result: dict[str, Any] = {
        "alpha": alphas,
        "alpha_mean": alpha_mean,
        "alpha_std": alpha_std,
        "loss": [probe.loss for probe in probes],
        "gTg": [probe.gTg for probe in probes],
        "gTAg": [probe.gTAg for probe in probes],
    }
    if eigenvalue:
        eig_mean, eig_std = _mean_std(eigenvalues)
        result |= {
            "top_eigenvalue": eigenvalues,
            "top_eigenvalue_mean": eig_mean,
            "top_eigenvalue_std": eig_std,
        }
    return result


def to_lr_convention(
    alpha: float, batch_size: int, loss: str = "sum", lr_divided_by_batch: bool = True
) -> float:
    """The learning rate that takes the step α* in a recipe's lr convention.

    `alpha` is α* measured on the batch loss reduced by `loss` ("sum" or "mean") over
    `batch_size` examples. With L_sum = B·L_mean, g and A both scale by B, so α*_sum = α*_mean / B
    and both give the same weight step α*_mean·g_mean.

    `lr_divided_by_batch=True`: the recipe's update is lr × (gradient of the mean loss). That is
    the DavidNet recipe (summed loss, optimizer lr = lr / batch_size) and equally plain PyTorch
    SGD on a mean loss; the lr is α*_mean = α*_sum × B. `False`: the update is lr × (gradient of
    the summed loss), so the lr is α*_sum = α*_mean / B.

    α* is a plain gradient-descent step; with momentum ρ the long-run step is lr / (1 − ρ), so
    compare α* with lr / (1 − ρ), not lr.
    """
    if loss not in ("sum", "mean"):
        raise ConfigError(f"to_lr_convention: loss must be 'sum' or 'mean', got {loss!r}")
    if batch_size < 1:
        raise ConfigError(f"to_lr_convention: batch_size must be >= 1, got {batch_size}")
    alpha_mean = alpha * batch_size if loss == "sum" else alpha
    return alpha_mean if lr_divided_by_batch else alpha_mean / batch_size
