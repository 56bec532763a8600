"""`dawntrain data convert|inspect|download|cache`: training on converted records, and an
archive downloaded ahead of time and loaded offline, through the command line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.cli import main
from dawntrain.data import load, readers
from dawntrain.data.codec.tfrecord import read_records
from dawntrain.data.readers import cifar, tiny_imagenet
from local_http import dead_url, serving


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


def cifar_archive_bytes(tmp_path: Path) -> bytes:
    """A cifar-10-python.tar.gz of the official layout: 2 images a batch, 10 classes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [int(x) for x in rng.integers(0, 10, 2)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as tar:
        tar.add(folder, folder.name)
    return (tmp_path / "cifar.tar.gz").read_bytes()


def use_archive(monkeypatch, reader, archive) -> None:
    monkeypatch.setattr(reader, "ARCHIVE", archive)
    monkeypatch.setitem(readers.ARCHIVES, archive.name, archive)


def test_download_ahead_copy_to_an_offline_machine_then_list_and_clear_the_cache(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("DAWNTRAIN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data_dir = tmp_path / "xdg" / "dawntrain"
    payload = cifar_archive_bytes(tmp_path)
    checks = {"size": len(payload), "md5": hashlib.md5(payload).hexdigest()}
    checks["sha256"] = hashlib.sha256(payload).hexdigest()
    usb = tmp_path / "usb"
    with serving() as server:  # the machine with a network, whose connection drops once
        server.files["cifar-10-python.tar.gz"] = payload
        server.drop_after, server.drops = len(payload) // 2, 1
        online = dataclasses.replace(cifar.ARCHIVE, url=server.url(cifar.CIFAR10_ARCHIVE), **checks)
        use_archive(monkeypatch, cifar, online)
        assert main(["data", "download", "cifar10", "--to", str(usb), "--quiet"]) == 0
        assert [wanted for _, wanted in server.requests] == [None, f"bytes={len(payload) // 2}-"]
    out = capsys.readouterr().out
    assert f"cifar10: {usb / 'cifar-10-python.tar.gz'}" in out
    assert "downloaded, size, sha256 and md5 verified" in out
    assert f"pass --data {usb}/FILE" in out and f"(here {data_dir})" in out
    assert (usb / "cifar-10-python.tar.gz").read_bytes() == payload

    # The offline machine: the copy goes into its data directory, where 'cifar10' finds it.
    use_archive(monkeypatch, cifar, dataclasses.replace(online, url=dead_url("cifar.tar.gz")))
    data_dir.mkdir(parents=True)
    shutil.copy(usb / "cifar-10-python.tar.gz", data_dir)
    assert main(["data", "download", "cifar10"]) == 0
    assert "already there, size, sha256 and md5 verified" in capsys.readouterr().out
    dataset = load("cifar10", progress=False)
    assert len(dataset.train_labels) == 10 and len(dataset.class_names) == 10

    assert main(["data", "cache"]) == 0
    out = capsys.readouterr().out
    entry = next((data_dir / "arrays").iterdir())
    assert out.splitlines()[0].split() == ["AGE", "SIZE", "PATH", "SOURCE"]
    assert f"{entry}  {data_dir / 'cifar-10-python.tar.gz'}" in out and "1 entry" in out
    assert main(["data", "cache", "--older-than", "1h", "--clear"]) == 0
    assert "written over 1h ago" in capsys.readouterr().out and entry.exists()
    assert main(["data", "cache", "cifar-10-*", "--clear"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert not entry.exists() and (data_dir / "cifar-10-python.tar.gz").exists()
    assert main(["data", "cache", "nothing-*"]) == 2
    assert "no cache entry" in capsys.readouterr().err


def test_download_offline_says_where_a_copy_goes(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DAWNTRAIN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    offline = dataclasses.replace(tiny_imagenet.ARCHIVE, url=dead_url("tiny-imagenet-200.zip"))
    use_archive(monkeypatch, tiny_imagenet, offline)
    assert main(["data", "download", "tiny-imagenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dawntrain: error: cannot download http://127.0.0.1:")
    assert "`dawntrain data download tiny-imagenet --to DIR`" in err
    assert f"copy tiny-imagenet-200.zip into {tmp_path / 'xdg' / 'dawntrain'}" in err
    assert not list((tmp_path / "xdg" / "dawntrain").iterdir())  # no empty .part
