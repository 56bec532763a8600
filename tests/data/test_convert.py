"""`data convert` on every kind of source (built small here), shard arithmetic, re-sharding, and
loading converted directories for training (with the decode-once cache)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.data import load
from dawntrain.data.codec.example import decode_example
from dawntrain.data.codec.tfrecord import read_records
from dawntrain.data.convert import convert, shard_counts
from dawntrain.data.images import ConvertedToRGBWarning
from dawntrain.data.readers import records
from dawntrain.data.readers.records import record_splits
from dawntrain.errors import ConfigError, DataError


def _sibling(name: str):
    """A helper module among the tests (pytest's importlib mode puts none on sys.path)."""
    spec = importlib.util.spec_from_file_location(
        f"_{name}", Path(__file__).parent / "readers" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_cifar_archive = _sibling("test_cifar").make_cifar_archive
write_fake_tiny_imagenet = _sibling("test_tiny_imagenet").write_fake_tiny_imagenet


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_folder(root: Path) -> dict[str, list[tuple[str, bytes, int]]]:
    """train/ and test/ of classes cat, dog: JPEG and PNG (one grayscale), and a junk file.
    Returns {split: [(name, original bytes, label)]} in the readers' order."""
    rng = np.random.default_rng(3)
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for label, cls in enumerate(("cat", "dog")):
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                buf = io.BytesIO()
                if i % 2:
                    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
                    name = f"{split}/{cls}/{i}.jpg"
                else:
                    image = Image.fromarray(pixels if i else pixels[..., 0])  # 0: grayscale
                    image.save(buf, "PNG")
                    name = f"{split}/{cls}/{i}.png"
                files[name] = (buf.getvalue(), label)
    for name, (data, _) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "train" / ".DS_Store").write_bytes(b"junk")
    return {
        split: [(n, d, label) for n, (d, label) in sorted(files.items()) if n.startswith(split)]
        for split in ("train", "test")
    }


def features_of(directory: Path, split: str) -> list[dict]:
    paths = record_splits(directory)[0][split]
    return [decode_example(r) for r in read_records(paths)]


def quiet_load(source, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvertedToRGBWarning)
        return load(source, progress=False, **kw)


def test_image_folder_keeps_the_original_bytes_and_writes_the_manifest(tmp_path):
    expected = make_folder(tmp_path / "folder")
    out = tmp_path / "records"
    manifest = convert(tmp_path / "folder", out, compression="none", progress=False)

    for split, items in expected.items():
        features = features_of(out, split)
        assert [f["image/encoded"][0] for f in features] == [data for _, data, _ in items]
        assert [f["image/class/label"][0] for f in features] == [label for *_, label in items]
        assert [f["image/class/text"][0] for f in features] == [
            [b"cat", b"dog"][label] for *_, label in items
        ]
        formats = [f["image/format"][0] for f in features]
        assert formats == [b"jpeg" if n.endswith(".jpg") else b"png" for n, *_ in items]
        assert {(f["image/height"][0], f["image/width"][0]) for f in features} == {(8, 8)}

    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["layout"] == "image" and manifest["compression"] == "none"
    assert manifest["classes"] == ["cat", "dog"] and manifest["unlabelled"] == []
    assert str(tmp_path / "folder") in manifest["source"]
    # 6 train records: at most one a shard; the 4 test records keep that shard size.
    assert [s["records"] for s in manifest["splits"]["train"]] == [1] * 6
    assert [s["records"] for s in manifest["splits"]["test"]] == [1] * 4
    for shards in manifest["splits"].values():
        for s in shards:
            assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [s["file"] for ss in manifest["splits"].values() for s in ss]
    )
    assert (out / "train-00005-of-00006.tfrecord").is_file()

    # Decoding the records gives exactly what decoding the folder gives.
    data, folder = load(str(out)), quiet_load(tmp_path / "folder")
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(data, name), getattr(folder, name), err_msg=name)
    assert data.class_names == ["cat", "dog"]


def test_cifar_archive_pixels_are_png_encoded_losslessly(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    expected = make_cifar_archive(archive)
    manifest = convert(archive, tmp_path / "records", shards=2, progress=False)
    assert manifest["compression"] == "gzip"
    assert [s["file"] for s in manifest["splits"]["train"]] == [
        "train-00000-of-00002.tfrecord.gz",
        "train-00001-of-00002.tfrecord.gz",
    ]
    # 20 train records in 2 shards of 10; 3 test records keep the shard size: 1 shard.
    assert [s["records"] for s in manifest["splits"]["train"]] == [10, 10]
    assert [s["records"] for s in manifest["splits"]["test"]] == [3]
    assert {f["image/format"][0] for f in features_of(tmp_path / "records", "train")} == {b"png"}
    data = load(str(tmp_path / "records"))
    for name, array in expected.items():
        np.testing.assert_array_equal(getattr(data, name), array, err_msg=name)
    assert (
        data.class_names == manifest["classes"] == ["airplane", "automobile", "bird", "cat", "deer"]
    )


def test_tiny_imagenet_train_val_and_unlabelled_test(tmp_path):
    top = write_fake_tiny_imagenet(tmp_path / "data")
    out = tmp_path / "records"
    manifest = convert(top, out, shard_size=5, progress=False)
    assert [s["records"] for s in manifest["splits"]["train"]] == [4, 4, 4]  # 12 in 3 shards
    assert [s["records"] for s in manifest["splits"]["val"]] == [3, 3]
    assert [s["records"] for s in manifest["splits"]["test"]] == [2]
    assert manifest["unlabelled"] == ["test"]
    assert manifest["classes"] == ["thing 0, stuff", "thing 1, stuff", "thing 2, stuff"]
    assert manifest["wnids"] == ["n09999999", "n01000001", "n05555555"]
    test = features_of(out, "test")
    assert [f["image/class/label"][0] for f in test] == [-1, -1]
    assert [f["image/encoded"][0] for f in test] == [
        (top / f"test/images/test_{i}.JPEG").read_bytes() for i in range(2)
    ]

    # Training data: train, and val as the test set (test has no labels).
    data, reference = load(str(out)), load(top, progress=False)  # the folder: val as test too
    np.testing.assert_array_equal(data.train_images, reference.train_images)
    np.testing.assert_array_equal(data.train_labels, reference.train_labels)
    np.testing.assert_array_equal(data.test_images, reference.test_images)
    np.testing.assert_array_equal(data.test_labels, reference.test_labels)
    assert data.class_names == reference.class_names

    seed = convert(top, tmp_path / "seed", layout="seed", progress=False)
    assert sorted(seed["splits"]) == ["train", "val"] and seed["unlabelled"] == []
    assert any("test: left out" in note for note in seed["notes"])


def test_shard_counts():
    mb = 10**6
    # Default: the original's 10 train shards, other splits at the same shard size.
    assert shard_counts({"train": (50000, 70 * mb), "test": (10000, 14 * mb)}) == {
        "train": 10,
        "test": 2,
    }
    # More train shards once a shard would pass ~100 MB.
    assert shard_counts({"train": (1000, 2500 * mb), "val": (100, 250 * mb)}) == {
        "train": 25,
        "val": 3,
    }
    assert shard_counts({"train": (7, 100), "test": (2, 10)}) == {"train": 7, "test": 2}
    assert shard_counts({"train": (100, 1), "test": (25, 1)}, shards=4) == {"train": 4, "test": 1}
    assert shard_counts({"train": (100, 1), "test": (26, 1)}, shards=4) == {"train": 4, "test": 2}
    assert shard_counts({"test": (9, 1), "val": (3, 1)}, shards=3) == {"test": 3, "val": 1}
    assert shard_counts({"train": (10, 1), "test": (0, 0)}, shard_size=3) == {"train": 4}
    with pytest.raises(ConfigError, match="not both"):
        shard_counts({}, shards=2, shard_size=2)
    with pytest.raises(ConfigError, match="at least 1"):
        shard_counts({}, shard_size=0)


def test_reshard_copies_records_byte_for_byte(tmp_path):
    top = write_fake_tiny_imagenet(tmp_path / "data")
    first = convert(top, tmp_path / "a", compression="gzip", progress=False)
    second = convert(tmp_path / "a", tmp_path / "b", shards=2, compression="zlib", progress=False)
    for split in ("train", "val", "test"):
        before = list(read_records(record_splits(tmp_path / "a")[0][split]))
        after = list(read_records(record_splits(tmp_path / "b")[0][split]))
        assert before == after, split
    assert [s["file"] for s in second["splits"]["train"]] == [
        "train-00000-of-00002.tfrecord.zz",
        "train-00001-of-00002.tfrecord.zz",
    ]
    assert second["classes"] == first["classes"] and second["unlabelled"] == ["test"]

    # A glob of files without a manifest: splits from the file names, classes from the records.
    third = convert(str(tmp_path / "b" / "*.tfrecord*"), tmp_path / "c", progress=False)
    assert sorted(third["splits"]) == ["test", "train", "val"]
    assert third["unlabelled"] == ["test"]  # from the manifest the glob's files are listed in
    (tmp_path / "b" / "manifest.json").unlink()
    fourth = convert(str(tmp_path / "b" / "*.tfrecord*"), tmp_path / "d", progress=False)
    assert fourth["classes"] == first["classes"] and fourth["unlabelled"] == ["test"]


def test_out_dir_with_records_and_bad_options_are_refused(tmp_path):
    make_folder(tmp_path / "folder")
    convert(tmp_path / "folder", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="already holds record files"):
        convert(tmp_path / "folder", tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="layout"):
        convert(tmp_path / "folder", tmp_path / "x", layout="png", progress=False)
    with pytest.raises(ConfigError, match="compression"):
        convert(tmp_path / "folder", tmp_path / "x", compression="bz2", progress=False)


def test_damaged_source_image_is_named(tmp_path):
    make_folder(tmp_path / "folder")
    bad = tmp_path / "folder" / "train" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=r"train/dog/1\.jpg: cannot decode"):
        convert(tmp_path / "folder", tmp_path / "out", progress=False)


def test_second_load_comes_from_the_cache_until_a_shard_changes(tmp_path, monkeypatch):
    make_folder(tmp_path / "folder")
    out = tmp_path / "records"
    convert(tmp_path / "folder", out, compression="none", progress=False)
    first = load(str(out))
    decodes = []
    original = records.load_record_split
    monkeypatch.setattr(
        records, "load_record_split", lambda *a, **k: decodes.append(a) or original(*a, **k)
    )
    again = load(str(out))
    assert decodes == []  # served by the memory-mapped cache, nothing decoded
    np.testing.assert_array_equal(again.train_images, first.train_images)
    glob_data = load(str(out / "*.tfrecord*"))  # same shards, same key: cached too
    assert decodes == [] and glob_data.class_names == first.class_names

    # Re-writing a shard (new mtime and size) makes the next load decode again.
    shard = out / "train-00000-of-00006.tfrecord"
    data = shard.read_bytes()
    shard.write_bytes(data + data)  # now holds its record twice
    assert len(load(str(out)).train_labels) == 7 and len(decodes) == 2
