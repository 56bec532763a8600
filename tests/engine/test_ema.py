"""The EMA of the weights is the average a float64 hand computation gives over the weights'
trajectory, BatchNorm statistics included, and never changes the training it watches."""

import pytest
import torch

from dawntrain.config import resolve
from dawntrain.engine.build import build
from dawntrain.engine.step import StepStats
from synthetic import tiny_dataset

STEPS = 6  # two epochs of 3 steps


def make_run(**sets):
    items = ["width=4", "batch_size=32", "precision=fp32", "device=cpu", "dropout=0.0"]
    items += [f"{k}={str(v).lower()}" for k, v in sets.items()]
    torch.manual_seed(0)
    return build(resolve("davidnet", sets=items), tiny_dataset())


def float64_state(model):
    return {k: v.detach().double().clone() for k, v in model.state_dict().items()}


def trajectory(run):
    """The model's float64 state after each optimizer step, the initial one first."""
    states = [float64_state(run.model)]
    stats = StepStats.zeros(run.device)
    for epoch in range(STEPS // run.steps):
        run.start_epoch(epoch)
        for step, (x, y) in enumerate(run.batches(epoch)):
            run.step(stats, x, y, epoch, step)
            states.append(float64_state(run.model))
    return states


def reference_ema(states, decay, every, warmup):
    """ema ← d·ema + (1 − d)·w after every `every`-th step n, d = decay or, with warmup,
    min(decay, (1 + u) / (10 + u)) at the u-th update; integer buffers follow the weights."""
    ema = dict(states[0])
    for n, state in enumerate(states[1:], start=1):
        if n % every:
            continue
        u = n // every
        d = min(decay, (1 + u) / (10 + u)) if warmup else decay
        for k, w in state.items():
            counter = k.endswith("num_batches_tracked")  # float64 here, an integer in the model
            ema[k] = w.clone() if counter else d * ema[k] + (1 - d) * w
    return ema


@pytest.mark.parametrize("decay,every,warmup", [(0.7, 1, False), (0.9, 2, True)])
def test_the_ema_is_the_float64_average_of_the_weights_trajectory(decay, every, warmup):
    run = make_run(ema=decay, ema_every=every, ema_warmup=warmup)
    states = trajectory(run)
    expected = reference_ema(states, decay, every, warmup)
    got = run.ema.state_dict()
    assert got.keys() == expected.keys()
    assert any("running_mean" in k for k in got)  # BatchNorm statistics are averaged too
    for k, v in got.items():
        torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6, msg=k)
    # Not trivially the weights themselves or the initial ones.
    w = "prep.conv.weight"
    assert not torch.allclose(got[w].double(), states[-1][w])
    assert not torch.allclose(got[w].double(), states[0][w])


def test_the_ema_does_not_change_training():
    plain, averaged = make_run(), make_run(ema=0.9)
    assert plain.ema is None and "ema" not in plain.state_dict()
    for a, b in zip(trajectory(plain)[-1].values(), trajectory(averaged)[-1].values()):
        assert torch.equal(a, b)
    assert "ema" in averaged.state_dict()


def test_the_ema_averages_what_lookahead_leaves():
    run = make_run(ema=0.8, lookahead=True)
    states = trajectory(run)  # weights after lookahead's pull, which every 5th step makes
    expected = reference_ema(states, 0.8, 1, True)
    for k, v in run.ema.state_dict().items():
        torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6, msg=k)
