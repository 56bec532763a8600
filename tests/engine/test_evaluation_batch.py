"""engine.evaluate: its figures belong to the weights and the images, not to the evaluation batch,
which the presets choose for memory alone (fast.toml: the training batch, so the test's activations
reuse the heap blocks the steps freed)."""

import functools

import pytest
import torch

from dawntrain.data.batches import Normalizer
from dawntrain.engine.evaluate import evaluate
from dawntrain.models import FastNet


def test_the_evaluation_batch_changes_no_figure():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8)
    labels = torch.randint(0, 5, (40,))
    model = FastNet(widths=(8, 16, 16), num_classes=5, activation="silu")
    norm = Normalizer(None, None, samplewise=True)
    model.init_from_data(norm(images, False))
    # Running statistics other than the initial 0 and 1, as a trained network has.
    model.train()
    with torch.no_grad():
        model(norm(images, False))

    def run(batch: int, level: int = 2, below: float = 1.0) -> dict:
        return evaluate(
            model, images, labels, norm, batch, "fp32", False, tta_level=level,
            probabilities=True, all_ranks=False, tta_below=below, with_plain=True,
        )  # fmt: skip

    # The views for about half the images, so the batches split sure and unsure ones unevenly.
    below = float(torch.as_tensor(run(40, level=0)["probabilities"]).amax(1).median()) + 1e-7
    selective = functools.partial(run, below=below)

    whole, *split = selective(40), selective(7), selective(16)
    assert 0 < whole["tta_fraction"] < 1
    for other in split:
        assert (other["acc"], other["tta_fraction"]) == (whole["acc"], whole["tta_fraction"])
        assert other["plain"]["acc"] == whole["plain"]["acc"]
        assert other["loss"] == pytest.approx(whole["loss"], rel=1e-5)
        assert other["plain"]["loss"] == pytest.approx(whole["plain"]["loss"], rel=1e-5)
        torch.testing.assert_close(
            torch.as_tensor(other["probabilities"]), torch.as_tensor(whole["probabilities"])
        )
