"""Progressive resizing (config.train_sizes): early epochs train on smaller images."""

import io
import json

import pytest
import torch

from dawntrain.config import resolve
from dawntrain.data.batches import resized, train_side
from dawntrain.engine.build import build
from dawntrain.engine.step import StepStats
from dawntrain.errors import ConfigError
from dawntrain.train import fit
from synthetic import tiny_dataset


def test_train_side_follows_the_list_then_the_full_size():
    assert [train_side([16, 24], e, 32) for e in range(4)] == [16, 24, 32, 32]
    assert train_side([], 0, 32) == 32


def test_resized_samples_at_the_pixel_centres_and_keeps_the_layout():
    # A ramp i + j halved: antialiased bilinear averages symmetrically around each output
    # pixel's centre, which lies at input coordinate 2k + 0.5 (exact away from the border).
    i = torch.arange(8.0)
    x = (i[:, None] + i[None, :]).expand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = resized(x, 4)
    assert y.shape == (2, 3, 4, 4) and y.is_contiguous(memory_format=torch.channels_last)
    centres = 2 * torch.arange(4.0) + 0.5
    want = centres[:, None] + centres[None, :]
    torch.testing.assert_close(y[0, 0, 1:3, 1:3], want[1:3, 1:3])
    assert resized(x, 8) is x


def test_train_sizes_parse_as_whole_sides_and_bad_ones_are_refused():
    assert resolve("fast", sets=["train_sizes=[24, 28]"]).train_sizes == [24, 28]
    with pytest.raises(ConfigError, match="whole numbers"):
        resolve("fast", sets=["train_sizes=[24.5]"])
    with pytest.raises(ConfigError, match="train_sizes"):
        resolve("fast", sets=["train_sizes=[4]"])


def test_the_step_trains_at_the_epochs_size_and_evaluation_stays_full():
    config = resolve(
        "fast", sets=["width=4", "batch_size=16", "epochs=2", "train_sizes=[8]", "device='cpu'"]
    )
    run = build(config, tiny_dataset(n=32, size=16, n_test=16))
    seen = []
    run.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    stats = StepStats.zeros(run.device)
    for epoch in range(2):
        run.start_epoch(epoch)
        for step, (x, y) in enumerate(run.batches(epoch)):
            run.step(stats, x, y, epoch, step)
    assert seen == [8, 8, 16, 16]
    assert torch.isfinite(stats.sums).all() and stats.sums[StepStats.EXAMPLES] == 64


def test_the_epoch_table_and_metrics_say_the_side_trained_on(tmp_path):
    sets = ["width=4", "batch_size=16", "epochs=3", "train_sizes=[8, 12]", "device='cpu'"]
    config = resolve("fast", sets=sets + ["sanity_check=false", "report=false"])
    config.out, table = str(tmp_path), io.StringIO()
    fit(config, dataset=tiny_dataset(n=32, size=16, n_test=16), stream=table)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_side"] for r in rows] == [8, 12, 16]
    lines = table.getvalue().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "side"])
    assert [line.split()[1] for line in lines[header + 1 : header + 4]] == ["8", "12", "16"]
