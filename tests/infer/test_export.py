"""`dawntrain export`: the exported model gives the checkpoint's logits; F.json describes it."""

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.infer.export import export
from dawntrain.infer.model import load_model
from dawntrain.models import build_model
from dawntrain.train import fit
from synthetic import tiny_dataset

has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = tiny_dataset(48, 3, 16, n_test=16, noise=256, step=0, class_names=["ant", "bee", "cat"])
    images = data.train_images
    sets = ["width=4", "epochs=1", "batch_size=16", "image_size=16", "dropout=0.0"]
    sets += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu"]
    fit(resolve("davidnet", sets=sets, overrides={"out": str(out)}), dataset=data)
    ckpt = out / "checkpoints" / "last.pt"
    trained = load_model(ckpt, "cpu")
    model, normalizer = trained.model, trained.normalizer
    x = normalizer(torch.as_tensor(images[:5]), channels_last=False)
    with torch.no_grad():
        logits = model(x)
    return SimpleNamespace(ckpt=ckpt, x=x, logits=logits, normalizer=normalizer)


def check_sidecar(path, fmt, normalizer):
    meta = json.loads(path.read_text())
    assert meta["format"] == fmt and meta["preset"] == "davidnet"
    assert meta["classes"] == ["ant", "bee", "cat"]
    assert meta["input"]["shape"] == [None, 3, 16, 16]
    assert meta["normalization"]["mean"] == pytest.approx(normalizer.mean.flatten().tolist())
    assert meta["normalization"]["samplewise"] is False
    assert meta["config"]["width"] == 4


@pytest.mark.skipif(not has("safetensors"), reason="safetensors is not installed")
def test_safetensors_weights_rebuild_the_model_exactly(run, tmp_path):
    from safetensors.torch import load_file

    out, side = export(run.ckpt, "safetensors", tmp_path / "m.safetensors")
    check_sidecar(side, "safetensors", run.normalizer)
    weights = load_file(out)
    for name, tensor in torch.load(run.ckpt, weights_only=True)["model"].items():
        assert torch.equal(weights[name], tensor), name
    model = build_model("davidnet", 3, width=4, dropout=0.0)
    model.load_state_dict(weights)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(run.x), run.logits, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, still works
def test_torchscript_reloads_and_gives_the_same_logits(run, tmp_path):
    out, side = export(run.ckpt, "torchscript", tmp_path / "m.pt")
    check_sidecar(side, "torchscript", run.normalizer)
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        torch.testing.assert_close(loaded(run.x), run.logits, rtol=0, atol=1e-6)
        assert loaded(run.x[:1]).shape == (1, 3)  # traced at batch 2, runs at any batch


@pytest.mark.skipif(
    not (has("onnx") and has("onnxruntime")), reason="onnx and onnxruntime are not installed"
)
def test_onnx_runs_in_onnxruntime_with_the_same_logits(run, tmp_path, capsys):
    import onnxruntime

    out = tmp_path / "m.onnx"
    fmt_args = ["--format", "onnx", "--out", str(out)]
    assert main(["export", "--checkpoint", str(run.ckpt), *fmt_args]) == 0
    assert "m.onnx.json" in capsys.readouterr().out
    check_sidecar(tmp_path / "m.onnx.json", "onnx", run.normalizer)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": run.x.numpy()})
    np.testing.assert_allclose(got, run.logits.numpy(), rtol=0, atol=1e-4)


@pytest.mark.skipif(not has("safetensors"), reason="safetensors is not installed")
def test_the_documented_safetensors_route_rebuilds_a_widened_fast_model(tmp_path):
    """docs/analysis.md: model_for(apply(Config(), F.json's config), classes) keeps every
    architecture key (width_factor: fast-wide), which build_model(model, n, width) drops."""
    from safetensors.torch import load_file

    from dawntrain.config import Config, apply
    from dawntrain.models import model_for

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 48)
    images = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    data = SimpleNamespace(
        train_images=images, train_labels=labels, test_images=images[:16],
        test_labels=labels[:16], class_names=["ant", "bee", "cat"],
    )  # fmt: skip
    sets = ["width=4", "width_factor=3.0", "epochs=1", "batch_size=16", "image_size=16"]
    sets += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu", "tta_level=0"]
    sets += ["report=false"]
    out = tmp_path / "run"
    fit(resolve("fast", sets=sets, overrides={"out": str(out)}), dataset=data)
    weights, side = export(out / "checkpoints" / "last.pt", "safetensors", tmp_path / "m.st")
    meta = json.loads(side.read_text())
    model = model_for(apply(Config(), meta["config"], "F.json"), len(meta["classes"]))
    model.load_state_dict(load_file(weights))
    trained = load_model(out / "checkpoints" / "last.pt", "cpu")
    x = trained.normalizer(torch.as_tensor(images[:4]), channels_last=False)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), trained.model(x), rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError):  # the route docs/analysis.md gave before
        build_model("fast", 3, meta["config"]["width"]).load_state_dict(load_file(weights))
