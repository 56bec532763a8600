import pytest
import torch
import torch.nn.functional as F

from dawntrain.models import build_model
from dawntrain.models.fast import FastNet, conv3x3, patch_covariance


def correlated_images(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated, like photos."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 36, 36, generator=g)
    x = F.avg_pool2d(x, 5, stride=1)  # spatial correlation
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    return torch.einsum("dc,nchw->ndhw", mix, x)  # channel correlation


def straight_patch_covariance(images: torch.Tensor, k: int) -> torch.Tensor:
    """The reference for patch_covariance: every k x k patch in one float64 matrix."""
    patches = images.double().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * k * k)
    return patches.T @ patches / len(patches)


def test_shapes_through_the_groups():
    model = FastNet(widths=(8, 16, 16)).eval()
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    h = model.act(model.whiten(x))
    for group in model.groups:
        h = group(h)
        shapes.append(tuple(h.shape))
    # ceil_mode pooling: 31 → 16 → 8 → 4 (see ConvGroup).
    assert shapes == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4)]
    assert model(x).shape == (2, 10)


def test_floor_pooling_gives_airbenchs_maps_and_flops():
    """ceil_pool=False: 31 → 15 → 7 → 3, the maps of airbench94: six 3x3 convs at those sides,
    the 2x2 whitening conv (12 inputs, 24 outputs at 31x31) and the head, 2 FLOPs a multiply-add."""
    from dawntrain.analysis.flop_count import flops

    model = FastNet(ceil_pool=False).eval()
    h = model.act(model.whiten(torch.randn(1, 3, 32, 32)))
    sides = []
    for group in model.groups:
        h = group(h)
        sides.append(h.shape[-1])
    assert sides == [15, 7, 3]
    convs = 2 * 9 * (24 * 64 * 31**2 + 64 * 64 * 15**2 + 64 * 256 * 15**2 + 2 * 256 * 256 * 7**2)
    convs += 2 * 9 * 256 * 256 * 3**2
    whiten, head = 2 * 12 * 24 * 31**2, 2 * 256 * 10
    assert flops(model, (3, 32, 32)) == convs + whiten + head
    ratio = flops(model, (3, 32, 32)) / flops(FastNet(), (3, 32, 32))
    assert ratio == pytest.approx(0.81, abs=0.01)


def test_whitening_filters_decorrelate_the_training_patches():
    images = correlated_images()
    model = FastNet(widths=(8, 16, 16), whiten_eps=0.0)
    model.init_from_data(images)
    with torch.no_grad():
        out = F.conv2d(images.double(), model.whiten.weight.double())  # no bias
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the + filters; the rest are −
    covariance = half.T @ half / len(half)
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])
    assert not model.whiten.weight.requires_grad


def test_whiten_eps_shrinks_each_patch_direction_by_its_eigenvalue_over_that_plus_eps():
    """With eps the whitened patches' variance along eigendirection i is l_i / (l_i + eps): the
    faint directions (l_i << eps) are damped, the strong ones still come out at about 1."""
    images = correlated_images()
    eps = 0.05
    model = FastNet(widths=(8, 16, 16), whiten_eps=eps)
    model.init_from_data(images)
    with torch.no_grad():
        out = F.conv2d(images.double(), model.whiten.weight.double())[:, :12]
    variances = torch.linalg.eigvalsh(torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1)))
    eigenvalues = torch.linalg.eigvalsh(straight_patch_covariance(images, 2))
    expected = (eigenvalues / (eigenvalues + eps)).sort().values
    torch.testing.assert_close(variances, expected, atol=2e-3, rtol=0)
    assert expected[0] < 0.5 < expected[-1]  # the images have directions on both sides of eps


def test_dirac_init_passes_the_input_through():
    conv = conv3x3(8, 16)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(conv(x)[:, :8], x)


def test_batchnorm_scale_is_frozen_and_shift_trains():
    model = FastNet(widths=(8, 16, 16))
    norm = model.groups[0].norm1
    assert not norm.weight.requires_grad and norm.bias.requires_grad


@pytest.mark.parametrize(
    "trick, check",
    [
        ("whiten", lambda m: m.whiten.weight.requires_grad),
        ("frozen_bn_scale", lambda m: m.groups[0].norm1.weight.requires_grad),
        (
            "dirac",
            lambda m: not torch.equal(m.groups[1].conv1.weight[:, :, 1, 1][:8, :8], torch.eye(8)),
        ),
    ],
)
def test_each_trick_switches_off(trick, check):
    torch.manual_seed(0)
    assert not check(build_model("fast", 10, 8))
    torch.manual_seed(0)
    assert check(build_model("fast", 10, 8, **{trick: False}))


def test_init_from_data_is_a_no_op_without_whitening():
    model = FastNet(widths=(8, 16, 16), whiten=False)
    before = model.whiten.weight.clone()
    model.init_from_data(correlated_images(16))
    assert torch.equal(model.whiten.weight, before)


def test_state_dict_keys_do_not_depend_on_the_tricks():
    # A checkpoint of an ablation run loads into the default model (eval rebuilds the default).
    a = FastNet(widths=(8, 16, 16)).state_dict()
    b = FastNet(widths=(8, 16, 16), whiten=False, dirac=False, frozen_bn_scale=False).state_dict()
    assert a.keys() == b.keys()


def test_width_factor_sets_the_later_groups_widths():
    """fast: airbench94's 64/256/256 (factor 4); fast-wide: airbench95's 128/384/384 (factor 3)."""
    from dawntrain.config import resolve
    from dawntrain.models import model_for

    for preset, widths in (("fast", [64, 256, 256]), ("fast-wide", [128, 384, 384])):
        model = model_for(resolve(preset), 10)
        assert [g.conv1.out_channels for g in model.groups] == widths, preset


def test_silu_replaces_gelu_in_the_groups_only():
    torch.manual_seed(0)
    gelu = build_model("fast", 10, 8)
    torch.manual_seed(0)
    silu = build_model("fast", 10, 8, activation="silu")
    assert isinstance(silu.act, torch.nn.GELU)  # after the whitening, as hiverge keeps it
    assert all(isinstance(g.act, torch.nn.SiLU) for g in silu.groups)
    assert all(isinstance(g.act, torch.nn.GELU) for g in gelu.groups)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(gelu(x), silu(x))
    silu.load_state_dict(gelu.state_dict())  # the same parameters: a checkpoint loads either way


def test_patch_covariance_in_chunks_is_the_straightforward_one():
    """Chunks that do not divide the images, against all patches in one float64 matrix."""
    images = correlated_images(n=37)
    expected = straight_patch_covariance(images, 2)
    torch.testing.assert_close(patch_covariance(images, 2, chunk=10), expected, rtol=1e-12, atol=0)


def test_the_configs_whiten_eps_reaches_the_model_and_the_proxy():
    from dawntrain.config import resolve
    from dawntrain.engine.data_filter import proxy_model
    from dawntrain.models import model_for

    config = resolve("fast-budget", sets=["whiten_eps=0.02", "filter_by=proxy"])
    assert model_for(config, 10).whiten_eps == proxy_model(config, 10).whiten_eps == 0.02
    assert model_for(resolve("fast-budget"), 10).whiten_eps == 5e-4  # airbench's


def test_ghost_batchnorm_normalises_each_part_as_batchnorm_does_and_averages_their_statistics():
    """Against one float64 BatchNorm per part: outputs, gradients, and the running statistics
    moved by the mean of the parts' (32 images at ghost 16: two parts)."""
    from dawntrain.models.fast import GhostBatchNorm

    torch.manual_seed(0)
    x = torch.randn(32, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    ghost = GhostBatchNorm(8, 16, momentum=0.4, eps=1e-5).double()
    torch.nn.init.normal_(ghost.bias)
    parts = [torch.nn.BatchNorm2d(8, momentum=0.4, eps=1e-5).double() for _ in range(2)]
    for bn in parts:
        bn.load_state_dict(ghost.state_dict())
    x_ref = x.detach().clone().requires_grad_(True)
    expected = torch.cat([bn(h) for bn, h in zip(parts, x_ref.split(16))])
    y = ghost(x)
    torch.testing.assert_close(y, expected)
    (y * expected.detach()).sum().backward()
    (expected * expected.detach()).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for name in ("running_mean", "running_var"):
        mean_of_parts = (getattr(parts[0], name) + getattr(parts[1], name)) / 2
        torch.testing.assert_close(getattr(ghost, name), mean_of_parts)


def test_ghost_batchnorm_is_batchnorm_when_off_too_small_or_evaluating():
    from dawntrain.models.fast import GhostBatchNorm

    torch.manual_seed(0)
    x = torch.randn(12, 4, 3, 3)
    for ghost, train in ((0, True), (8, True), (4, False)):  # 12 images < 2 ghost batches of 8
        bn, reference = GhostBatchNorm(4, ghost), torch.nn.BatchNorm2d(4)
        bn.train(train), reference.train(train)
        torch.testing.assert_close(bn(x), reference(x))
        torch.testing.assert_close(bn.running_var, reference.running_var)


def test_ghost_batchnorm_keeps_bf16_channels_last_and_splits_into_equal_parts():
    from dawntrain.models.fast import GhostBatchNorm

    x = torch.randn(30, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    bn = GhostBatchNorm(4, 8)  # 30 images: 3 parts of 10 (30 // 8 = 3 divides 30)
    y = bn(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    parts = y.float().view(3, 10, 4, 3, 3)
    torch.testing.assert_close(parts.mean((1, 3, 4)), torch.zeros(3, 4), atol=2e-2, rtol=0)


def test_the_configs_ghost_batch_reaches_every_batchnorm_of_the_model():
    from dawntrain.config import resolve
    from dawntrain.models import model_for
    from dawntrain.models.fast import GhostBatchNorm

    model = model_for(resolve("fast-budget", sets=["ghost_batch=64"]), 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(isinstance(m, GhostBatchNorm) and m.ghost == 64 for m in norms)
