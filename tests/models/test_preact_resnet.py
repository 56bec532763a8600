"""PreActResNet: shapes, parameter count, residual structure, L2 term, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dawntrain.models.preact_resnet import (
    Bottleneck,
    Downsample,
    PreActResNet,
    SpecialBottleneck,
    Tail,
)


def conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out


def bn(c: int) -> int:
    return 2 * c


def unit(k: int, c_in: int, c_out: int) -> int:
    return bn(c_in) + conv(k, c_in, c_out)


def bottleneck(n: int) -> int:
    return unit(1, n, n // 4) + unit(3, n // 4, n // 4) + unit(1, n // 4, n)


def downsample(n: int) -> int:
    return unit(1, n, n // 2) + unit(3, n // 2, n // 2) + unit(1, n // 2, 2 * n) + unit(1, n, 2 * n)


def expected_params(classes: int, w: int, levels: tuple[int, ...], downsample_last=True) -> int:
    total = conv(3, 3, w) + bn(w) + bottleneck(w) + conv(1, w, w)  # tail + special bottleneck
    n = w
    for i, repeats in enumerate(levels):
        total += repeats * bottleneck(n)
        if downsample_last or i < len(levels) - 1:
            total += downsample(n)
            n *= 2
    return total + bn(n) + n * classes + classes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial eval-mode BN so the identity and gradient checks can fail."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def half_model() -> PreActResNet:
    torch.manual_seed(0)
    return PreActResNet(width=32).eval()


@pytest.mark.parametrize("size, final", [(64, 2), (32, 1)])
def test_output_shape_and_feature_sizes(half_model, size, final):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = half_model.blocks(half_model.tail(x))
        out = half_model(x)
    assert feats.shape == (2, 32 * 16, final, final)
    assert out.shape == (2, 200)
    assert torch.isfinite(out).all()


def test_parameter_count_matches_formula():
    full = PreActResNet()
    half = PreActResNet(width=32)
    assert n_params(full) == expected_params(200, 64, (4, 6, 3, 2))
    assert n_params(half) == expected_params(200, 32, (4, 6, 3, 2))
    assert n_params(half) < n_params(full) / 3  # convs scale with width**2
    small = PreActResNet(num_classes=10, width=16, levels=(1, 2), downsample_last=False)
    assert n_params(small) == expected_params(10, 16, (1, 2), downsample_last=False)


def test_no_last_downsample_stops_at_4x4():
    model = PreActResNet(num_classes=7, width=16, levels=(1, 1, 1, 1), downsample_last=False)
    with torch.no_grad():
        feats = model.blocks(model.tail(torch.randn(1, 3, 64, 64)))
    assert feats.shape == (1, 16 * 8, 4, 4)
    assert model.classifier.in_features == 16 * 8


def test_block_shapes():
    x = torch.randn(2, 16, 8, 8)
    assert Tail(16)(torch.randn(2, 3, 9, 9)).shape == (2, 16, 5, 5)  # 'same' pool on odd sizes
    assert Bottleneck(16)(x).shape == (2, 16, 8, 8)
    assert SpecialBottleneck(16)(x).shape == (2, 16, 8, 8)
    assert Downsample(16)(x).shape == (2, 32, 4, 4)
    assert Downsample(16)(torch.randn(2, 16, 7, 7)).shape == (2, 32, 4, 4)


def test_zeroed_residual_branch_leaves_the_shortcut():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    for block in (Bottleneck(16), SpecialBottleneck(16), Downsample(16)):
        block = block.double().eval()
        randomize_bn(block, gen)
        with torch.no_grad():
            before = block(x)
            block.residual[-1].conv.weight.zero_()
            after = block(x)
            shortcut = x if type(block) is Bottleneck else block.main(x)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, shortcut, rtol=0, atol=0)


def test_zeroed_bottlenecks_make_them_identities():
    torch.manual_seed(2)
    model = PreActResNet(num_classes=5, width=8, levels=(2, 1)).double().eval()
    randomize_bn(model, torch.Generator().manual_seed(3))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        for m in model.blocks:
            if type(m) is Bottleneck:
                m.residual[-1].conv.weight.zero_()
        out = model(x)
        # The same network with the plain bottlenecks removed.
        h = model.tail(x)
        for m in model.blocks:
            if type(m) is not Bottleneck:
                h = m(h)
        ref = model.classifier(torch.relu(model.final_bn(h)).mean(dim=(2, 3)))
    torch.testing.assert_close(out, ref)


def test_l2_penalty_is_keras_l2():
    model = PreActResNet(num_classes=10, width=8, levels=(1,))
    w = model.classifier.weight.detach().double()
    assert model.l2_penalty().item() == pytest.approx(0.01 * (w**2).sum().item(), rel=1e-6)
    model = PreActResNet(num_classes=10, width=8, levels=(1,), head_l2=0.5)
    with torch.no_grad():
        model.classifier.weight.fill_(2.0)
        model.classifier.bias.fill_(100.0)  # the bias is not penalized
    assert model.l2_penalty().item() == pytest.approx(0.5 * 4.0 * 10 * 16)


def test_backward_reaches_every_parameter():
    torch.manual_seed(4)
    model = PreActResNet(num_classes=5, width=8, levels=(1, 1)).train()
    x = torch.randn(4, 3, 16, 16)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])) + model.l2_penalty()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_init():
    model = PreActResNet(num_classes=5, width=64, levels=(1,))
    conv3 = model.blocks[1].residual[1].conv  # 16 -> 16, 3x3: fan_in 144
    assert conv3.weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)
    assert (model.classifier.bias == 0).all()


@pytest.mark.parametrize("block_cls", [Bottleneck, Downsample])
def test_gradcheck_float64_eval(block_cls):
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    block = block_cls(8).double().eval()
    randomize_bn(block, gen)
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


def test_residual_chain_rule():
    """y = x + f(x) gives dE/dx = dE/dy (I + df/dx): v plus the branch's vector-Jacobian product."""
    torch.manual_seed(6)
    block = Bottleneck(8).double().eval()
    randomize_bn(block, torch.Generator().manual_seed(6))
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    (through_block,) = torch.autograd.grad(block(x), x, v)
    (through_branch,) = torch.autograd.grad(block.residual(x), x, v)
    torch.testing.assert_close(through_block, v + through_branch)
