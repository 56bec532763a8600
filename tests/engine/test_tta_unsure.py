"""TTA only where the plain prediction is unsure (config.tta_below): the sure images keep their
plain logits, the unsure ones get exactly the full TTA's, and only those pay for the views."""

import json

import pytest
import torch
from torch import nn

from dawntrain.analysis.flop_count import run_flops
from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.data.batches import Normalizer
from dawntrain.engine.evaluate import evaluate, tta_logits, tta_where_unsure
from dawntrain.errors import ConfigError
from dawntrain.infer.evaluate import evaluate_checkpoint
from dawntrain.train import fit
from synthetic import tiny_dataset


def small_model() -> nn.Module:
    torch.manual_seed(0)
    # Not mirror-symmetric (a strided conv, then a linear layer over positions), so the views
    # change the logits and sure and unsure images differ.
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 7 * 7, 5))


def test_unsure_images_get_the_full_ttas_logits_and_sure_ones_keep_the_plain():
    model, x = small_model().eval(), torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        plain, full = model(x), tta_logits(model, x, 2)
        sure = torch.softmax(plain, 1).amax(1)
        below = sure.median().item()
        sizes = []
        hook = model.register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
        logits, unsure = tta_where_unsure(model, x, 2, below)
        hook.remove()
    assert torch.equal(unsure, sure < below) and 0 < unsure.sum() < len(x)
    torch.testing.assert_close(logits[~unsure], plain[~unsure], rtol=0, atol=0)
    torch.testing.assert_close(logits[unsure], full[unsure], rtol=1e-5, atol=1e-6)
    # One plain pass over the batch, then the five other views of the unsure images only.
    assert sizes == [len(x)] + [int(unsure.sum())] * 5


def test_evaluate_reports_the_share_and_meets_plain_and_full_tta_at_the_ends():
    model = small_model()
    images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8)
    labels = torch.randint(0, 5, (40,))
    norm = Normalizer(None, None, samplewise=True)
    run = lambda level, below: evaluate(  # noqa: E731
        model, images, labels, norm, 16, "fp32", False, level, all_ranks=False, tta_below=below
    )
    plain, full = run(0, 1.0), run(2, 1.0)
    assert "tta_fraction" not in plain and full["tta_fraction"] == 1.0
    none = run(2, 1e-9)  # every top-class probability is above: no image takes the views
    assert none["tta_fraction"] == 0.0 and none["acc"] == plain["acc"]
    assert none["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    every = run(2, 1.0 - 1e-9)  # 5 classes at random init: none is that sure
    assert every["tta_fraction"] == 1.0 and every["loss"] == pytest.approx(full["loss"], rel=1e-5)


def test_tta_below_is_a_probability_on_the_config_and_the_command_line(capsys):
    assert resolve("fast", sets=["tta_below=0.9"]).tta_below == 0.9
    with pytest.raises(ConfigError, match="tta_below"):
        resolve("fast", sets=["tta_below=0"])
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "x.pt", "--tta-below", "1.5"])
    assert "probability in (0, 1]" in capsys.readouterr().err


def test_run_flops_counts_the_views_for_the_unsure_share_only():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    f = 2 * 12 * 5
    config = resolve("fast", sets=["epochs=1", "tta_level=2", "tta_below=0.9"])
    got = run_flops(model, config, (3, 2, 2), n_train=10, n_val=30, n_test=20, tta_fraction=0.25)
    # One test pass: the plain view for all (the figures without TTA too), 5 more for a quarter.
    assert got["test"] == f * 20 * (1 + 5 * 0.25)


def test_a_run_records_the_share_and_eval_reproduces_it(tmp_path, capsys):
    sets = ["width=4", "epochs=1", "batch_size=16", "sanity_check=false", "report=false"]
    sets += ["device=cpu", "precision=fp32", "tta_level=2", "tta_below=0.5", "val_from_train=16"]
    config = resolve("fast", sets=sets, overrides={"out": str(tmp_path / "run"), "quiet": True})
    data = tiny_dataset()
    fit(config, dataset=data)
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    assert 0 <= final["test_tta_fraction"] <= 1
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    result = evaluate_checkpoint(ckpt, data, "cpu")
    assert result["tta"]["tta_fraction"] == final["test_tta_fraction"]
    assert result["tta"]["acc"] == final["test_acc_tta"]
    # Another threshold from the command line: 1 is every image again.
    assert evaluate_checkpoint(ckpt, data, "cpu", tta_below=1.0)["tta"]["tta_fraction"] == 1.0


def test_eval_prints_the_share_that_took_the_views():
    from dawntrain.cli.checkpoints import format_evaluation

    figures = {"loss": 0.5, "acc": 0.9, "top5": 0.99, "examples": 100}
    result = {**figures, "split": "test", "source": "cifar10"}
    result["tta"] = {**figures, "level": 2, "tta_fraction": 0.25}
    assert format_evaluation(result).endswith("(views on 25.0% of the images)")
    result["tta"]["tta_fraction"] = 1.0
    assert "views on" not in format_evaluation(result)
