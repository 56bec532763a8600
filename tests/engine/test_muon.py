import copy

import pytest
import torch

from dawntrain.config import resolve
from dawntrain.engine.muon import MuonSGD, _iterate, orthogonalize
from dawntrain.engine.nonfinite import SkipNonFinite
from dawntrain.engine.optim import make_optimizer, set_lr
from dawntrain.models import build_model


def test_orthogonalize_keeps_singular_vectors_and_flattens_singular_values():
    torch.manual_seed(0)
    for shape in [(16, 48), (48, 16)]:
        g = torch.randn(*shape, dtype=torch.float64)
        u, _, vt = torch.linalg.svd(g, full_matrices=False)
        o = orthogonalize(g).double()
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.6 and s.max() < 1.25
        # Same singular subspaces: o ≈ U diag(s') Vᵀ, so Uᵀ o V is diagonal.
        core = u.T @ o @ vt.T
        off = core - torch.diag(torch.diagonal(core))
        assert off.abs().max() < 1e-6 * core.abs().max() + 1e-3


def spread_spectrum(m: int, n: int, decades: float = 6.0) -> torch.Tensor:
    """An m x n matrix (m <= n) with singular values spread evenly over `decades` decades."""
    u, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, dtype=torch.float64))
    return (u * torch.logspace(0, -decades, m, dtype=torch.float64)) @ v.T


def test_the_gram_space_iteration_is_the_direct_one():
    """Wide matrices iterate through their Gram matrix: in float64 the very same polynomial as
    the direct iteration; in fp32 within 5e-4 of it even over six decades of singular values
    (bf16's direct iteration is 3e-2 away on plain Gaussian matrices)."""
    torch.manual_seed(3)
    for m, n in [(64, 216), (256, 576), (32, 2304), (48, 16)]:
        g = spread_spectrum(min(m, n), max(m, n))
        g = g if m <= n else g.T
        wide = g if m <= n else g.T
        direct = _iterate(wide / (wide.norm() + 1e-7), 5)  # as orthogonalize normalizes
        direct = direct if m <= n else direct.T
        torch.testing.assert_close(
            orthogonalize(g, dtype=torch.float64), direct, rtol=0, atol=1e-10
        )
        fp32 = orthogonalize(g.float()).double()
        assert (fp32 - direct).norm() < 5e-4 * direct.norm()


def test_sgd_groups_match_torch_sgd_and_muon_keeps_filter_norms():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    bias = torch.nn.Parameter(torch.randn(8))
    ref_bias = bias.detach().clone().requires_grad_(True)
    opt = MuonSGD(
        [
            {"params": [conv.weight], "muon": True, "momentum": 0.6},
            {"params": [bias], "weight_decay": 0.1},
        ],
        momentum=0.85,
        nesterov=True,
    )
    ref = torch.optim.SGD([ref_bias], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.1)
    for group in opt.param_groups:
        group["lr"] = 0.05
    for _ in range(3):
        g = torch.randn(8)
        bias.grad, ref_bias.grad = g.clone(), g.clone()
        conv.weight.grad = torch.randn_like(conv.weight)
        opt.step()
        ref.step()
        torch.testing.assert_close(bias, ref_bias)
    # Muon renormalizes each filter bank to √out before its (unit-scale) step.
    assert abs(conv.weight.norm().item() - 8**0.5) < 0.2


def reference_muon(w, grads, lr, mu, norm_every):
    """A float64 Muon step by step as hiverge's cifar10-speedrun writes it: Nesterov momentum,
    the bank set back to norm √out before every norm_every-th step, then the orthogonalized
    update."""
    w, buf = w.clone(), torch.zeros_like(w)
    for k, g in enumerate(grads, start=1):
        buf = mu * buf + g
        update = g + mu * buf
        if k % norm_every == 0:
            w = w * (len(w) ** 0.5 / w.norm())
        w = w - lr * orthogonalize(update.reshape(len(w), -1), 5, torch.float64).view_as(w)
    return w


def test_muon_renormalizes_on_every_nth_step_and_resumes_on_the_same_steps():
    torch.manual_seed(4)
    w0 = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    grads = [torch.randn_like(w0) for _ in range(7)]

    def muon(w):
        return MuonSGD(
            [{"params": [w], "muon": True, "momentum": 0.6, "lr": 0.1}],
            ns_dtype=torch.float64,
            norm_every=3,
        )

    w = torch.nn.Parameter(w0.clone())
    opt = muon(w)
    for k, g in enumerate(grads):
        w.grad = g.clone()
        opt.step()
        if k == 3:  # a checkpoint after 4 steps, restored into a fresh optimizer
            saved = {"w": w.detach().clone(), "opt": copy.deepcopy(opt.state_dict())}
    torch.testing.assert_close(w.detach(), reference_muon(w0, grads, 0.1, 0.6, 3))
    # Without the renormalization on steps 3 and 6 the norm drifts: the option matters.
    assert (w.detach() - reference_muon(w0, grads, 0.1, 0.6, 1)).abs().max() > 1e-2

    # The count is a tensor now; checkpoints of 2026-12-06 hold it as an int.
    as_int = copy.deepcopy(saved["opt"])
    as_int["state"][0]["step"] = int(as_int["state"][0]["step"])
    for state in (saved["opt"], as_int):
        resumed = torch.nn.Parameter(saved["w"].clone())
        opt = muon(resumed)
        opt.load_state_dict(state)
        for g in grads[4:]:
            resumed.grad = g.clone()
            opt.step()
        torch.testing.assert_close(resumed.detach(), w.detach())


@pytest.mark.parametrize("bad", [0, 2], ids=["first-step", "third-step"])
def test_a_step_skipnonfinite_undoes_does_not_count_toward_the_renormalization(bad):
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(3, 8, 3, bias=False).double()
    w0 = conv.weight.detach().clone()
    grads = [torch.randn_like(w0) for _ in range(7)]
    opt = MuonSGD(
        [{"params": [conv.weight], "muon": True, "momentum": 0.6, "lr": 0.1}],
        ns_dtype=torch.float64,
        norm_every=3,
    )
    skipper = SkipNonFinite(conv, opt)
    for k, g in enumerate(grads):
        skipper.save()
        conv.weight.grad = g.clone()
        opt.step()
        skipper.undo_if(torch.tensor(k == bad))
    kept = grads[:bad] + grads[bad + 1 :]
    torch.testing.assert_close(conv.weight.detach(), reference_muon(w0, kept, 0.1, 0.6, 3))


def test_make_optimizer_puts_conv_filters_in_the_muon_group():
    cfg = resolve("fast", sets=["optimizer=muon", "width=8"])
    model = build_model("fast", 10, 8)
    opt = make_optimizer(model, cfg, 64)
    names = {g["name"]: g for g in opt.param_groups}
    assert names["filters"]["muon"] and all(p.ndim == 4 for p in names["filters"]["params"])
    assert model.head.weight in names["weights"]["params"]
    set_lr(opt, cfg.lr)
    assert abs(names["filters"]["lr"] - cfg.muon_lr) < 1e-12


def test_bf16_newton_schulz_stays_well_inside_the_iterations_own_error():
    """bf16 moves the result by a fraction of how far five iterations leave it from U Vᵀ."""
    torch.manual_seed(2)
    for shape in [(64, 576), (256, 2304), (24, 12)]:
        g = torch.randn(*shape)
        u, _, vt = torch.linalg.svd(g.double(), full_matrices=False)
        exact = u @ vt
        fp32 = orthogonalize(g).double()
        bf16 = orthogonalize(g, dtype=torch.bfloat16)
        assert bf16.dtype == torch.float32  # returned in g's dtype
        s = torch.linalg.svdvals(bf16.double())
        assert s.min() > 0.6 and s.max() < 1.25
        moved = (bf16.double() - fp32).norm()
        assert moved < 0.25 * (fp32 - exact).norm()
        assert moved < 0.05 * fp32.norm()


def test_ns_dtype_is_bf16_on_cuda_unless_set():
    from dawntrain.engine.muon import ns_dtype

    assert ns_dtype("auto", "cuda") == torch.bfloat16
    assert ns_dtype("auto", "cpu") == torch.float32
    assert ns_dtype("fp32", "cuda") == torch.float32
    assert ns_dtype("bf16", "cpu") == torch.bfloat16


def test_the_muon_step_takes_the_configured_number_of_newton_schulz_iterations():
    torch.manual_seed(2)
    w0, grad = torch.randn(8, 3, 3, 3), torch.randn(8, 3, 3, 3)
    updates = {}
    for steps in (3, 5):
        conv = torch.nn.Conv2d(3, 8, 3, bias=False)
        conv.weight.data.copy_(w0)
        opt = MuonSGD([{"params": [conv.weight], "muon": True, "momentum": 0.0}], ns_steps=steps)
        opt.param_groups[0]["lr"] = 1.0
        conv.weight.grad = grad.clone()
        opt.step()
        normed = w0 * (8**0.5 / w0.norm())  # the filter norm Muon restores before its step
        updates[steps] = normed - conv.weight.detach()
        expected = orthogonalize(grad.reshape(8, -1), steps=steps).view_as(grad)
        torch.testing.assert_close(updates[steps], expected)
    assert not torch.allclose(updates[3], updates[5])
    cfg = resolve("fast", sets=["muon_ns_steps=3", "width=8"])
    assert make_optimizer(build_model("fast", 10, 8), cfg, 64).ns_steps == 3
