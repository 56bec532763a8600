"""Analytic FLOP counts against hand-computed numbers for small nets and DavidNet."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dawntrain.analysis.flop_count import (
    elementwise_flops,
    flops,
    flops_breakdown,
    training_flops_per_image,
)
from dawntrain.errors import ConfigError


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def small_net() -> nn.Sequential:
    # Non-square 6x10 input so a swapped H/W or a wrong output size changes the count.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # → 8x6x10
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # → 8x3x5
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),  # → 16x2x3
        Residual(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(16, 5),
    )


CONV1 = 2 * 9 * 3 * 8 * (6 * 10)
CONV2 = 2 * 9 * (8 // 2) * 16 * (2 * 3)
RES_CONV = 2 * 1 * 16 * 16 * (2 * 3)
LINEAR = 2 * 16 * 5
BN, RELU, MAXPOOL = 2 * 8 * 60, 8 * 60, 4 * (8 * 3 * 5)
RES_ADD, AVGPOOL = 16 * 6, 16 * 6


def test_small_net_matches_hand_count():
    net = small_net()
    assert flops(net, (3, 6, 10)) == CONV1 + CONV2 + RES_CONV + LINEAR
    assert elementwise_flops(net, (3, 6, 10)) == BN + RELU + MAXPOOL + RES_ADD + AVGPOOL
    assert training_flops_per_image(net, (3, 6, 10)) == 3 * (CONV1 + CONV2 + RES_CONV + LINEAR)


def test_breakdown_names_modules_and_separates_elementwise():
    net = small_net()
    assert flops_breakdown(net, (3, 6, 10)) == {
        "0": CONV1,
        "1": BN,
        "2": RELU,
        "3": MAXPOOL,
        "4": CONV2,
        "5.conv": RES_CONV,
        "5": RES_ADD,  # the residual add, charged to the module whose forward ran it
        "6": AVGPOOL,
        "9": LINEAR,
    }
    assert flops_breakdown(net, (3, 6, 10), include_elementwise=False) == {
        "0": CONV1,
        "4": CONV2,
        "5.conv": RES_CONV,
        "9": LINEAR,
    }


def test_transposed_conv_and_linear_on_extra_dims():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)  # 4x5x5 → 6x11x11
            self.proj = nn.Linear(11, 7)  # applied to the last dim of (1, 6, 11, 11)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(self.up(x))

    # Each input element scatters a 3x3 kernel into the 3 output channels of its group.
    assert flops(Net(), (4, 5, 5)) == 2 * 9 * 3 * (4 * 25) + 2 * 11 * 7 * (6 * 11)


def test_shared_module_is_counted_per_call():
    conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
    twice = nn.Sequential(conv, conv)
    assert flops(twice, (2, 4, 4)) == 2 * (2 * 9 * 2 * 2 * 16)
    assert flops_breakdown(twice, (2, 4, 4)) == {"0": 2 * (2 * 9 * 2 * 2 * 16)}


def test_restores_training_modes_and_counts_on_meta_device():
    net = small_net().train()
    net[1].eval()  # a mixed state must come back exactly
    before = [m.training for m in net.modules()]
    flops(net, (3, 6, 10))
    assert [m.training for m in net.modules()] == before
    assert before.count(False) == 1
    with torch.device("meta"):
        meta_net = small_net()
    assert flops(meta_net, (3, 6, 10)) == CONV1 + CONV2 + RES_CONV + LINEAR


@pytest.mark.parametrize("shape", [(3, 32), (3, 0, 32), (3, 32.0, 32)])
def test_bad_input_shape_is_a_config_error(shape):
    with pytest.raises(ConfigError, match="input_shape"):
        flops(small_net(), shape)


def test_davidnet_is_about_076_gflops():
    davidnet = pytest.importorskip("dawntrain.models.davidnet")
    net = davidnet.DavidNet(c=64, weight=0.125, dropout=0.05)
    # prep 3→64 @32², layer1 64→128 @32², res1 2×128 @16², layer2 128→256 @16²,
    # layer3 256→512 @8², res3 2×512 @4², linear 512→10.
    conv3x3_macs = 9 * (
        3 * 64 * 32**2
        + 64 * 128 * 32**2
        + 2 * 128 * 128 * 16**2
        + 128 * 256 * 16**2
        + 256 * 512 * 8**2
        + 2 * 512 * 512 * 4**2
    )
    hand = 2 * conv3x3_macs + 2 * 512 * 10
    forward = flops(net, (3, 32, 32))
    assert forward == hand
    assert forward == pytest.approx(0.76e9, rel=0.02)
    assert training_flops_per_image(net, (3, 32, 32)) == pytest.approx(2.28e9, rel=0.02)


def test_the_documented_entry_point_is_the_function():
    import dawntrain.analysis
    from dawntrain.models import build_model

    assert dawntrain.analysis.flops(build_model("davidnet", 10), (3, 32, 32)) == 758_523_904


@pytest.mark.parametrize(
    "preset, side, classes",
    [("davidnet", 32, 10), ("fast", 32, 10), ("tiny-imagenet-resnet", 64, 200)],
)
def test_headline_count_equals_torchs_flop_counter(preset, side, classes):
    # The public convention (multiply-add x2 of convolutions and linear layers) is what
    # torch.utils.flop_counter counts for these models: nothing elementwise is added on top.
    from torch.utils.flop_counter import FlopCounterMode

    from dawntrain.config import resolve
    from dawntrain.models import model_for

    model = model_for(resolve(preset, sets=["width=16"]), classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    assert flops(model, (3, side, side)) == counter.get_total_flops()


def test_run_flops_counts_training_x3_and_every_evaluation_pass():
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.config import resolve

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    f = 2 * 12 * 5  # forward FLOPs per image
    config = resolve("fast", sets=["epochs=4", "eval_every=2", "tta_level=2"])
    got = run_flops(model, config, (3, 2, 2), n_train=100, n_val=30, n_test=20)
    assert got["train"] == 3 * f * 100 * 4
    assert got["validation"] == f * 30 * 2  # after epochs 2 and 4
    assert got["test"] == f * 20 * 6  # 6 views at TTA level 2, the first one the plain figures
    assert got["sanity_check"] == f * 30
    assert got["total"] == sum(v for k, v in got.items() if k != "total")
    # Validation on the test set and no TTA or lookahead: no second test pass.
    plain = resolve("davidnet", sets=["epochs=2", "sanity_check=false"])
    got = run_flops(model, plain, (3, 2, 2), n_train=100, n_val=30)
    assert got["test"] == 0 and got["sanity_check"] == 0
    # Validation on the test set with TTA: the last validation is the test's plain view.
    got = run_flops(model, config, (3, 2, 2), n_train=100, n_val=30)
    assert got["validation"] == f * 30 and got["test"] == f * 30 * 6
    # An EMA of the weights is evaluated beside them: every evaluation twice, training once.
    averaged = run_flops(model, dataclasses.replace(config, ema=0.99), (3, 2, 2), 100, 30)
    assert averaged["validation"] == 2 * got["validation"] and averaged["test"] == 2 * got["test"]
    assert averaged["train"] == got["train"] and averaged["sanity_check"] == got["sanity_check"]
    # Each test pass takes the views for its own share of the images (TTA only where unsure).
    unsure = dataclasses.replace(config, ema=0.99, tta_below=0.6)
    own = run_flops(model, unsure, (3, 2, 2), 100, 30, tta_fraction=0.5, ema_tta_fraction=0.1)
    assert own["test"] == f * 30 * (1 + 0.5 * 5) + f * 30 * (1 + 0.1 * 5)
    same = run_flops(model, unsure, (3, 2, 2), 100, 30, tta_fraction=0.5)
    assert same["test"] == 2 * f * 30 * (1 + 0.5 * 5)


def test_run_flops_counts_each_epoch_at_its_progressive_size():
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.config import resolve
    from dawntrain.models.fast import FastNet

    model = FastNet(widths=(8, 16, 16))
    config = resolve("fast", sets=["epochs=3", "train_sizes=[16, 24]", "sanity_check=false"])
    got = run_flops(model, config, (3, 32, 32), n_train=10, n_val=5)
    per_epoch = [flops(model, (3, s, s)) for s in (16, 24, 32)]
    assert per_epoch[0] < per_epoch[1] < per_epoch[2]
    assert got["train"] == 3 * 10 * sum(per_epoch)
    # At full size; the last of 3 validations is the final test's plain view (TTA on).
    assert got["validation"] == 5 * 2 * per_epoch[2]


def test_run_flops_with_data_filtering_counts_the_kept_share_and_the_proxys_passes():
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.config import resolve
    from dawntrain.engine.data_filter import proxy_model
    from dawntrain.models.fast import FastNet

    model = FastNet(widths=(8, 16, 16), num_classes=5)
    sets = ["epochs=3", "train_sizes=[16]", "sanity_check=false"]
    plain = run_flops(model, resolve("fast", sets=sets), (3, 32, 32), n_train=10, n_val=5)
    filtered = resolve("fast", sets=[*sets, "filter_keep=0.25", "filter_train_every=2"])
    got = run_flops(model, filtered, (3, 32, 32), n_train=10, n_val=5)
    assert got["train"] == round(plain["train"] / 4)
    proxy = proxy_model(filtered, 5)
    proxy_forward = sum(flops(proxy, (3, s, s)) for s in (16, 32, 32))
    # Every image scored once; every second step a backward (2x) through the whole batch.
    assert got["filter"] == proxy_forward * 10 * 2
    assert got["total"] == plain["total"] - plain["train"] + got["train"] + got["filter"]
    assert "filter" not in plain
    # A proxy at filter_side 24 sees the 16x16 epoch as it is and the 32x32 ones at 24.
    at_24 = dataclasses.replace(filtered, filter_side=24)
    smaller = run_flops(model, at_24, (3, 32, 32), n_train=10, n_val=5)
    proxy_forward = sum(flops(proxy, (3, s, s)) for s in (16, 24, 24))
    assert smaller["filter"] == proxy_forward * 10 * 2 and smaller["train"] == got["train"]


def test_run_flops_under_a_kept_share_schedule_weights_each_epoch_by_its_mean_share():
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.config import resolve
    from dawntrain.models.fast import FastNet

    model = FastNet(widths=(8, 16, 16), num_classes=5)
    sets = ["epochs=4", "train_sizes=[16, 24]", "sanity_check=false", "filter_keep=0.8"]
    got = run_flops(model, resolve("fast", sets=[*sets, "filter_keep_end=0.4"]), (3, 32, 32), 10, 5)
    per_epoch = [flops(model, (3, s, s)) for s in (16, 24, 32, 32)]
    # Linear from 0.8 to 0.4 over the run: epoch e's mean share is the one at its middle.
    shares = [0.8 - 0.4 * (e + 0.5) / 4 for e in range(4)]
    assert got["train"] == round(3 * 10 * sum(f * k for f, k in zip(per_epoch, shares)))
    constant = run_flops(model, resolve("fast", sets=sets), (3, 32, 32), 10, 5)
    assert constant["filter"] == got["filter"]
