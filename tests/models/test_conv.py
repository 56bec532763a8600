"""models/conv.py: the matmul 3x3 convolution is F.conv2d(padding=1), values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from dawntrain.models.conv import (
    MATMUL_MAX_PIXELS,
    MATMUL_MIN_CHANNELS,
    Conv3x3,
    conv3x3_matmul,
)
from dawntrain.models.conv import matmul_pays as REAL_MATMUL_PAYS


@pytest.fixture(autouse=True)
def matmul_pays_here(monkeypatch):
    """The path's shape rules are tested on every CPU kind, not only where matmul_pays."""
    from dawntrain.models import conv

    monkeypatch.setattr(conv, "matmul_pays", lambda: True)


def reference(x, w, grad):
    """F.conv2d in float64: output, input gradient, weight gradient."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    y = F.conv2d(x64, w64, padding=1)
    y.backward(grad.double())
    return y, x64.grad, w64.grad


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (3, 5), (8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_conv2d_in_float64(size, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, *size, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 7, *size, generator=g, dtype=torch.float64)
    y = conv3x3_matmul(x, w)
    y.backward(grad)
    ref_y, ref_gx, ref_gw = reference(x, w, grad)
    torch.testing.assert_close(y, ref_y)
    torch.testing.assert_close(x.grad, ref_gx)
    torch.testing.assert_close(w.grad, ref_gw)


def test_bf16_autocast_matches_conv2d_within_bf16_rounding():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 64, 4, 4, generator=g).to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = (torch.randn(32, 64, 3, 3, generator=g) / 24).requires_grad_()
    grad = torch.randn(16, 32, 4, 4, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv3x3_matmul(x, w)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    y.backward(grad.bfloat16())
    assert x.grad.dtype == w.grad.dtype == torch.float32  # gradients of the fp32 leaves
    ref_y, ref_gx, ref_gw = reference(x, w, grad)
    for got, want in ((y, ref_y), (x.grad, ref_gx), (w.grad, ref_gw)):
        assert (got.double() - want).norm() / want.norm() < 1e-2


def test_conv3x3_takes_the_matmul_path_only_for_small_cpu_maps(monkeypatch):
    from dawntrain.models import conv

    calls = []
    monkeypatch.setattr(conv, "conv3x3_matmul", lambda x, w: calls.append(x.shape) or x)
    c, side = MATMUL_MIN_CHANNELS, int(MATMUL_MAX_PIXELS**0.5)
    layer = Conv3x3(c, 4)
    layer(torch.randn(2, c, side, side))
    assert calls == [(2, c, side, side)]
    assert layer(torch.randn(2, c, side + 1, side + 1)).shape == (2, 4, side + 1, side + 1)
    assert Conv3x3(c - 1, 4)(torch.randn(2, c - 1, side, side)).shape == (2, 4, side, side)
    assert len(calls) == 1  # the larger map and the narrower layer went to nn.Conv2d
    assert isinstance(layer, torch.nn.Conv2d) and list(layer.state_dict()) == ["weight"]


def test_matmul_layers_counts_davidnets_last_residual_convolutions():
    from dawntrain.models import DavidNet, FastNet
    from dawntrain.models.conv import matmul_layers

    model = DavidNet().train()
    assert matmul_layers(model, (3, 32, 32)) == 2  # blk3's two 512-channel convs at 4x4
    assert model.training
    assert matmul_layers(DavidNet(), (3, 64, 64)) == 0  # 8x8 there
    assert matmul_layers(FastNet(), (3, 32, 32)) == 0  # 256 channels at 4x4
    assert matmul_layers(FastNet(widths=(128, 384, 384)), (3, 32, 32)) == 1


def test_config_switch_sends_every_convolution_to_the_library():
    from dawntrain.config import resolve
    from dawntrain.models import model_for
    from dawntrain.models.conv import matmul_layers

    assert matmul_layers(model_for(resolve("davidnet"), 10), (3, 32, 32)) == 2
    off = resolve("davidnet", sets=["matmul_conv=off"])
    assert matmul_layers(model_for(off, 10), (3, 32, 32)) == 0
    # Configs saved when the key was a bool (checkpoints) still load.
    assert resolve("davidnet", sets=["matmul_conv=false"]).matmul_conv == "off"
    assert resolve("davidnet", sets=["matmul_conv=true"]).matmul_conv == "auto"


@pytest.mark.parametrize(
    "amx, avx512, pays", [(True, True, True), (False, False, True), (False, True, False)]
)
def test_auto_takes_the_path_where_the_cpu_kind_pays_and_on_forces_it(
    amx, avx512, pays, monkeypatch
):
    from dawntrain.config import resolve
    from dawntrain.models import conv, model_for
    from dawntrain.models.conv import matmul_layers

    # Xeon-AMX and AVX2-only CPUs (Zen 3) take the path; AVX-512 without AMX (Zen 4) does not.
    monkeypatch.setattr(conv, "matmul_pays", REAL_MATMUL_PAYS)
    monkeypatch.setattr(conv, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(conv, "cpu_has_avx512", lambda: avx512)
    auto = model_for(resolve("davidnet"), 10)
    forced = model_for(resolve("davidnet", sets=["matmul_conv=on"]), 10)
    assert matmul_layers(auto, (3, 32, 32)) == (2 if pays else 0)
    assert matmul_layers(forced, (3, 32, 32)) == 2
