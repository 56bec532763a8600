"""A frozen parameter group (the fast net's whitening bias after whiten_bias_epochs) stops its
gradients too, and training goes on exactly as when it only had lr 0."""

import pytest
import torch

from dawntrain.config import resolve
from dawntrain.engine import build as build_module
from dawntrain.engine import optim
from dawntrain.engine.build import build
from dawntrain.engine.step import StepStats
from synthetic import tiny_dataset


def trained(drop: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list]:
    def freeze(optimizer, name, drop_grads=False):
        optim.freeze_group(optimizer, name, drop_grads=drop and drop_grads)

    monkeypatch.setattr(build_module, "freeze_group", freeze)
    torch.manual_seed(0)  # the initial weights, as fit() seeds them
    sets = ["width=4", "batch_size=16", "epochs=3", "whiten_bias_epochs=1", "device='cpu'"]
    run = build(resolve("fast", sets=sets), tiny_dataset(n=32, size=16, n_test=16))
    bias_grads = []
    stats = StepStats.zeros(run.device)
    for epoch in range(3):
        run.start_epoch(epoch)
        for step, (x, y) in enumerate(run.batches(epoch)):
            run.step(stats, x, y, epoch, step)
            bias_grads.append(run.model.whiten.bias.grad is not None)
    return {k: v.clone() for k, v in run.model.state_dict().items()}, bias_grads


def test_the_frozen_whitening_bias_gets_no_gradient_and_training_is_unchanged(monkeypatch):
    dropped, grads_dropped = trained(True, monkeypatch)
    kept, grads_kept = trained(False, monkeypatch)
    # 2 steps an epoch: the bias trains in epoch 0 only, then has no gradient to compute.
    assert grads_dropped == [True, True, False, False, False, False]
    assert all(grads_kept)
    assert dropped.keys() == kept.keys()
    for name in kept:
        assert torch.equal(dropped[name], kept[name]), name


def test_freeze_group_zeroes_the_lr_and_only_drops_gradients_when_asked():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(
        [{"params": [model.weight], "name": "w"}, {"params": [model.bias], "name": "b"}], lr=0.1
    )
    optim.freeze_group(opt, "b")
    assert model.bias.requires_grad and opt.param_groups[1]["lr_scale"] == 0.0
    optim.freeze_group(opt, "b", drop_grads=True)
    assert not model.bias.requires_grad and model.weight.requires_grad
    optim.set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.0]


def test_a_fractional_whiten_bias_epochs_freezes_inside_the_epoch():
    sets = ["width=4", "batch_size=8", "epochs=2", "whiten_bias_epochs=0.5", "device='cpu'"]
    run = build(resolve("fast", sets=sets), tiny_dataset(n=32, size=16, n_test=16))
    stats, grads, lrs = StepStats.zeros(run.device), [], []
    for epoch in range(2):
        run.start_epoch(epoch)
        for step, (x, y) in enumerate(run.batches(epoch)):
            run.step(stats, x, y, epoch, step)
            grads.append(run.model.whiten.bias.grad is not None)
            lrs.append(
                next(g["lr"] for g in run.optimizer.param_groups if g["name"] == "whiten_bias")
            )
    # 4 steps an epoch: the bias trains for the first 2 (half an epoch), then never again.
    assert grads == [True, True, False, False, False, False, False, False]
    assert lrs[1] > 0 and lrs[2:] == [0.0] * 6


def test_whiten_bias_decay_takes_its_lr_linearly_to_zero_in_model_and_proxy():
    """hiverge's whitening bias: its lr a falling share of the other biases' (1 - t / 1 epoch)
    until it freezes; the data filter's proxy follows the same schedule."""
    sets = ["width=4", "batch_size=8", "epochs=2", "whiten_bias_epochs=1", "device='cpu'"]
    sets += ["whiten_bias_decay=true", "filter_keep=0.5", "filter_widths=[4, 4, 4]"]
    sets += ["filter_train_every=1"]  # the proxy sets its lr on the steps it trains
    run = build(resolve("fast", sets=sets), tiny_dataset(n=32, size=16, n_test=16))
    stats, ratios = StepStats.zeros(run.device), []
    for epoch in range(2):
        run.start_epoch(epoch)
        for step, (x, y) in enumerate(run.batches(epoch)):
            run.step(stats, x, y, epoch, step)
            for optimizer in (run.optimizer, run.filter.optimizer):
                lr = {g["name"]: g["lr"] for g in optimizer.param_groups if "name" in g}
                ratios.append(lr["whiten_bias"] / lr["norm"])
    # 4 steps an epoch, two optimizers a step.
    expected = [r for r in (1.0, 0.75, 0.5, 0.25, 0, 0, 0, 0) for _ in range(2)]
    assert ratios == pytest.approx(expected)
