import math

import pytest
import torch

from dawntrain.models import DavidNet
from dawntrain.models.davidnet import ConvBN
from dawntrain.models.dropout import BankDropout, bank_dropout


def test_parameter_count_matches_the_original():
    model = DavidNet()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 6_573_120


def test_logits_shape_and_scale():
    model = DavidNet(c=8).eval()
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    unscaled = model.linear(
        model.pool(model.blk3(model.blk2(model.blk1(model.prep(x))))).flatten(1)
    )
    torch.testing.assert_close(out, unscaled * 0.125)


def test_init_is_uniform_within_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    model = DavidNet(c=16)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            bound = 1 / math.sqrt(m.weight[0].numel())
            w = m.weight.detach()
            assert w.abs().max() <= bound
            # Uniform on ±bound has std bound/sqrt(3); a normal init or a wrong fan would not.
            assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound
            assert m.bias is None


def test_batchnorm_matches_keras_momentum_and_eps():
    bn = ConvBN(3, 4).bn
    assert bn.momentum == pytest.approx(0.1) and bn.eps == pytest.approx(1e-5)


def test_residual_blocks_only_where_the_recipe_has_them():
    model = DavidNet(c=8)
    assert model.blk1.res is not None and model.blk2.res is None and model.blk3.res is not None


def test_bank_dropout_keeps_bernoulli_statistics_and_scales():
    torch.manual_seed(0)
    x = torch.ones(64, 32, 16, 16)
    y = bank_dropout(x, 0.05)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.95) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.95))
    # A second call draws another mask.
    assert (bank_dropout(x, 0.05) != y).any()


def test_bank_dropout_gradient_uses_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(8, 4, 8, 8, requires_grad=True)
    y = bank_dropout(x, 0.3)
    y.sum().backward()
    mask = (y / x).detach()
    torch.testing.assert_close(x.grad, mask)


def test_bank_dropout_follows_channels_last_layout():
    torch.manual_seed(2)
    x = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last)
    state = torch.get_rng_state()
    y = bank_dropout(x, 0.5)
    torch.set_rng_state(state)
    y2 = bank_dropout(x.contiguous(), 0.5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    # Same offset, other layout: the same number of elements dropped, in other places.
    assert (y == 0).sum() == (y2 == 0).sum()


def test_dropout_is_identity_in_eval_and_exact_mode_uses_torch():
    d = BankDropout(0.5).eval()
    x = torch.randn(10, 10)
    assert torch.equal(d(x), x)
    d_exact = BankDropout(0.5, exact=True).train()
    torch.manual_seed(3)
    a = d_exact(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, torch.nn.functional.dropout(x, 0.5, True))
