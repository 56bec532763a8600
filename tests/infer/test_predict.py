"""`dawntrain predict`: image files in, the checkpoint's class probabilities out."""

import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.engine.evaluate import evaluate, tta_logits
from dawntrain.errors import DataError
from dawntrain.infer.model import TrainedModel, load_model
from dawntrain.infer.predict import (
    MISTAKES_KEPT,
    PREDICTIONS_FILE,
    most_confident_mistakes,
    predict,
    run_predictions,
)
from dawntrain.train import fit
from synthetic import tiny_dataset as _tiny_dataset

tiny_dataset = partial(_tiny_dataset, n=64, n_test=24)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    sets = ["width=4", "epochs=1", "batch_size=32", "image_size=16", "dropout=0.0"]
    sets += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu"]
    data = tiny_dataset()
    fit(resolve("davidnet", sets=sets, overrides={"out": str(out)}), dataset=data)
    return SimpleNamespace(out=out, ckpt=out / "checkpoints" / "last.pt", data=data)


def reference_probs(ckpt, images, level=0):
    """Softmax of the model's fp32 logits on uint8 NHWC images, computed directly."""
    trained = load_model(ckpt, "cpu")
    with torch.no_grad():
        x = trained.normalizer(torch.as_tensor(images), trained.config.channels_last)
        return F.softmax(tta_logits(trained.model, x, level), dim=1).numpy()


def test_predictions_match_the_model_and_notes_say_what_changed(run, tmp_path):
    images = run.data.test_images[:3]
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    Image.fromarray(images[1]).convert("L").save(tmp_path / "b_gray.png")
    Image.fromarray(images[2]).convert("RGBA").save(tmp_path / "c_rgba.png")
    Image.fromarray(images[2]).resize((40, 20)).save(tmp_path / "d_big.png")

    results = predict(run.ckpt, [tmp_path], top_k=4, device="cpu")
    assert [r["path"].rsplit("/", 1)[1] for r in results] == [
        "a.png",
        "b_gray.png",
        "c_rgba.png",
        "d_big.png",
    ]
    gray = np.asarray(Image.open(tmp_path / "b_gray.png").convert("RGB"))
    expected = reference_probs(run.ckpt, np.stack([images[0], gray, images[2]]))
    for r, p in zip(results[:3], expected):
        got = {q["index"]: q["probability"] for q in r["predictions"]}
        assert sorted(got) == [0, 1, 2, 3]
        np.testing.assert_allclose([got[i] for i in range(4)], p, rtol=1e-5, atol=1e-6)
        probs = [q["probability"] for q in r["predictions"]]
        assert probs == sorted(probs, reverse=True)
        assert {q["class"] for q in r["predictions"]} == {"c0", "c1", "c2", "c3"}
    assert results[0]["notes"] == []
    assert "converted from L to RGB" in results[1]["notes"]
    assert "converted from RGBA to RGB" in results[2]["notes"]
    assert any("resized from 40x20 to 16x16" in n for n in results[3]["notes"])


def test_tta_averages_the_runs_views_and_top_k_cuts(run, tmp_path):
    Image.fromarray(run.data.test_images[5]).save(tmp_path / "x.png")
    (result,) = predict(run.ckpt, [tmp_path / "x.png"], top_k=2, tta=True, device="cpu")
    expected = reference_probs(run.ckpt, run.data.test_images[5:6], level=1)[0]
    assert len(result["predictions"]) == 2
    top = result["predictions"][0]
    assert top["index"] == int(expected.argmax())
    assert top["probability"] == pytest.approx(float(expected.max()), rel=1e-5)


def test_run_predictions_match_evaluate_and_are_cached(run, monkeypatch):
    result = run_predictions(run.out, run.data, device="cpu")
    t = load_model(run.ckpt, "cpu")
    x = torch.as_tensor(run.data.test_images)
    y = torch.as_tensor(run.data.test_labels).long()
    ref = evaluate(
        t.model, x, y, t.normalizer, 1024, "fp32", t.config.channels_last, probabilities=True
    )
    np.testing.assert_array_equal(result["predictions"], ref["predictions"])
    assert (result["predictions"] == result["labels"]).mean() == pytest.approx(ref["acc"])
    grid = result["grid_index"]
    np.testing.assert_array_equal(result["grid_images"], run.data.test_images[grid])

    def no_model(*a, **k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(TrainedModel, "evaluate", no_model)
    again = run_predictions(run.out, run.data, device="cpu")  # same test set
    np.testing.assert_array_equal(again["predictions"], result["predictions"])
    run_predictions(run.out, None, device="cpu")  # no data: the checkpoint's cache answers
    other = SimpleNamespace(**{**vars(run.data), "test_images": run.data.test_images[:10]})
    other.test_labels = run.data.test_labels[:10]
    with pytest.raises(AssertionError, match="cache"):
        run_predictions(run.out, other, device="cpu")


def test_most_confident_mistakes_order_by_confidence_then_index():
    predictions = np.array([1, 0, 2, 2, 0, 1, 1])
    labels = np.array([1, 1, 0, 2, 2, 0, 0])
    confidence = np.array([0.99, 0.5, 0.9, 0.8, 0.9, 0.3, 0.95], dtype=np.float32)
    # Wrong: 1 (0.5), 2 (0.9), 4 (0.9), 5 (0.3), 6 (0.95); 2 and 4 tie, the lower index first.
    np.testing.assert_array_equal(
        most_confident_mistakes(predictions, labels, confidence, 4), [6, 2, 4, 1]
    )
    assert most_confident_mistakes(predictions, predictions, confidence, 4).size == 0


def test_run_predictions_keep_the_most_confident_mistakes(run):
    result = run_predictions(run.out, run.data, device="cpu")
    t = load_model(run.ckpt, "cpu")
    x = torch.as_tensor(run.data.test_images)
    y = torch.as_tensor(run.data.test_labels).long()
    probs = evaluate(
        t.model, x, y, t.normalizer, 1024, "fp32", t.config.channels_last,
        tta_level=t.config.tta_level, probabilities=True,
    )["probabilities"]  # fmt: skip
    labels = run.data.test_labels
    np.testing.assert_allclose(
        result["true_probability"], probs[np.arange(len(labels)), labels], rtol=1e-5, atol=1e-6
    )
    # Reference: every wrong index, sorted by (confidence high to low, index).
    wrong = [i for i in range(len(labels)) if result["predictions"][i] != labels[i]]
    expected = sorted(wrong, key=lambda i: (-result["confidence"][i], i))[:MISTAKES_KEPT]
    assert len(expected) > 0  # one epoch of a tiny model: plenty of mistakes
    np.testing.assert_array_equal(result["mistake_index"], expected)
    np.testing.assert_array_equal(result["mistake_images"], run.data.test_images[expected])


def test_a_cache_in_the_old_layout_is_recomputed(run):
    """predictions.npz written before the mistake arrays existed (its key had no format
    version): it must be recomputed, not read and found without them."""
    new = run_predictions(run.out, run.data, device="cpu")
    stat = run.ckpt.stat()
    old_key = f"{stat.st_size}:{stat.st_mtime_ns}:" + str(new["key"]).rsplit(":", 1)[1]
    old = {k: new[k] for k in ("predictions", "labels", "confidence", "class_names")}
    np.savez(run.out / PREDICTIONS_FILE, **old, key=np.array(old_key))
    again = run_predictions(run.out, run.data, device="cpu")
    np.testing.assert_array_equal(again["mistake_index"], new["mistake_index"])
    with np.load(run.out / PREDICTIONS_FILE) as f:
        assert "mistake_images" in f.files and str(f["key"]) == str(new["key"])
    # Without data, the old cache would have answered by its checkpoint prefix alone.
    assert str(new["key"]).startswith("v2:") and not old_key.startswith("v2:")


def test_cli_prints_a_table_or_json_and_fails_in_one_line(run, tmp_path, capsys):
    Image.fromarray(run.data.test_images[0]).save(tmp_path / "one.png")
    args = ["predict", "--checkpoint", str(run.ckpt), str(tmp_path / "one.png"), "--device", "cpu"]
    assert main([*args, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("one.png") and len(lines) == 4
    assert main([*args, "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert len(parsed) == 1 and len(parsed[0]["predictions"]) == 4
    assert sum(p["probability"] for p in parsed[0]["predictions"]) == pytest.approx(1, abs=1e-5)

    (tmp_path / "not-an-image.png").write_text("hello")
    with pytest.raises(DataError, match="not-an-image.png"):
        predict(run.ckpt, [tmp_path / "not-an-image.png"], device="cpu")
    assert main(["predict", "--checkpoint", str(run.ckpt), str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


def test_a_runs_report_takes_the_final_test_pass_instead_of_a_second_one(tmp_path, monkeypatch):
    from dawntrain.analysis.callbacks import for_config

    sets = ["width=4", "epochs=1", "batch_size=32", "image_size=16", "dropout=0.0", "tta_level=2"]
    sets += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu"]
    config = resolve("davidnet", sets=sets, overrides={"out": str(tmp_path / "run")})
    data = tiny_dataset()

    def no_second_pass(*a, **k):
        raise AssertionError("the report evaluated the test set again")

    with monkeypatch.context() as m:
        m.setattr(TrainedModel, "evaluate", no_second_pass)
        final = fit(config, dataset=data, callbacks=for_config(config))
    kept = dict(np.load(tmp_path / "run" / PREDICTIONS_FILE))
    assert (kept["predictions"] == kept["labels"]).mean() == pytest.approx(final["test_acc_tta"])
    (tmp_path / "run" / PREDICTIONS_FILE).unlink()
    again = run_predictions(tmp_path / "run", data, device="cpu")  # evaluated from last.pt
    np.testing.assert_array_equal(again["predictions"], kept["predictions"])
    np.testing.assert_allclose(again["confidence"], kept["confidence"], rtol=1e-6)
