"""Colour jitter (hiverge's cifar10-speedrun): per image, (x + shift) · scale on the normalized
batch, drawn per position of the epoch's order so resumed and distributed runs see the same."""

import torch

from dawntrain.data.batches import batch_positions, color_jitter, jitter_plan
from synthetic import first_epoch_inputs, tiny_dataset


def test_jitter_plan_depends_on_seed_and_epoch_only_and_stays_in_range():
    shift, scale = jitter_plan(10_000, 0, 1, 0.14, 0.13)
    again = jitter_plan.__wrapped__(10_000, 0, 1, 0.14, 0.13)  # not the cached tensors
    assert torch.equal(shift, again[0]) and torch.equal(scale, again[1])
    assert not torch.equal(shift, jitter_plan(10_000, 0, 2, 0.14, 0.13)[0])
    assert not torch.equal(shift, jitter_plan(10_000, 1, 1, 0.14, 0.13)[0])
    assert shift.abs().max() <= 0.14 and shift.abs().max() > 0.139
    assert (scale - 1).abs().max() <= 0.13 and (scale - 1).abs().max() > 0.129
    assert abs(shift.mean()) < 0.005 and abs(scale.mean() - 1) < 0.005
    assert abs(torch.corrcoef(torch.stack([shift, scale]))[0, 1]) < 0.05  # independent draws


def test_color_jitter_matches_float64_and_keeps_the_layout():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    shift, scale = torch.tensor([0.1, -0.1, 0.0, 0.05]), torch.tensor([1.1, 0.9, 1.0, 1.0])
    out = color_jitter(x, shift, scale)
    ref = (x.double() + shift.double().view(-1, 1, 1, 1)) * scale.double().view(-1, 1, 1, 1)
    torch.testing.assert_close(out.double(), ref)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[2], x[2])  # shift 0, scale 1: the image as it was


def test_the_step_trains_on_the_jittered_images_of_its_positions():
    sets = ["width=4", "batch_size=16", "epochs=1", "device='cpu'", "precision='fp32'"]
    data = tiny_dataset(n=40, size=16, n_test=16)
    jitter_sets = [*sets, "brightness=0.2", "contrast=0.3"]
    seen = {False: first_epoch_inputs(sets, data), True: first_epoch_inputs(jitter_sets, data)}
    shift, scale = jitter_plan(40, 0, 0, 0.2, 0.3)
    assert len(seen[True]) == 3  # 16 + 16 + 8 images
    for step, (plain, jittered) in enumerate(zip(seen[False], seen[True])):
        pos = batch_positions(40, 16, step)
        torch.testing.assert_close(jittered, color_jitter(plain, shift[pos], scale[pos]))
