"""--init-from: a new run from another run's weights; the head is re-initialised for new classes."""

import json
import shutil

import pytest
import torch

from dawntrain.cli import main
from dawntrain.config import resolve
from dawntrain.train import fit
from dawntrain.train.callbacks import Callback
from dawntrain.train.checkpoint import load
from synthetic import image_folder, tiny_dataset

HEAD = "linear.weight"  # DavidNet's classifier


def config(out, **kw):
    sets = ["width=4", "epochs=1", "batch_size=32", "sanity_check=false", "quiet=true"]
    sets += ["precision=fp32", *(f"{k}={v}" for k, v in kw.items())]
    return resolve("davidnet", sets=sets, overrides={"out": str(out)})


class Started(Exception):
    pass


class WeightsAtStep0(Callback):
    """The model's state (and Lookahead's average) as training is about to start; then stops."""

    def on_fit_start(self, run, state):
        self.weights = {k: v.clone() for k, v in run.model.state_dict().items()}
        self.ema = run.lookahead.state_dict() if run.lookahead is not None else None
        self.init_from = state.init_from
        raise Started


def at_step0(cfg, data):
    probe = WeightsAtStep0()
    with pytest.raises(Started):
        fit(cfg, dataset=data, callbacks=[probe])
    return probe


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained 3-class checkpoint."""
    out = tmp_path_factory.mktemp("source")
    fit(config(out), dataset=tiny_dataset(classes=3))
    return out / "checkpoints" / "last.pt"


def test_other_classes_keep_the_body_and_reinitialise_the_head(tmp_path, source):
    saved = load(source)["model"]
    data = tiny_dataset(classes=4, seed=1)
    tuned = at_step0(config(tmp_path / "tuned", init_from=f'"{source}"', seed=3), data)
    fresh = at_step0(config(tmp_path / "fresh", seed=3), data)
    assert set(tuned.weights) == set(saved)
    for k, v in tuned.weights.items():
        if k == HEAD:  # the seed's fresh initialisation, for 4 classes
            assert v.shape[0] == 4 and torch.equal(v, fresh.weights[k])
        else:
            assert torch.equal(v, saved[k]), k
    assert tuned.init_from == {"checkpoint": str(source), "epoch": 1, "reinitialised": [HEAD]}


def test_the_same_classes_start_from_every_weight_and_lookahead_from_them(tmp_path, source):
    saved = load(source)["model"]
    cfg = config(tmp_path, init_from=f'"{source}"', lookahead="true", seed=3)
    tuned = at_step0(cfg, tiny_dataset(classes=3, seed=1))
    for k, v in saved.items():
        assert torch.equal(tuned.weights[k], v), k
    for k, v in tuned.ema.items():
        assert torch.equal(v, saved[k]), k
    assert tuned.init_from["reinitialised"] == []


def test_a_fine_tuned_run_records_its_source_and_resumes_without_reloading_it(tmp_path, source):
    data = tiny_dataset(classes=4, seed=1)
    spec = f'"{source.parent.parent}"'  # a run directory: its last.pt
    fit(config(tmp_path / "full", init_from=spec, epochs=2), dataset=data)
    record = json.loads((tmp_path / "full" / "summary.json").read_text())["init_from"]
    assert record["checkpoint"] == str(source) and record["reinitialised"] == [HEAD]
    # Resumed after its first epoch: the same run, the record kept.
    (tmp_path / "part" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full/checkpoints/epoch_01.pt", tmp_path / "part/checkpoints/last.pt")
    fit(config(tmp_path / "part", init_from=spec, epochs=2), dataset=data, resume="last")
    full, part = (load(tmp_path / r / "checkpoints" / "last.pt") for r in ("full", "part"))
    assert all(torch.equal(v, part["model"][k]) for k, v in full["model"].items())
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["init_from"] == record


def test_the_cli_refuses_another_architecture_and_resume_before_any_data_loads(
    tmp_path, source, capsys
):
    missing = str(tmp_path / "no-such-data")
    base = ["train", "--data", missing, "--init-from", str(source), "--out", str(tmp_path / "r")]
    assert main([*base, "--set", "width=8"]) == 2
    err = capsys.readouterr().err
    assert "davidnet of width 4" in err and "davidnet of width 8" in err
    assert "no-such-data" not in err
    assert main([*base, "--set", "width=4", "--resume", "last"]) == 2
    assert "give one of them" in capsys.readouterr().err
    nowhere = ["train", "--data", missing, "--set", "init_from=nowhere.pt", "--set", "width=4"]
    assert main(nowhere) == 2
    assert "--init-from nowhere.pt" in capsys.readouterr().err


def test_fine_tuning_a_folder_of_other_classes_through_the_cli(
    tmp_path, source, monkeypatch, capsys
):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "data", per_class=8, size=16, classes=4)
    args = ["train", "--data", str(data), "--set", "width=4", "--set", "image_size=16"]
    args += ["--epochs", "1", "-b", "16", "--precision", "fp32", "--set", "report=false"]
    assert main([*args, "--init-from", str(source), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"every layer but the classifier head ({HEAD})" in out and "4 classes" in out
    assert "sanity check" not in out  # a trained body is no untrained model
    assert not (tmp_path / "run" / "sanity_check.json").exists()
    assert f'init_from = "{source}"' in (tmp_path / "run" / "config.toml").read_text()
