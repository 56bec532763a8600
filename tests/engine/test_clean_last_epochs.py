"""config.clean_last_epochs: the last epochs train on the images as the test sees them, flipped
or not, with no crop, colour jitter or Cutout."""

import pytest
import torch

from dawntrain.config import ConfigError, resolve
from dawntrain.data.batches import batch_positions, epoch_plan
from dawntrain.engine.build import build
from synthetic import tiny_dataset

SETS = ["width=4", "batch_size=16", "epochs=3", "device='cpu'", "precision='fp32'"]
AUGMENTED = ["crop_padding=2", "brightness=0.2", "contrast=0.3", "cutout=4", "alternate_flip=true"]


def test_the_last_epochs_see_the_flipped_images_and_nothing_else():
    run = build(
        resolve("fast", sets=[*SETS, *AUGMENTED, "clean_last_epochs=2"]),
        tiny_dataset(n=40, size=16, n_test=16),
    )
    for epoch in range(3):
        plan = epoch_plan(40, run.config.seed, epoch, 2, True, "cpu", alternate_flip=True)
        for step, (x, _) in enumerate(run.batches(epoch)):
            pos = batch_positions(40, 16, step)
            images = run.train_x[plan.order[pos]]
            flipped = torch.where(plan.flip[pos, None, None, None], images.flip(2), images)
            seen = run.inputs(x, epoch, step)
            clean = torch.equal(x, flipped) and torch.equal(seen, run.normalizer(flipped))
            assert clean == (epoch >= 1), (epoch, step)


def test_clean_last_epochs_cannot_pass_the_run():
    with pytest.raises(ConfigError, match="clean_last_epochs"):
        resolve("fast", sets=[*SETS, "clean_last_epochs=4"])
