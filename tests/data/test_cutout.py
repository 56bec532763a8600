"""Cutout (airbench96): a box per image set to 0 on the normalized batch (the data set's mean),
placed per position of the epoch's order so resumed and distributed runs cut the same boxes."""

import pytest
import torch

from dawntrain.config import resolve
from dawntrain.data.batches import batch_positions, cutout, cutout_plan
from dawntrain.errors import ConfigError
from synthetic import first_epoch_inputs, tiny_dataset


def test_cutout_plan_depends_on_seed_and_epoch_only_and_keeps_the_box_inside():
    top, left = cutout_plan(20_000, 0, 1, 12, 32)
    again = cutout_plan.__wrapped__(20_000, 0, 1, 12, 32)  # not the cached tensors
    assert torch.equal(top, again[0]) and torch.equal(left, again[1])
    assert not torch.equal(top, cutout_plan(20_000, 0, 2, 12, 32)[0])
    assert not torch.equal(top, cutout_plan(20_000, 1, 1, 12, 32)[0])
    for corner in (top, left):  # every place the box fits (0..20), about equally often
        counts = torch.bincount(corner, minlength=21)
        assert len(counts) == 21 and counts.min() > 0.8 * 20_000 / 21
    assert abs(torch.corrcoef(torch.stack([top, left]).double())[0, 1]) < 0.05
    whole, _ = cutout_plan(10, 0, 0, 40, 32)  # a box larger than the image covers all of it
    assert whole.eq(0).all()


def test_cutout_matches_a_loop_and_keeps_the_layout():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 9, 7).contiguous(memory_format=torch.channels_last)
    top, left = torch.tensor([0, 6, 2]), torch.tensor([4, 0, 1])
    out = cutout(x, top, left, 3)
    ref = x.clone()
    for i in range(3):
        for r in range(top[i], min(top[i] + 3, 9)):
            for c in range(left[i], min(left[i] + 3, 7)):
                ref[i, :, r, c] = 0
    assert torch.equal(out, ref)
    assert out.eq(0).sum() == 3 * 2 * 3 * 3  # every box lies inside its image
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_step_trains_on_the_cut_out_images_of_its_positions():
    sets = ["width=4", "batch_size=16", "epochs=1", "device='cpu'", "precision='fp32'"]
    data = tiny_dataset(n=40, size=16, n_test=16)
    seen = {size: first_epoch_inputs([*sets, f"cutout={size}"], data) for size in (0, 5)}
    top, left = cutout_plan(40, 0, 0, 5, 16)
    assert len(seen[5]) == 3  # 16 + 16 + 8 images
    for step, (plain, cut) in enumerate(zip(seen[0], seen[5])):
        pos = batch_positions(40, 16, step)
        assert torch.equal(cut, cutout(plain, top[pos], left[pos], 5))


def test_a_negative_cutout_is_refused_by_name():
    with pytest.raises(ConfigError, match="cutout must be >= 0"):
        resolve("fast", sets=["cutout=-1"])
