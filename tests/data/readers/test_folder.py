"""Image folders (directories, .tar, .tar.gz, .zip; the shipped sample): layouts, their errors,
resizing, and the decode-once cache."""

from __future__ import annotations

import io
import os
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.data import load
from dawntrain.data.images import ConvertedToRGBWarning
from dawntrain.data.readers import folder
from dawntrain.data.readers.folder import iter_encoded_images
from dawntrain.errors import DataError
from shared_data import CIFAR10_JPEG as SHARED_JPEG
from shared_data import needs


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DAWNTRAIN_DATA", str(cache))
    return cache


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
        return load(source, progress=False, **kw)


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
        data = load(tmp_path / "data", progress=False)
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
        load("no-such-dir", progress=False)


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
        load(tmp_path / "flat", progress=False)
    make_folder(tmp_path / "two" / "a")
    make_folder(tmp_path / "two" / "b")
    with pytest.raises(DataError, match=r"several data sets \(a/, b/\)"):
        load(tmp_path / "two", progress=False)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="junk.tar.gz: not a readable"):
        load(tmp_path / "junk.tar.gz", progress=False)


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


# ------------------------------------------------------------------------------------ cache


def test_second_load_comes_from_the_cache(tmp_path, data_dir, monkeypatch):
    encoded = make_folder(tmp_path / "data")
    first = load_quiet(tmp_path / "data")
    assert len(list((data_dir / "arrays").iterdir())) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(folder, "raw_at", no_decoding)
        second = load(tmp_path / "data", progress=False)
    check_folder(second, encoded)
    assert second.class_names == first.class_names
    # Changing a file's size or mtime changes the folder's key: decoded again.
    png_path = tmp_path / "data" / "train" / "cat" / "01.png"
    os.utime(png_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    load_quiet(tmp_path / "data")
    assert len(list((data_dir / "arrays").iterdir())) == 2


# ----------------------------------------------------------------------------- real data


def test_shipped_sample():
    data = load("sample", progress=False)
    assert data.train_images.shape == (5000, 32, 32, 3)
    assert data.test_images.shape == (1000, 32, 32, 3)
    assert len(data.class_names) == 10 and data.class_names[0] == "airplane"
    np.testing.assert_array_equal(np.bincount(data.train_labels), [500] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_labels), [100] * 10)
    assert folder.SAMPLE_PATH.stat().st_size < 8e6
    name, first, label = iter_encoded_images("sample")["test"][0]
    assert (name, label) == ("test/airplane/0000.jpg", 0)
    np.testing.assert_array_equal(data.test_images[0], np.asarray(Image.open(io.BytesIO(first))))


@pytest.mark.data
@pytest.mark.slow
@needs(SHARED_JPEG)
def test_full_cifar10_jpeg_tarball():
    data = load(SHARED_JPEG, progress=False)
    assert data.train_images.shape == (50000, 32, 32, 3)
    assert data.test_images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(data.train_labels), [5000] * 10)
    start = time.perf_counter()
    again = load(SHARED_JPEG, progress=False)
    assert time.perf_counter() - start < 2.0
    np.testing.assert_array_equal(again.test_images[-100:], data.test_images[-100:])
