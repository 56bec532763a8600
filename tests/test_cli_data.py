"""`dawntrain data convert|inspect` and training on converted records, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.cli import main
from dawntrain.data.codec.tfrecord import read_records


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))


def make_folder(root: Path, train: int = 13, test: int = 3, classes: int = 10) -> Path:
    """32x32 JPEGs, train/c<k>/ and test/c<k>/: `train` and `test` images a class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def test_convert_then_inspect(tmp_path, capsys):
    folder = make_folder(tmp_path / "folder", train=2, test=1, classes=3)
    out = tmp_path / "records"
    args = ["data", "convert", str(folder), "--out", str(out), "--shard-size", "4", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "train: 6 records in 2 shard(s)" in printed and "test: 3 records in 1 shard(s)" in printed
    )
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["c0", "c1", "c2"]

    assert main(["data", "inspect", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "train: 6 records in 2 file(s)" in printed and "image layout" in printed
    assert "image/encoded (bytes)" in printed and "image/class/label (int64)" in printed
    assert "first image: 32x32x3" in printed and "c0: 2, c1: 2, c2: 2" in printed
    assert printed.count("verify: every record and image ok") == 2

    assert main(["data", "inspect", str(out / "test-*.tfrecord.gz")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("test: 3 records in 1 file(s)") and "train" not in printed


def test_verify_names_the_first_bad_record_and_exits_2(tmp_path, capsys):
    folder = make_folder(tmp_path / "folder", train=2, test=1, classes=3)
    out = tmp_path / "records"
    main(["data", "convert", str(folder), "--out", str(out), "--compression", "none", "--quiet"])
    capsys.readouterr()
    shard = out / "train-00000-of-00006.tfrecord"
    # Flip one byte inside the image of the shard's only record (index 0).
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["data", "inspect", str(out), "--verify"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dawntrain: error: first bad record:")
    assert f"{shard}: record 0" in err[0] and "CRC32C" in err[0]
    assert "verify: BAD" in captured.out
    assert main(["data", "inspect", str(out)]) == 0  # without --verify, only shapes are read

    # A later record of a multi-record shard: its index is named.
    out2 = tmp_path / "records2"
    args = ["data", "convert", str(folder), "--out", str(out2), "--shards", "1", "--quiet"]
    main([*args, "--compression", "none"])
    shard = out2 / "train-00000-of-00001.tfrecord"
    sizes = [len(r) for r in read_records(shard)]
    data = bytearray(shard.read_bytes())
    data[sum(s + 16 for s in sizes[:4]) + 12 + sizes[4] // 2] ^= 0x01  # inside record 4's data
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["data", "inspect", str(out2), "--verify", "--split", "train"]) == 2
    assert f"{shard}: record 4 " in capsys.readouterr().err

    # A manifest whose sha256 no longer matches an intact shard: the shard is named.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["test"][0]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "inspect", str(out), "--verify", "--split", "test"]) == 2
    assert "first bad shard: " in capsys.readouterr().err


def test_train_one_epoch_on_converted_records_then_eval_on_a_glob(tmp_path, capsys):
    records = tmp_path / "records"
    main(["data", "convert", str(make_folder(tmp_path / "folder")), "--out", str(records)])
    run = tmp_path / "run"
    args = ["train", "--data", str(records), "--set", "width=4", "--batch-size", "64"]
    assert main([*args, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and 0 <= metrics[0]["val_acc"] <= 1
    checkpoint = run / "checkpoints" / "last.pt"
    glob = str(records / "*.tfrecord*")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", glob]) == 0
    assert "test set, 30 images" in capsys.readouterr().out
