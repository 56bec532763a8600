"""Self-distillation (config.self_distill): targets mixed with the model's past predictions."""

import pytest
import torch
import torch.nn.functional as F

from dawntrain.config import resolve
from dawntrain.engine.build import build
from dawntrain.engine.self_distill import PastPredictions
from dawntrain.engine.step import StepStats, loss_fn
from dawntrain.errors import ConfigError
from dawntrain.runtime.distributed import World
from synthetic import tiny_dataset


def table(alpha=0.5, n=6, k=4):
    return PastPredictions(alpha, n, k, World.single("cpu"), batch=n)


def test_unseen_images_get_their_one_hot_label_and_seen_ones_the_mix():
    past = table(alpha=0.8)
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    past.observe(torch.tensor([2, 4]), probs.log())  # softmax of log-probabilities: probs
    y = torch.tensor([0, 1, 3])
    soft = past.targets(torch.tensor([2, 3, 4]), y, progress=0.5)
    mix = 0.8 * 0.5
    expected = torch.stack(
        [(1 - mix) * F.one_hot(y[0], 4) + mix * probs[0], F.one_hot(y[1], 4).float(),
         (1 - mix) * F.one_hot(y[2], 4) + mix * probs[1]]
    )  # fmt: skip
    torch.testing.assert_close(soft, expected)
    torch.testing.assert_close(soft.sum(1), torch.ones(3))


def test_the_mix_starts_at_zero_and_rises_to_alpha():
    past = table(alpha=0.6)
    past.observe(torch.tensor([0]), torch.tensor([[0.0, 0.0, 0.0, 0.0]]))
    y = torch.tensor([1])
    assert torch.equal(past.targets(torch.tensor([0]), y, 0.0), F.one_hot(y, 4).float())
    torch.testing.assert_close(
        past.targets(torch.tensor([0]), y, 1.0), torch.tensor([[0.15, 0.55, 0.15, 0.15]])
    )


def test_a_non_finite_prediction_keeps_the_old_one():
    past = table()
    past.observe(torch.tensor([1]), torch.zeros(1, 4))
    past.observe(torch.tensor([1, 2]), torch.tensor([[float("nan"), 0, 0, 0], [0.0, 0, 0, 0]]))
    torch.testing.assert_close(past.table[1], torch.full((4,), 0.25))
    torch.testing.assert_close(past.table[2], torch.full((4,), 0.25))
    assert past.table[0].isnan().all()


def test_the_soft_target_loss_with_smoothing_matches_a_float64_reference():
    logits = torch.randn(5, 4, dtype=torch.float64)
    soft = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    reference = -((0.8 * soft + 0.2 / 4) * logits.log_softmax(1)).sum()
    torch.testing.assert_close(loss_fn(torch.nn.Identity(), logits, soft, 0.2), reference)


def test_a_run_records_what_it_trained_on_and_counts_accuracy_against_the_labels():
    sets = ["width=4", "batch_size=16", "epochs=2", "device='cpu'", "precision='fp32'"]
    run = build(resolve("fast", sets=[*sets, "self_distill=0.5"]), tiny_dataset())
    stats = StepStats.zeros(run.device)
    x, y = next(iter(run.batches(0)))
    run.step(stats, x, y, 0, 0)
    index = run.dataset_index(0, 0)
    recorded = run.distill.table[index]
    assert recorded.isfinite().all() and torch.allclose(recorded.sum(1), torch.ones(len(y)))
    assert run.distill.table.isnan().any(1).sum() == len(run.train_y) - len(y)
    assert stats.read()["examples"] == len(y)


def test_without_self_distill_the_run_keeps_no_table():
    run = build(resolve("fast", sets=["width=4", "batch_size=16", "device='cpu'"]), tiny_dataset())
    assert run.distill is None


def test_self_distill_outside_zero_to_one_is_refused():
    with pytest.raises(ConfigError, match="self_distill"):
        resolve("fast", sets=["self_distill=1.5"])
