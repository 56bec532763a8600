"""The per-epoch table keeps small rates' digits and shows each optimizer group's own lr."""

from types import SimpleNamespace

from dawntrain.train.callbacks import format_duration, optimizer_rates
from dawntrain.train.log import header, row


def test_rates_keep_three_significant_digits_and_optional_columns_show_when_present():
    fast = {"epoch": 1, "lr": 8.5e-4, "step_lr": 8.5e-4, "muon_lr": 0.17, "bias_lr": 0.0544}
    fast.update(train_loss=1.2, train_acc=0.5, val_loss=None, val_acc=None, images_per_s=812.4)
    assert header(fast).split()[:5] == ["epoch", "lr", "step_lr", "muon_lr", "bias_lr"]
    cells = row(fast).split()
    assert cells[:5] == ["1", "0.00085", "0.00085", "0.17", "0.0544"] and "812" in cells
    davidnet = {"epoch": 2, "lr": 0.4, "step_lr": 0.4 / 512, "train_loss": 1.0}
    assert header(davidnet).split()[:3] == ["epoch", "lr", "step_lr"]
    assert "muon_lr" not in header(davidnet) and row(davidnet).split()[2] == "0.000781"


def test_optimizer_rates_name_the_groups():
    groups = [{"name": "weights", "lr": 8.5e-4}, {"name": "filters", "lr": 0.17}]
    groups += [{"name": "norm", "lr": 0.0544}, {"name": "whiten_bias", "lr": 0.0544}]
    rates = optimizer_rates(SimpleNamespace(param_groups=groups))
    assert rates == {"lr": 8.5e-4, "muon_lr": 0.17, "bias_lr": 0.0544}
    same = [{"name": "weights", "lr": 1e-3}, {"name": "norm", "lr": 1e-3}]
    assert optimizer_rates(SimpleNamespace(param_groups=same)) == {"lr": 1e-3}
    assert [format_duration(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]
