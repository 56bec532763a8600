"""load_dataset on every kind of source (built small in the test), its errors, and the cache."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.data import sources
from dawntrain.data.images import ConvertedToRGBWarning
from dawntrain.data.sources import iter_encoded_images, load_cifar10, load_dataset
from dawntrain.errors import DataError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
SHARED_JPEG = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.gz"


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
    data = load_dataset(tmp_path / "cifar-10-python.tar.gz", progress=False)
    assert data.train_images.shape == (20, 32, 32, 3)
    assert_cifar(data, expected)
    assert "cifar-10-python.tar.gz" in data.source


def test_official_extracted_folder_and_load_cifar10(tmp_path):
    expected = make_cifar_batches(tmp_path / "x" / "cifar-10-batches-py")
    for path in (tmp_path / "x", tmp_path / "x" / "cifar-10-batches-py"):
        assert_cifar(load_dataset(path, progress=False), expected)
    train_images, train_labels, test_images, test_labels, names = load_cifar10(
        tmp_path / "x", progress=False
    )
    np.testing.assert_array_equal(test_images, expected["test_images"])
    assert names == CIFAR_CLASSES


def test_cifar10_name_uses_the_cache_dir_copy_else_downloads(tmp_path, data_dir, monkeypatch):
    archive = tmp_path / "upstream" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    expected = make_cifar_archive(archive)
    monkeypatch.setattr(sources, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(sources, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    assert_cifar(load_dataset("cifar10", progress=False), expected)
    assert (data_dir / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    archive.unlink()  # now found in the cache dir, no download
    assert_cifar(load_dataset("cifar10", progress=False), expected)


def test_cifar10_offline_says_how_to_use_a_local_copy(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(sources, "CIFAR10_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(DataError, match="cannot download") as info:
        load_dataset("cifar10", progress=False)
    message = str(info.value)
    assert "--data PATH/cifar-10-python.tar.gz" in message and "DAWNTRAIN_DATA" in message
    assert str(data_dir) in message and "\n" not in message


def test_damaged_batch_and_unsafe_pickle_are_data_errors(tmp_path):
    make_cifar_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_3").write_bytes(b"\x80\x03garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_dataset(tmp_path / "b", progress=False)
    (tmp_path / "b" / "data_batch_3").write_bytes(pickle.dumps({b"data": os.system}))
    with pytest.raises(DataError, match="unexpected object"):
        load_dataset(tmp_path / "b", progress=False)


# ----------------------------------------------------------------------------- image folders


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_folder(root: Path, size: int = 8) -> dict[str, list[tuple[str, bytes, int]]]:
    """train/{cat,dog}/ and test/{cat,dog}/ with PNG, JPEG, one grayscale PNG and junk files.

    Returns the expected iter_encoded_images() result.
    """
    rng = np.random.default_rng(1)

    def pixels() -> np.ndarray:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)

    files = {
        "train/dog/b.png": png(pixels()),
        "train/dog/a.jpg": jpeg(pixels()),
        "train/cat/01.png": png(pixels()),
        "train/cat/02.png": png(pixels(), mode="L"),
        "test/cat/x.jpeg": jpeg(pixels()),
        "test/dog/y.png": png(pixels()),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for junk in ("train/.DS_Store", "train/cat/.DS_Store", "train/cat/._01.png", "test/notes.txt"):
        (root / junk).write_bytes(b"junk")
    (root / "train" / "dog" / "labels.txt").write_text("not an image")
    order = ["train/cat/01.png", "train/cat/02.png", "train/dog/a.jpg", "train/dog/b.png"]
    return {
        "train": [(n, files[n], int("/dog/" in n)) for n in order],
        "test": [(n, files[n], int("/dog/" in n)) for n in ("test/cat/x.jpeg", "test/dog/y.png")],
    }


def expected_arrays(encoded) -> dict[str, np.ndarray]:
    """Straightforward reference: Pillow decode of each file, converted to RGB."""
    out = {}
    for split, items in encoded.items():
        out[f"{split}_images"] = np.stack(
            [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data, _ in items]
        )
        out[f"{split}_labels"] = np.array([label for *_, label in items])
    return out


def load_quiet(source, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvertedToRGBWarning)
        return load_dataset(source, progress=False, **kw)


def check_folder(data, encoded):
    for name, array in expected_arrays(encoded).items():
        np.testing.assert_array_equal(getattr(data, name), array, err_msg=name)
    assert data.class_names == ["cat", "dog"]


def tar_folder(folder: Path, out: Path, top: str | None) -> None:
    with tarfile.open(out, "w:gz" if out.name.endswith(".gz") else "w") as tar:
        tar.add(folder, top or ".")


def zip_folder(folder: Path, out: Path, top: str | None) -> None:
    with zipfile.ZipFile(out, "w") as z:
        for path in sorted(folder.rglob("*"), reverse=True):  # the reader must sort
            name = path.relative_to(folder).as_posix()
            z.write(path, f"{top}/{name}" if top else name)
        z.writestr("__MACOSX/train/cat/._01.png", b"resource fork")


def test_image_folder_with_grayscale_and_junk(tmp_path):
    encoded = make_folder(tmp_path / "data")
    with pytest.warns(ConvertedToRGBWarning, match="converted 1 of 4 images"):
        data = load_dataset(tmp_path / "data", progress=False)
    check_folder(data, encoded)
    assert data.train_images.shape == (4, 8, 8, 3)
    names = [(n, label) for n, _, label in iter_encoded_images(tmp_path / "data")["train"]]
    assert names == [(n, label) for n, _, label in encoded["train"]]


@pytest.mark.parametrize("archive", ["data.tar.gz", "data.tar", "data.zip"])
@pytest.mark.parametrize("top", [None, "mydata"])
def test_image_folder_archives(tmp_path, archive, top):
    encoded = make_folder(tmp_path / "data")
    (zip_folder if archive.endswith(".zip") else tar_folder)(
        tmp_path / "data", tmp_path / archive, top
    )
    check_folder(load_quiet(tmp_path / archive), encoded)
    assert iter_encoded_images(tmp_path / archive) == encoded


def test_missing_path():
    with pytest.raises(DataError, match="no-such-dir: no such file or directory; pass 'cifar10'"):
        load_dataset("no-such-dir", progress=False)


def test_empty_class_folder_is_named(tmp_path):
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "test" / "dog" / "y.png").unlink()
    with pytest.raises(DataError, match=r"class folder test/dog/ holds no images"):
        load_quiet(tmp_path / "data")


def test_mismatched_class_sets_are_listed(tmp_path):
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "train" / "bird").mkdir()
    (tmp_path / "data" / "test" / "frog").mkdir()
    with pytest.raises(DataError, match="only in train: bird; only in test: frog"):
        load_quiet(tmp_path / "data")


def test_no_layout_and_several_data_sets(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(DataError, match="no train/<class>/ and test/<class>/ folders"):
        load_dataset(tmp_path / "flat", progress=False)
    make_folder(tmp_path / "two" / "a")
    make_folder(tmp_path / "two" / "b")
    with pytest.raises(DataError, match=r"several data sets \(a/, b/\)"):
        load_dataset(tmp_path / "two", progress=False)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="junk.tar.gz: not a readable"):
        load_dataset(tmp_path / "junk.tar.gz", progress=False)


def test_corrupt_jpeg_is_named(tmp_path):
    make_folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "dog" / "a.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=r"train/dog/a.jpg: cannot decode"):
        load_quiet(tmp_path / "data")
    tar_folder(tmp_path / "data", tmp_path / "data.tar", "top")
    with pytest.raises(DataError, match=r"top/train/dog/a.jpg in .*data.tar: cannot decode"):
        load_quiet(tmp_path / "data.tar")


def test_wrong_size_needs_resize(tmp_path):
    make_folder(tmp_path / "data")
    big = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    (tmp_path / "data" / "test" / "dog" / "y.png").write_bytes(png(big))
    with pytest.raises(DataError, match=r"test/dog/y.png: image is 10x12.*pass --resize"):
        load_quiet(tmp_path / "data")
    data = load_quiet(tmp_path / "data", resize=True)
    assert data.test_images.shape == (2, 8, 8, 3)
    small = Image.fromarray(big).resize((8, 8), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(data.test_images[1], np.asarray(small))


def test_resize_to_a_side_decodes_each_image_straight_to_it(tmp_path):
    """A folder of mixed sizes goes to the model's side in one resize per image, not first to
    the first image's size (a detour that loses detail and can need gigabytes for photos)."""
    make_folder(tmp_path / "data")
    big = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    (tmp_path / "data" / "test" / "dog" / "y.png").write_bytes(png(big))
    data = load_quiet(tmp_path / "data", resize=True, side=5)
    assert data.train_images.shape[1:] == data.test_images.shape[1:] == (5, 5, 3)
    direct = Image.fromarray(big).resize((5, 5), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(data.test_images[1], np.asarray(direct))
    at_eight = load_quiet(tmp_path / "data", resize=True)  # cached apart from the side-5 arrays
    assert at_eight.test_images.shape[1:3] == (8, 8)


def test_iter_encoded_images_refuses_raw_pixels(tmp_path):
    make_cifar_batches(tmp_path / "b")
    with pytest.raises(DataError, match="raw CIFAR-10 pixels"):
        iter_encoded_images(tmp_path / "b")
    with pytest.raises(DataError, match="raw pixels"):  # refused before any download
        iter_encoded_images("cifar10")


# ------------------------------------------------------------------------------------ cache


def test_second_load_comes_from_the_cache(tmp_path, data_dir, monkeypatch):
    encoded = make_folder(tmp_path / "data")
    first = load_quiet(tmp_path / "data")
    assert len(list((data_dir / "arrays").iterdir())) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(sources, "_build", no_decoding)
        second = load_dataset(tmp_path / "data", progress=False)
    check_folder(second, encoded)
    assert second.class_names == first.class_names
    # Changing a file's size or mtime changes the folder's key: decoded again.
    png_path = tmp_path / "data" / "train" / "cat" / "01.png"
    os.utime(png_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    load_quiet(tmp_path / "data")
    assert len(list((data_dir / "arrays").iterdir())) == 2


# ----------------------------------------------------------------------------- real data


def test_shipped_sample():
    data = load_dataset("sample", progress=False)
    assert data.train_images.shape == (5000, 32, 32, 3)
    assert data.test_images.shape == (1000, 32, 32, 3)
    assert len(data.class_names) == 10 and data.class_names[0] == "airplane"
    np.testing.assert_array_equal(np.bincount(data.train_labels), [500] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_labels), [100] * 10)
    assert sources.SAMPLE_PATH.stat().st_size < 8e6
    name, first, label = iter_encoded_images("sample")["test"][0]
    assert (name, label) == ("test/airplane/0000.jpg", 0)
    np.testing.assert_array_equal(data.test_images[0], np.asarray(Image.open(io.BytesIO(first))))


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.skipif(not SHARED_JPEG.exists(), reason=f"{SHARED_JPEG} not present")
def test_full_cifar10_jpeg_tarball():
    data = load_dataset(SHARED_JPEG, progress=False)
    assert data.train_images.shape == (50000, 32, 32, 3)
    assert data.test_images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(data.train_labels), [5000] * 10)
    start = time.perf_counter()
    again = load_dataset(SHARED_JPEG, progress=False)
    assert time.perf_counter() - start < 2.0
    np.testing.assert_array_equal(again.test_images[-100:], data.test_images[-100:])
