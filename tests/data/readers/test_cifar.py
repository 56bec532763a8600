"""The CIFAR-10 official python archive: the 'cifar10' name (cache directory, else downloaded), the
archive or its extracted folder as a path, and damaged or unsafe batch files."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dawntrain.data import load
from dawntrain.data.readers import cifar
from dawntrain.data.readers.folder import iter_encoded_images
from dawntrain.errors import DataError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DAWNTRAIN_DATA", str(cache))
    return cache


# ------------------------------------------------------------------ fake official archive


def py2_style_pickle(obj) -> bytes:
    """Pickle obj naming numpy.core, as the official (Python 2, numpy 1) files do."""
    data = pickle.dumps(obj, protocol=3)
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_cifar_batches(directory: Path) -> dict[str, np.ndarray]:
    """Write the seven official files (4 images per train batch, 3 test); return expected NHWC."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    expected = {}
    for name, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 3)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, len(CIFAR_CLASSES), n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        (directory / name).write_bytes(py2_style_pickle(batch))
        # Reference for the layout: pixel (y, x) of channel c is data[c * 1024 + y * 32 + x].
        nhwc = np.zeros((n, 32, 32, 3), np.uint8)
        for i in range(n):
            for c in range(3):
                for y in range(32):
                    nhwc[i, y, :, c] = data[i, c * 1024 + y * 32 : c * 1024 + y * 32 + 32]
        expected[name] = (nhwc, np.array(labels))
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(py2_style_pickle(meta))
    train = [expected[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": expected["test_batch"][0],
        "test_labels": expected["test_batch"][1],
    }


def make_cifar_archive(path: Path) -> dict[str, np.ndarray]:
    expected = make_cifar_batches(path.parent / "batches" / "cifar-10-batches-py")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(path.parent / "batches" / "cifar-10-batches-py", "cifar-10-batches-py")
    return expected


def assert_cifar(data, expected):
    for name, array in expected.items():
        np.testing.assert_array_equal(getattr(data, name), array, err_msg=name)
    assert data.train_labels.dtype == np.int64 and data.train_images.dtype == np.uint8
    assert data.class_names == CIFAR_CLASSES


def test_official_archive(tmp_path):
    expected = make_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    data = load(tmp_path / "cifar-10-python.tar.gz", progress=False)
    assert data.train_images.shape == (20, 32, 32, 3)
    assert_cifar(data, expected)
    assert "cifar-10-python.tar.gz" in data.source


def test_official_extracted_folder(tmp_path):
    expected = make_cifar_batches(tmp_path / "x" / "cifar-10-batches-py")
    for path in (tmp_path / "x", tmp_path / "x" / "cifar-10-batches-py"):
        assert_cifar(load(path, progress=False), expected)
    data = load(tmp_path / "x", progress=False)
    test_images, names = data.test_images, data.class_names
    np.testing.assert_array_equal(test_images, expected["test_images"])
    assert names == CIFAR_CLASSES


def test_cifar10_name_uses_the_cache_dir_copy_else_downloads(tmp_path, data_dir, monkeypatch):
    archive = tmp_path / "upstream" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    expected = make_cifar_archive(archive)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    fake = dataclasses.replace(cifar.ARCHIVE, url=archive.as_uri(), md5=md5, size=None, sha256=None)
    monkeypatch.setattr(cifar, "ARCHIVE", fake)
    assert_cifar(load("cifar10", progress=False), expected)
    assert (data_dir / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    archive.unlink()  # now found in the cache dir, no download
    assert_cifar(load("cifar10", progress=False), expected)


def test_cifar10_offline_says_how_to_use_a_local_copy(tmp_path, data_dir, monkeypatch):
    nowhere = (tmp_path / "nowhere.tar.gz").as_uri()
    monkeypatch.setattr(cifar, "ARCHIVE", dataclasses.replace(cifar.ARCHIVE, url=nowhere))
    with pytest.raises(DataError, match="cannot download") as info:
        load("cifar10", progress=False)
    message = str(info.value)
    assert "--data PATH/cifar-10-python.tar.gz" in message and "DAWNTRAIN_DATA" in message
    assert str(data_dir) in message and "\n" not in message


def test_damaged_batch_and_unsafe_pickle_are_data_errors(tmp_path):
    make_cifar_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_3").write_bytes(b"\x80\x03garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load(tmp_path / "b", progress=False)
    (tmp_path / "b" / "data_batch_3").write_bytes(pickle.dumps({b"data": os.system}))
    with pytest.raises(DataError, match="unexpected object"):
        load(tmp_path / "b", progress=False)


def test_iter_encoded_images_refuses_raw_pixels(tmp_path):
    make_cifar_batches(tmp_path / "b")
    with pytest.raises(DataError, match="raw CIFAR-10 pixels"):
        iter_encoded_images(tmp_path / "b")
    with pytest.raises(DataError, match="raw pixels"):  # refused before any download
        iter_encoded_images("cifar10")
