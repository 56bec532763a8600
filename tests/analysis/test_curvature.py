"""Curvature probes against float64 closed forms (quadratics) and finite differences (an MLP)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dawntrain.analysis.curvature import (
    hvp,
    newton_step,
    optimal_step,
    probe_batches,
    to_lr_convention,
    top_eigenvalue,
)
from dawntrain.errors import ConfigError


def symmetric(eigenvalues: list[float], seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((5, 5)))
    return q @ np.diag(eigenvalues) @ q.T


SPD = symmetric([10.0, 3.0, 2.0, 1.0, 0.5], seed=0)
INDEFINITE = symmetric([-8.0, 3.0, 2.0, -1.0, 0.5], seed=1)


def quadratic(A: np.ndarray, seed: int = 2):
    """e(h) = ½hᵀAh + bᵀh + c with h split over two params (a 2x2 matrix and a vector)."""
    rng = np.random.default_rng(seed)
    b, h0 = rng.standard_normal(5), rng.standard_normal(5)
    params = [
        torch.tensor(h0[:4].reshape(2, 2), requires_grad=True),
        torch.tensor(h0[4:], requires_grad=True),
    ]
    At, bt = torch.tensor(A), torch.tensor(b)

    def loss_fn() -> torch.Tensor:
        h = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * h @ At @ h + bt @ h + 3.0

    return loss_fn, params, h0, A @ h0 + b


def flat(tensors: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([t.reshape(-1) for t in tensors]).detach().numpy()


@pytest.mark.parametrize("A", [SPD, INDEFINITE], ids=["spd", "indefinite"])
def test_hvp_is_A_v(A):
    loss_fn, params, _, _ = quadratic(A)
    v = np.random.default_rng(3).standard_normal(5)
    Av = hvp(loss_fn, params, [torch.tensor(v[:4].reshape(2, 2)), torch.tensor(v[4:])])
    assert [t.shape for t in Av] == [(2, 2), (1,)]
    np.testing.assert_allclose(flat(Av), A @ v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("A", [SPD, INDEFINITE], ids=["spd", "indefinite"])
def test_optimal_step_and_newton_step_match_closed_form(A):
    loss_fn, params, h0, g = quadratic(A)
    probe = optimal_step(loss_fn, params)
    assert probe.gTg == pytest.approx(g @ g, rel=1e-12)
    assert probe.gTAg == pytest.approx(g @ A @ g, rel=1e-12)
    assert probe.alpha == pytest.approx((g @ g) / (g @ A @ g), rel=1e-12)
    assert probe.loss == pytest.approx(0.5 * h0 @ A @ h0 + (g - A @ h0) @ h0 + 3.0, rel=1e-12)

    newton = newton_step(loss_fn, params, tol=1e-13)
    np.testing.assert_allclose(flat(newton.step), -np.linalg.solve(A, g), rtol=1e-9, atol=1e-11)
    assert newton.residual <= 1e-13 and newton.iterations <= 5 + 1
    assert newton.negative_curvature == bool(np.linalg.eigvalsh(A).min() < 0)


def test_optimal_step_along_a_downward_or_flat_direction():
    # A = diag(1, -1): g = (1, 2) curves down (gᵀAg = -3 < 0), g = (1, 1) is flat (gᵀAg = 0).
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    for b, expected in ([(-1.0, -2.0), 5 / -3], [(-1.0, -1.0), math.inf]):
        h = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        bt = torch.tensor(b, dtype=torch.float64)
        probe = optimal_step(lambda h=h, bt=bt: 0.5 * h @ A @ h - bt @ h, [h])
        assert probe.alpha == pytest.approx(expected, rel=1e-12)
    h = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    assert math.isnan(optimal_step(lambda: 0.5 * h @ A @ h, [h]).alpha)  # g = 0


def test_linear_loss_has_zero_hessian():
    h = torch.ones(3, dtype=torch.float64, requires_grad=True)
    unused = torch.ones(2, dtype=torch.float64, requires_grad=True)
    Av = hvp(lambda: 2 * h.sum(), [h, unused], [torch.ones(3), torch.ones(2)])
    assert all(torch.equal(t, torch.zeros_like(t)) for t in Av)


@pytest.mark.parametrize("A", [SPD, INDEFINITE], ids=["spd", "indefinite"])
def test_top_eigenvalue_matches_eigvalsh(A):
    loss_fn, params, _, _ = quadratic(A)
    eigs = np.linalg.eigvalsh(A)
    largest = eigs[np.argmax(np.abs(eigs))]  # 10 for SPD, -8 for the indefinite one
    got = top_eigenvalue(loss_fn, params, iters=40, seed=0)
    assert got == pytest.approx(largest, rel=1e-9)
    assert top_eigenvalue(loss_fn, params, iters=7, seed=5) == top_eigenvalue(
        loss_fn, params, iters=7, seed=5
    )


def tanh_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    return net, x, y


def test_mlp_hvp_matches_central_differences_and_explicit_hessian():
    net, x, y = tanh_mlp()
    params = list(net.parameters())

    def loss_fn() -> torch.Tensor:
        return F.cross_entropy(net(x), y, reduction="sum")

    v = [torch.randn_like(p) for p in params]
    Av = flat(hvp(loss_fn, params, v))

    def grad_at(shift: float) -> np.ndarray:
        with torch.no_grad():
            for p, u in zip(params, v, strict=True):
                p.add_(u, alpha=shift)
        g = flat(torch.autograd.grad(loss_fn(), params))
        with torch.no_grad():
            for p, u in zip(params, v, strict=True):
                p.sub_(u, alpha=shift)
        return g

    eps = 1e-5
    central = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    np.testing.assert_allclose(Av, central, rtol=1e-6, atol=1e-6 * np.abs(central).max())

    # The explicit float64 Hessian gives α*, the Newton step and λ_max directly.
    sizes = [p.numel() for p in params]
    h0 = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of_flat(h: torch.Tensor) -> torch.Tensor:
        names = [name for name, _ in net.named_parameters()]
        chunks = [c.view_as(p) for c, p in zip(h.split(sizes), params, strict=True)]
        out = torch.func.functional_call(net, dict(zip(names, chunks, strict=True)), x)
        return F.cross_entropy(out, y, reduction="sum")

    A = torch.autograd.functional.hessian(loss_of_flat, h0).numpy()
    g = flat(torch.autograd.grad(loss_fn(), params))
    assert optimal_step(loss_fn, params).alpha == pytest.approx((g @ g) / (g @ A @ g), rel=1e-10)
    eigs = np.linalg.eigvalsh(A)
    largest = eigs[np.argmax(np.abs(eigs))]
    assert top_eigenvalue(loss_fn, params, iters=300) == pytest.approx(largest, rel=1e-6)
    damped = newton_step(loss_fn, params, damping=1.0, tol=1e-12, max_iter=200)
    expected = -np.linalg.solve(A + np.eye(len(g)), g)
    np.testing.assert_allclose(flat(damped.step), expected, rtol=1e-7, atol=1e-9)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_probe_batches_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net = BNNet().double().eval()
    net.head.train()  # a mixed mode must come back exactly
    batches = [
        (torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(3)
    ]
    net.head.weight.grad = torch.full_like(net.head.weight, 7.0)

    def loss_for(batch) -> torch.Tensor:
        return F.cross_entropy(net(batch[0]), batch[1], reduction="sum")

    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    result = probe_batches(net, loss_for, batches, eigenvalue=True, eig_iters=5)

    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(net.head.weight.grad, torch.full_like(net.head.weight, 7.0))
    assert net.body[0].weight.grad is None

    # Same numbers as probing each batch by hand in train mode from the same RNG state.
    net.train()
    params = list(net.parameters())
    alphas, eigs = [], []
    for batch in batches:
        alphas.append(optimal_step(lambda b=batch: loss_for(b), params).alpha)
        eigs.append(top_eigenvalue(lambda b=batch: loss_for(b), params, iters=5))
    assert len(result["alpha"]) == len(result["loss"]) == 3
    assert result["alpha"] == pytest.approx(alphas, rel=1e-12)
    assert result["top_eigenvalue"] == pytest.approx(eigs, rel=1e-12)
    assert result["alpha_mean"] == pytest.approx(np.mean(alphas), rel=1e-12)
    assert result["alpha_std"] == pytest.approx(np.std(alphas, ddof=1), rel=1e-9)
    assert all(a > 0 for a in alphas)

    with pytest.raises(ConfigError, match="no batches"):
        probe_batches(net, loss_for, [])


def test_lr_convention_conversion():
    net, x, y = tanh_mlp()
    params, batch = list(net.parameters()), len(x)
    alpha_sum = optimal_step(lambda: F.cross_entropy(net(x), y, reduction="sum"), params).alpha
    alpha_mean = optimal_step(lambda: F.cross_entropy(net(x), y), params).alpha
    assert alpha_sum * batch == pytest.approx(alpha_mean, rel=1e-10)

    # DavidNet convention: summed loss, optimizer lr = lr / batch → lr is α* of the mean loss.
    assert to_lr_convention(alpha_sum, batch, "sum", True) == pytest.approx(alpha_mean, rel=1e-10)
    assert to_lr_convention(alpha_mean, batch, "mean", True) == alpha_mean
    # Raw lr on the summed-loss gradient → lr is α* of the summed loss.
    assert to_lr_convention(alpha_mean, batch, "mean", False) == pytest.approx(alpha_sum, rel=1e-10)
    assert to_lr_convention(alpha_sum, batch, "sum", False) == alpha_sum
    assert to_lr_convention(0.5, 512, "sum", True) == 256.0

    with pytest.raises(ConfigError, match="loss"):
        to_lr_convention(0.1, 8, "avg")
    with pytest.raises(ConfigError, match="batch_size"):
        to_lr_convention(0.1, 0)
