"""The curvature probe: α* and λ_max in the recipe's lr convention, on the batches training sees."""

import dataclasses
import json
import math
from functools import partial

import pytest
import torch
from PIL import Image
from torch import nn

from dawntrain.analysis.curvature import optimal_step
from dawntrain.analysis.probe import probe_during_training, probe_lr
from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.data.batches import epoch_plan, train_batches
from dawntrain.engine.build import make_normalizer, make_schedule
from dawntrain.engine.optim import step_lr
from dawntrain.engine.step import loss_fn
from dawntrain.errors import CheckpointError
from dawntrain.models import build_model
from dawntrain.train import fit
from synthetic import tiny_dataset as _tiny_dataset

tiny_dataset = partial(
    _tiny_dataset,
    n=48,
    classes=3,
    size=12,
    n_test=12,
    noise=120,
    step=60,
    class_names=["ant", "bee", "cat"],
)


def tiny_config(**kw):
    sets = ["width=4", "epochs=2", "batch_size=16", "image_size=12", "dropout=0.0"]
    sets += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu"]
    return resolve("davidnet", sets=sets + [f"{k}={v}" for k, v in kw.items()])


@pytest.mark.parametrize("convention", ["original", "per_example"])
def test_probe_during_training_matches_the_explicit_hessian(convention):
    torch.manual_seed(0)
    model = nn.Linear(5, 3, bias=False).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    before = model.weight.detach().clone()

    def summed(logits, labels):
        return nn.functional.cross_entropy(logits, labels, reduction="sum")

    got = probe_during_training(model, summed, x, y, convention, eig_iters=80)
    # Reference: the full 15x15 Hessian of the summed loss in float64.
    w0 = model.weight.detach().reshape(-1)
    f = lambda w: summed(x @ w.reshape(3, 5).T, y)  # noqa: E731
    H = torch.autograd.functional.hessian(f, w0)
    g = torch.autograd.functional.jacobian(f, w0)
    alpha_sum = float(g @ g / (g @ H @ g))
    lam_sum = float(torch.linalg.eigvalsh(H).max())
    scale = 8 if convention == "original" else 1  # original: lr acts on the mean gradient
    assert got["alpha_star"] == pytest.approx(alpha_sum * scale, rel=1e-9)
    assert got["top_eigenvalue"] == pytest.approx(lam_sum / scale, rel=1e-6)
    assert got["alpha_star"] >= 1 / got["top_eigenvalue"]  # 1/α* is a Rayleigh quotient
    assert torch.equal(model.weight, before) and model.weight.grad is None


@pytest.mark.parametrize("convention", ["original", "per_example"])
def test_probe_lr_probes_the_first_training_batches_in_the_lr_convention(convention):
    data, config = tiny_dataset(), tiny_config(convention=convention, seed=3)
    result = probe_lr(config, batches=2, dataset=data)
    assert result["batches"] == 2 and result["epoch"] == 0.0
    assert result["schedule_lr"] == make_schedule(config)(0.0)
    assert result["effective_lr"] == pytest.approx(result["schedule_lr"] / (1 - 0.9))
    # Reference: the run's init (seeded as fit seeds it) on the run's first batch, by hand.
    torch.manual_seed(3)
    model = build_model("davidnet", 3, width=4, dropout=0.0).train()
    plan = epoch_plan(48, 3, 0, config.crop_padding, config.flip, "cpu")
    images, labels = torch.as_tensor(data.train_images), torch.as_tensor(data.train_labels)
    xb, yb = next(train_batches(images, labels, plan, 16, config.crop_padding))
    x = make_normalizer(config, data.train_images)(xb, channels_last=True)
    probe = optimal_step(lambda: loss_fn(model, model(x), yb, 0.0), list(model.parameters()))
    assert result["alpha_sum"][0] == pytest.approx(probe.alpha, rel=1e-5)
    # The lr α* stands for takes the step α*·g_sum once the optimizer applies its convention.
    assert step_lr(convention, result["alpha_lr"][0], 16) == pytest.approx(probe.alpha, rel=1e-5)
    assert result["loss"][0] == pytest.approx(probe.loss / 16, rel=1e-5)


def test_probe_lr_from_a_checkpoint_and_through_the_cli(tmp_path, monkeypatch, capsys):
    data = tiny_dataset()
    out = tmp_path / "run"
    config = dataclasses.replace(tiny_config(dropout=0.05), out=str(out))
    fit(config, dataset=data)
    ckpt = out / "checkpoints" / "last.pt"
    result = probe_lr(config, ckpt, batches=1, dataset=data)
    assert result["epoch"] == 2.0 and result["schedule_lr"] == make_schedule(config)(2.0)
    assert math.isfinite(result["alpha_lr_mean"])  # bank dropout switched for a differentiable one
    with pytest.raises(CheckpointError, match="does not fit"):
        probe_lr(tiny_config(width=8), ckpt, batches=1, dataset=data)

    # The CLI with only a checkpoint probes with the run's own config, on an image folder here.
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    for split, (images, labels) in {
        "train": (data.train_images, data.train_labels),
        "test": (data.test_images, data.test_labels),
    }.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = tmp_path / "folder" / split / data.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    args = ["probe-lr", "--checkpoint", str(ckpt), "--data", str(tmp_path / "folder")]
    assert main([*args, "--batches", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epoch"] == 2.0 and printed["batch_size"] == 16
    assert printed["convention"] == "original" and math.isfinite(printed["alpha_lr_mean"])
