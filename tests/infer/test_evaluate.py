"""`dawntrain eval`: a checkpoint scored on a source, checked and resized as its run's data was."""

import pytest

from dawntrain.config import resolve
from dawntrain.errors import DataError
from dawntrain.infer.evaluate import evaluate_checkpoint
from dawntrain.train import fit
from synthetic import image_folder

SETS = ["width=4", "epochs=1", "batch_size=16", "image_size=16", "dropout=0.0", "tta_level=0"]
SETS += ["sanity_check=false", "quiet=true", "precision=fp32", "device=cpu"]


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))


def train(data, out, resize: bool):
    config = resolve("davidnet", sets=SETS, overrides={"out": str(out), "data": str(data)})
    config.resize = resize
    return fit(config)


def test_a_resized_run_is_evaluated_on_resized_images(tmp_path):
    data = image_folder(tmp_path / "data", size=24)
    final = train(data, tmp_path / "run", resize=True)
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", device="cpu")
    assert result["examples"] == 24
    assert result["acc"] == pytest.approx(final["val_acc"])
    assert result["loss"] == pytest.approx(final["val_loss"], rel=1e-5)


def test_a_source_of_another_size_is_refused_by_name(tmp_path):
    train(image_folder(tmp_path / "data", size=16), tmp_path / "run", resize=False)
    other = image_folder(tmp_path / "other", size=24)
    with pytest.raises(DataError, match=r"other.*24x24.*--resize"):
        evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", str(other), "cpu")


def test_eval_of_a_tta_run_prints_what_its_summary_says(tmp_path, capsys):
    import json

    from dawntrain.cli import main

    data = image_folder(tmp_path / "data", size=16)
    sets = [s for s in SETS if not s.startswith(("tta_level", "epochs"))] + ["epochs=2"]
    config = resolve("fast", sets=sets + ["tta_level=2", "lookahead=true"])
    config.out, config.data = str(tmp_path / "run"), str(data)
    fit(config)
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    result = evaluate_checkpoint(ckpt, device="cpu")
    # Bitwise what the run reported: the same weights, evaluation path, precision and batches.
    assert (result["acc"], result["loss"]) == (final["test_acc"], final["test_loss"])
    assert result["tta"]["level"] == 2
    assert (result["tta"]["acc"], result["tta"]["loss"]) == (
        final["test_acc_tta"],
        final["test_loss_tta"],
    )
    assert 0 <= result["acc"] <= result["top5"] == 1.0  # 3 classes: top-5 holds them all
    assert main(["eval", "--checkpoint", str(ckpt), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tta"]["acc"] == final["test_acc_tta"]
    assert main(["eval", "--checkpoint", str(ckpt), "--tta", "0"]) == 0
    assert "TTA" not in capsys.readouterr().out


def test_other_classes_are_named_or_evaluated_on_the_shared_ones(tmp_path, capsys):
    train(image_folder(tmp_path / "data", size=16), tmp_path / "run", resize=False)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    four = str(image_folder(tmp_path / "four", size=16, classes=4))
    with pytest.raises(DataError, match=r"3 classes \(class0, class1, class2\).*has 4 "):
        evaluate_checkpoint(ckpt, four, "cpu")
    result = evaluate_checkpoint(ckpt, four, "cpu", shared_classes=True)
    assert result["shared_classes"] == ["class0", "class1", "class2"]
    assert result["examples"] == 3 * 8  # the test images of the three shared classes
    assert 0 <= result["acc"] <= result["top5"] == 1.0  # 3 classes: the top 5 hold them all

    from dawntrain.cli import main

    assert main(["eval", "--checkpoint", str(ckpt), "--data", four, "--shared-classes"]) == 0
    assert "24 images of the 3 shared classes" in capsys.readouterr().out
