"""Data filtering (config.filter_keep): a proxy picks the hardest share of each batch."""

import copy

import pytest
import torch
import torch.nn.functional as F

from dawntrain.config import resolve
from dawntrain.engine.build import build
from dawntrain.engine.data_filter import in_full_epochs, per_class_keep, ranked_keep
from dawntrain.engine.step import StepStats
from dawntrain.errors import ConfigError
from dawntrain.train.loop import describe_run
from synthetic import tiny_dataset


def filtered_config(*sets: str):
    base = ["width=4", "batch_size=16", "epochs=2", "device='cpu'", "precision='fp32'"]
    return resolve("fast", sets=[*base, "filter_keep=0.25", *sets])


def first_batch(run):
    x, y = next(iter(run.batches(0)))
    return run.inputs(x, 0, 0), y


@pytest.mark.parametrize("score, ranking_smoothing", [("loss", 0.2), ("cross_entropy", 0.0)])
def test_pick_returns_the_share_with_the_highest_proxy_loss_in_batch_order(
    score, ranking_smoothing
):
    torch.manual_seed(0)
    run = build(filtered_config("label_smoothing=0.2", f"filter_score='{score}'"), tiny_dataset())
    x, y = first_batch(run)
    reference = copy.deepcopy(run.filter.model).train()
    losses = F.cross_entropy(reference(x), y, reduction="none", label_smoothing=ranking_smoothing)
    keep = run.filter.pick(x, y, lr=0.1, global_step=1)  # not a step on which the proxy learns
    assert keep.tolist() == sorted(losses.argsort(descending=True)[:4].tolist())


def test_filter_skip_leaves_out_the_very_hardest_and_keeps_the_next_share():
    torch.manual_seed(0)
    run = build(filtered_config("filter_skip=0.125"), tiny_dataset())  # 2 of 16, then 4
    x, y = first_batch(run)
    reference = copy.deepcopy(run.filter.model).train()
    ranked = F.cross_entropy(reference(x), y, reduction="none").argsort(descending=True)
    keep = run.filter.pick(x, y, lr=0.1, global_step=1)
    assert keep.tolist() == sorted(ranked[2:6].tolist())


def test_filter_random_keeps_the_hardest_part_and_draws_the_rest_from_what_it_leaves():
    torch.manual_seed(0)
    run = build(filtered_config("filter_keep=0.5", "filter_random=0.25"), tiny_dataset())
    x, y = first_batch(run)
    reference = copy.deepcopy(run.filter.model).train()
    ranked = F.cross_entropy(reference(x), y, reduction="none").argsort(descending=True)
    hardest = set(ranked[:4].tolist())  # 8 of 16 kept: the hardest 4, then 4 at random
    drawn = []
    for seed in range(6):  # the step seeds the generator: the same draw for the same seed
        torch.manual_seed(seed)
        keep = run.filter.pick(x, y, lr=0.1, global_step=1).tolist()
        torch.manual_seed(seed)
        assert run.filter.pick(x, y, lr=0.1, global_step=1).tolist() == keep
        assert keep == sorted(set(keep)) and len(keep) == 8 and hardest <= set(keep)
        drawn.append(tuple(sorted(set(keep) - hardest)))
    assert len(set(drawn)) > 1  # ... and others for other seeds


def per_class_reference(score: torch.Tensor, y: torch.Tensor, count: int) -> list[int]:
    """The kept set by a plain loop: images placed by (rank in class + 0.5) / class size."""
    places = []
    for label in y.unique().tolist():
        members = [i for i in range(len(y)) if y[i] == label]
        members.sort(key=lambda i: -score[i].item())
        places += [((rank + 0.5) / len(members), i) for rank, i in enumerate(members)]
    return sorted(i for _, i in sorted(places)[:count])


def test_filter_per_class_keeps_the_hardest_same_share_of_every_class():
    torch.manual_seed(0)
    y = torch.cat([torch.zeros(40), torch.ones(20), torch.full((4,), 2)]).long()
    y = y[torch.randperm(len(y))]
    score = torch.rand(len(y)) + (y == 2).float()  # class 2 hardest: a batch ranking keeps it all
    keep = per_class_keep(score, y, 32)
    assert keep.tolist() == per_class_reference(score, y, 32)
    assert torch.bincount(y[keep]).tolist() == [20, 10, 2]
    whole_batch = ranked_keep(resolve("fast", sets=["filter_keep=0.5"]), score, 0.0)
    assert len(whole_batch) == 32 and torch.bincount(y[whole_batch])[2] == 4
    per_class = resolve("fast", sets=["filter_keep=0.5", "filter_per_class=true"])
    assert ranked_keep(per_class, score, 0.0, y).tolist() == keep.tolist()


def test_the_last_loss_filter_keeps_each_classs_hardest_with_filter_per_class():
    run = build(filtered_config("filter_by='last_loss'", "filter_per_class=true"), tiny_dataset())
    x, y = first_batch(run)
    index = run.dataset_index(0, 0)
    run.filter.last_loss[index] = torch.rand(16)
    keep = run.filter.pick(x, y, lr=0.1, global_step=0, index=index)
    assert keep.tolist() == per_class_reference(run.filter.last_loss[index], y, 4)


@pytest.mark.parametrize(
    "sets", [["filter_keep=0.5", "filter_skip=0.1"], ["filter_keep=0.5", "filter_random=0.1"], []]
)
def test_filter_per_class_without_a_kept_share_or_with_a_skipped_or_random_one_is_refused(sets):
    with pytest.raises(ConfigError, match="filter_per_class"):
        resolve("fast", sets=[*sets, "filter_per_class=true"])


@pytest.mark.parametrize("score, hardest", [("loss", 0), ("cross_entropy", 1)])
def test_only_plain_cross_entropy_ranks_an_unsure_wrong_answer_above_a_confident_right_one(
    score, hardest
):
    # Label smoothing charges a confident right answer for the near-zero probabilities it leaves
    # the other classes: at 0.2 that outweighs an unsure wrong answer's loss.
    run = build(
        filtered_config("label_smoothing=0.2", "filter_keep=0.5", f"filter_score='{score}'"),
        tiny_dataset(),
    )
    confident, unsure = torch.full((10,), -20.0), torch.zeros(10)
    confident[0], unsure[0] = 20.0, -0.5
    run.filter.forward = lambda x: torch.stack([confident, unsure])
    keep = run.filter.pick(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), 0.1, 1)
    assert keep.tolist() == [hardest]


def test_the_proxy_learns_on_every_nth_step_only():
    torch.manual_seed(0)
    run = build(filtered_config("filter_train_every=3"), tiny_dataset())
    x, y = first_batch(run)
    moved = []
    for step in range(7):
        before = [p.detach().clone() for p in run.filter.model.parameters()]
        run.filter.pick(x, y, lr=0.1, global_step=step)
        after = list(run.filter.model.parameters())
        moved.append(any(not torch.equal(a, b) for a, b in zip(after, before)))
    assert moved == [True, False, False, True, False, False, True]


def test_the_proxy_sees_the_batch_at_filter_side_and_the_model_at_its_own():
    torch.manual_seed(0)
    run = build(filtered_config("filter_side=12"), tiny_dataset())
    x, y = first_batch(run)
    reference = copy.deepcopy(run.filter.model).train()
    small = F.interpolate(x, size=(12, 12), mode="bilinear", antialias=True, align_corners=False)
    losses = F.cross_entropy(reference(small), y, reduction="none")
    proxy_sides, model_sides = [], []
    run.filter.model.register_forward_pre_hook(lambda m, a: proxy_sides.append(a[0].shape[-1]))
    run.model.register_forward_pre_hook(lambda m, a: model_sides.append(a[0].shape[-1]))
    keep = run.filter.pick(x, y, lr=0.1, global_step=1)
    assert keep.tolist() == sorted(losses.argsort(descending=True)[:4].tolist())
    run.step(StepStats.zeros(run.device), *next(iter(run.batches(0))), 0, 0)
    assert proxy_sides == [12, 12] and model_sides == [16]
    # A batch at the side or smaller (progressive resizing's early epochs) goes as it is.
    run.filter.pick(x[..., :8, :8].contiguous(), y, lr=0.1, global_step=1)
    assert proxy_sides[-1] == 8


def test_the_model_trains_on_the_kept_share_and_starts_from_the_same_weights():
    torch.manual_seed(0)
    plain = build(filtered_config("filter_keep=0"), tiny_dataset())
    torch.manual_seed(0)
    run = build(filtered_config(), tiny_dataset())
    assert plain.filter is None
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, run.model.state_dict()[k]), k
    seen = []

    def record(module, args):
        x = args[0]
        seen.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last)))

    run.model.register_forward_pre_hook(record)
    stats = StepStats.zeros(run.device)
    for step, (x, y) in enumerate(run.batches(0)):
        run.step(stats, x, y, 0, step)
    assert seen == [((4, 3, 16, 16), True)] * run.steps
    assert stats.sums[StepStats.EXAMPLES] == 4 * run.steps
    assert "filter" in run.state_dict()


def trained_batch_sizes(run, epochs: range) -> list[int]:
    """Trains `run` through `epochs`; the size of each batch the model trained on."""
    seen = []
    hook = run.model.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])))
    stats = StepStats.zeros(run.device)
    for epoch in epochs:
        for step, (x, y) in enumerate(run.batches(epoch)):
            run.step(stats, x, y, epoch, step)
    hook.remove()
    return seen


def test_the_kept_share_moves_linearly_to_filter_keep_end_over_the_run():
    torch.manual_seed(0)
    run = build(filtered_config("filter_keep=0.75", "filter_keep_end=0.25"), tiny_dataset())
    seen = trained_batch_sizes(run, range(2))
    total = 2 * run.steps
    assert seen == [round(16 * (0.75 - 0.5 * i / total)) for i in range(total)]
    assert seen[0] == 12 and seen[-1] < seen[0]
    # Without filter_keep_end the share stays filter_keep at every step.
    assert build(filtered_config(), tiny_dataset()).filter.keep_count(16, 0.9) == 4


def test_the_first_filter_full_epochs_train_on_every_image_and_rank_all_of_them():
    torch.manual_seed(0)
    sets = ("filter_by='last_loss_ratio'", "epochs=3", "filter_full_epochs=1")
    run = build(filtered_config(*sets), tiny_dataset())
    assert trained_batch_sizes(run, range(1)) == [16] * run.steps
    assert not run.filter.last_loss.isnan().any()  # every image has a loss to rank by
    assert trained_batch_sizes(run, range(1, 3)) == [4] * (2 * run.steps)
    assert "trains after 1 epoch on every image on the hardest 25% of each batch by its own" in (
        describe_run(run, {"device": "cpu"})
    )


def test_full_epochs_end_at_their_epochs_last_step_despite_rounding():
    # 23 epochs of 1 step: the 14th epoch's first step is at progress 13/23, and 13/23 * 23
    # rounds to just under 13.
    config = resolve("fast", sets=["epochs=23", "filter_keep=0.5", "filter_full_epochs=13"])
    assert (13 / 23) * 23 < 13
    assert in_full_epochs(config, 12 / 23) and not in_full_epochs(config, 13 / 23)


def test_filter_full_epochs_are_charged_as_unfiltered_epochs():
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.models.fast import FastNet

    model = FastNet(widths=(8, 16, 16), num_classes=5)
    sets = ["epochs=3", "sanity_check=false", "filter_keep=0.25", "filter_by='last_loss'"]

    def train(*more: str) -> float:
        return run_flops(model, resolve("fast", sets=[*sets, *more]), (3, 32, 32), 10, 5)["train"]

    one_epoch = run_flops(model, resolve("fast", sets=["epochs=1"]), (3, 32, 32), 10, 5)["train"]
    assert train() == pytest.approx(3 * 0.25 * one_epoch)
    assert train("filter_full_epochs=1") == pytest.approx((1 + 2 * 0.25) * one_epoch)
    assert train("filter_full_epochs=2") == pytest.approx((2 + 0.25) * one_epoch)


@pytest.mark.parametrize(
    "sets",
    [
        ["filter_full_epochs=1"],  # no filter
        ["filter_keep=0.5", "filter_full_epochs=-1"],
        ["filter_keep=0.5", "epochs=3", "filter_full_epochs=3"],  # nothing left to filter
    ],
)
def test_full_epochs_without_a_filter_or_out_of_range_are_refused(sets):
    with pytest.raises(ConfigError, match="filter_full_epochs must be >= 0"):
        resolve("fast", sets=sets)


def test_the_run_says_that_its_training_metrics_count_the_kept_images():
    env = {"device": "cpu"}
    filtered = describe_run(build(filtered_config(), tiny_dataset()), env)
    assert "hardest 25% of each batch by a 32/64/64 proxy;" in filtered
    smaller = describe_run(build(filtered_config("filter_side=12"), tiny_dataset()), env)
    assert "by a 32/64/64 proxy at 12x12 at most;" in smaller
    moving = describe_run(build(filtered_config("filter_keep_end=0.5"), tiny_dataset()), env)
    assert "hardest 25% to 50% of each batch" in moving
    skipping = describe_run(build(filtered_config("filter_skip=0.1"), tiny_dataset()), env)
    assert "hardest 25% after the 10% hardest, skipped, of each batch" in skipping
    mixed = describe_run(build(filtered_config("filter_random=0.1"), tiny_dataset()), env)
    assert "hardest 15% and a random 10% of the rest of each batch" in mixed
    both = filtered_config("filter_keep_end=0.5", "filter_skip=0.1", "filter_random=0.1")
    assert (
        "hardest 15% to 40% after the 10% hardest, skipped, and a random 10% of the rest of each"
        in describe_run(build(both, tiny_dataset()), env)
    )
    assert "filtering" not in describe_run(
        build(filtered_config("filter_keep=0"), tiny_dataset()), env
    )


@pytest.mark.parametrize(
    "bad",
    [
        "filter_keep=1",
        "filter_keep=-0.1",
        "filter_widths=[32, 64]",
        "filter_train_every=0",
        "filter_side=4",
        "filter_score='median'",
        "filter_by='median'",
        "filter_skip=-0.1",
        "filter_skip=0.1",  # without filter_keep
        "filter_random=-0.1",
        "filter_random=0.1",  # without filter_keep
    ],
)
def test_impossible_filter_settings_are_refused(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        resolve("fast", sets=[bad])


def test_a_random_share_as_large_as_the_kept_share_is_refused():
    for end, random in (("0", "0.5"), ("0.4", "0.4")):
        with pytest.raises(ConfigError, match="filter_random"):
            sets = ["filter_keep=0.5", f"filter_keep_end={end}", f"filter_random={random}"]
            resolve("fast", sets=sets)
    resolve("fast", sets=["filter_keep=0.5", "filter_keep_end=0.45", "filter_random=0.4"])


def test_a_skipped_share_that_leaves_too_little_to_keep_is_refused():
    with pytest.raises(ConfigError, match="filter_skip"):
        resolve("fast", sets=["filter_keep=0.7", "filter_keep_end=0.8", "filter_skip=0.25"])
    resolve("fast", sets=["filter_keep=0.7", "filter_keep_end=0.8", "filter_skip=0.2"])


@pytest.mark.parametrize(
    "sets", [["filter_keep=0.5", "filter_keep_end=1.5"], ["filter_keep_end=0.5"]]
)
def test_a_kept_share_schedule_out_of_range_or_without_data_filtering_is_refused(sets):
    with pytest.raises(ConfigError, match="filter_keep_end .* needs filter_keep"):
        resolve("fast", sets=sets)


def test_last_loss_trains_on_unseen_images_first_then_on_the_highest_last_losses():
    run = build(filtered_config("filter_by='last_loss'"), tiny_dataset())
    assert not hasattr(run.filter, "model")  # no proxy
    x, y = first_batch(run)
    index = run.dataset_index(0, 0)
    assert sorted(index.tolist()) == sorted(set(index.tolist())) and len(index) == 16
    losses = torch.arange(16, dtype=torch.float32)
    run.filter.last_loss[index] = losses
    run.filter.last_loss[index[3]] = run.filter.last_loss[index[7]] = float("nan")  # unseen
    keep = run.filter.pick(x, y, lr=0.1, global_step=0, index=index)
    assert keep.tolist() == [3, 7, 14, 15]  # 4 of 16: the two unseen, then the two highest


@pytest.mark.parametrize("ratio", [False, True])
def test_last_loss_records_the_models_loss_before_the_step_on_the_images_it_kept(ratio):
    """last_loss records each kept image's loss, last_loss_ratio that loss over their mean."""
    torch.manual_seed(0)
    by = "last_loss_ratio" if ratio else "last_loss"
    run = build(filtered_config(f"filter_by='{by}'", "label_smoothing=0.2"), tiny_dataset())
    assert run.filter.last_loss.isnan().all()
    x, y = next(iter(run.batches(0)))
    reference = copy.deepcopy(run.model).train()
    kept = []
    run.model.register_forward_pre_hook(lambda m, a: kept.append(a[0].clone()))
    run.step(StepStats.zeros(run.device), x, y, 0, 0)
    index = run.dataset_index(0, 0)
    recorded = ~run.filter.last_loss.isnan()
    assert recorded.sum() == 4 and recorded[index].sum() == 4  # the kept 4 of the first batch
    picked = index[recorded[index]]
    expected = F.cross_entropy(
        reference(kept[0]), y[recorded[index]], reduction="none", label_smoothing=0.2
    )
    expected = expected.detach()
    torch.testing.assert_close(
        run.filter.last_loss[picked], expected / expected.mean() if ratio else expected
    )
    # A non-finite loss leaves the image's last one (and stays out of the mean).
    before = run.filter.last_loss.clone()
    logits = torch.zeros(3, 10)
    logits[0, 0] = float("nan")
    logits[2, 1] = 3.0
    run.filter.observe(picked[:3], logits, y[:3])
    assert torch.equal(run.filter.last_loss[picked[0]], before[picked[0]])
    finite = F.cross_entropy(logits[1:], y[1:3], reduction="none", label_smoothing=0.2)
    torch.testing.assert_close(
        run.filter.last_loss[picked[1:3]], finite / finite.mean() if ratio else finite
    )


def test_last_loss_ranking_costs_no_flops_and_needs_data_filtering():
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.models.fast import FastNet

    model = FastNet(widths=(8, 16, 16), num_classes=5)
    sets = ["epochs=3", "sanity_check=false", "filter_keep=0.25"]
    proxy = run_flops(model, resolve("fast", sets=sets), (3, 32, 32), n_train=10, n_val=5)
    own = resolve("fast", sets=[*sets, "filter_by='last_loss'"])
    got = run_flops(model, own, (3, 32, 32), n_train=10, n_val=5)
    assert "filter" not in got and got["train"] == proxy["train"]
    assert got["total"] == proxy["total"] - proxy["filter"]
    with pytest.raises(ConfigError, match="filter_by"):
        resolve("fast", sets=["filter_by='last_loss'"])


def test_a_step_costs_the_kept_share_and_the_proxy_per_image():
    from dawntrain.analysis.flop_count import (
        run_flops,
        step_flops_per_image,
        training_flops_per_image,
    )
    from dawntrain.models.fast import FastNet

    model, shape = FastNet(widths=(8, 16, 16), num_classes=5), (3, 32, 32)
    base = ["epochs=4", "sanity_check=false"]
    full = training_flops_per_image(model, shape)
    assert step_flops_per_image(model, resolve("fast", sets=base), shape) == full
    own = resolve("fast", sets=[*base, "filter_keep=0.75", "filter_by='last_loss_ratio'"])
    assert step_flops_per_image(model, own, shape) == pytest.approx(0.75 * full, rel=1e-9)
    proxy = resolve("fast", sets=[*base, "filter_keep=0.75"])
    whole = run_flops(model, proxy, shape, n_train=10, n_val=5)
    per_step = step_flops_per_image(model, proxy, shape)
    assert per_step * 4 * 10 == pytest.approx(whole["train"] + whole["filter"], rel=1e-6)
    assert per_step > 0.75 * full
