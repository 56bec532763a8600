"""Tiny ImageNet reader: the listing and decoding of every split (folder, zip, tar.gz; errors),
and the training data it reads (train, and val as the test set)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dawntrain.data import images as images_module
from dawntrain.data import load
from dawntrain.data.readers.tiny_imagenet import list_tiny_imagenet
from dawntrain.errors import DataError
from shared_data import TINY_IMAGENET_SUBSET as SUBSET
from shared_data import needs

# Deliberately not sorted: labels must follow wnids.txt, not the alphabet.
WNIDS = ["n09999999", "n01000001", "n05555555", "n02222222"]


def _jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB", size: int = 64) -> None:
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path, "JPEG", quality=90)


def write_fake_tiny_imagenet(
    root: Path, classes: int = 3, train_per_class: int = 4, val_per_class: int = 2, test: int = 2
) -> Path:
    """The official layout with real 64x64 JPEGs (the first train image grayscale), stray files
    and a words.txt with extra wnids. Returns the tiny-imagenet-200/ folder."""
    rng = np.random.default_rng(0)
    top = root / "tiny-imagenet-200"
    wnids = WNIDS[:classes]
    top.mkdir(parents=True)
    (top / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = [f"{w}\tthing {i}, stuff" for i, w in enumerate(wnids)] + ["n00000000\tentity"]
    (top / "words.txt").write_text("\n".join(sorted(words)) + "\n")
    for c, wnid in enumerate(wnids):
        lines = []
        for i in range(train_per_class):
            mode = "L" if c == 0 and i == 0 else "RGB"
            _jpeg(top / f"train/{wnid}/images/{wnid}_{i}.JPEG", rng, mode)
            lines.append(f"{wnid}_{i}.JPEG\t{i}\t{c}\t{60 - i}\t63")
        (top / f"train/{wnid}/{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    annotations = []
    for i in range(classes * val_per_class):
        wnid = wnids[(i * 7) % classes]
        _jpeg(top / f"val/images/val_{i}.JPEG", rng)
        annotations.append(f"val_{i}.JPEG\t{wnid}\t1\t2\t30\t40")
    (top / "val/val_annotations.txt").write_text("\n".join(annotations) + "\n")
    for i in range(test):
        _jpeg(top / f"test/images/test_{i}.JPEG", rng)
    (top / "train/.DS_Store").write_bytes(b"\0\1junk")
    (top / f"train/{wnids[0]}/images/.DS_Store").write_bytes(b"\0\1junk")
    return top


def _zip(top: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for path in sorted(top.rglob("*")):
            z.write(path, path.relative_to(top.parent).as_posix())
        z.writestr("__MACOSX/tiny-imagenet-200/._wnids.txt", b"\0\5mac")
    return dest


def _load(source, **kw) -> SimpleNamespace:
    """Every split of the listing, decoded, with the listing's files, boxes and notes."""
    listing = list_tiny_imagenet(source)
    splits = ("train", "val", "test")
    d = SimpleNamespace(**{f"{s}_images": listing.decode(s, progress=False, **kw) for s in splits})
    for split in splits:
        setattr(d, f"{split}_files", [PurePosixPath(f).name for f in listing.files(split)])
    d.train_labels, d.val_labels = listing.labels("train"), listing.labels("val")
    d.class_names, d.class_words = listing.wnids, listing.class_words
    d.boxes, d.notes = listing.boxes, listing.notes
    return d


def _pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def fake(tmp_path) -> Path:
    return write_fake_tiny_imagenet(tmp_path / "data")


def test_folder_layout(fake):
    d = _load(fake)
    assert d.class_names == WNIDS[:3]
    assert d.class_words == ["thing 0, stuff", "thing 1, stuff", "thing 2, stuff"]
    assert d.train_images.shape == (12, 64, 64, 3) and d.train_images.dtype == np.uint8
    assert d.val_images.shape == (6, 64, 64, 3) and d.test_images.shape == (2, 64, 64, 3)
    assert d.train_labels.dtype == np.int64 and d.val_labels.dtype == np.int64
    assert d.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert d.train_files[:4] == [f"{WNIDS[0]}_{i}.JPEG" for i in range(4)]
    # val labels from val_annotations.txt: val_i is wnids[(7 i) % 3].
    assert d.val_files == [f"val_{i}.JPEG" for i in range(6)]
    assert d.val_labels.tolist() == [(i * 7) % 3 for i in range(6)]
    assert d.test_files == ["test_0.JPEG", "test_1.JPEG"]
    # Pixels equal a plain Pillow decode of the file each row names.
    for i, name in enumerate(d.train_files):
        wnid = d.class_names[d.train_labels[i]]
        np.testing.assert_array_equal(d.train_images[i], _pil(fake / f"train/{wnid}/images/{name}"))
    for i, name in enumerate(d.val_files):
        np.testing.assert_array_equal(d.val_images[i], _pil(fake / f"val/images/{name}"))
    np.testing.assert_array_equal(d.test_images[1], _pil(fake / "test/images/test_1.JPEG"))
    gray = d.train_images[0]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert len(d.notes) == 1 and "train: converted 1 of 12" in d.notes[0]
    assert d.boxes[f"{WNIDS[1]}_2.JPEG"] == (WNIDS[1], 2, 1, 58, 63)
    assert d.boxes["val_1.JPEG"] == (WNIDS[1], 1, 2, 30, 40)
    assert len(d.boxes) == 12 + 6


def test_zip_tar_and_parent_folder_match_the_folder(fake, tmp_path):
    ref = _load(fake)
    tgz = tmp_path / "tin.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(fake, arcname="tiny-imagenet-200")
    for source in (_zip(fake, tmp_path / "tiny-imagenet-200.zip"), tgz, fake.parent):
        d = _load(source)
        for name in ("train_images", "train_labels", "val_images", "val_labels", "test_images"):
            np.testing.assert_array_equal(getattr(d, name), getattr(ref, name), err_msg=name)
        assert (d.train_files, d.val_files, d.test_files) == (
            ref.train_files,
            ref.val_files,
            ref.test_files,
        )
        assert (d.class_names, d.class_words, d.boxes) == (
            ref.class_names,
            ref.class_words,
            ref.boxes,
        )


def test_process_pool_matches_serial(fake, monkeypatch):
    serial = _load(fake, workers=1)
    monkeypatch.setattr(images_module, "PARALLEL_MIN_ITEMS", 1)
    monkeypatch.setattr(images_module, "CHUNK_SIZE", 5)
    pooled = _load(fake, workers=2)
    np.testing.assert_array_equal(pooled.train_images, serial.train_images)
    np.testing.assert_array_equal(pooled.val_images, serial.val_images)
    assert pooled.notes == serial.notes
    (fake / "val/images/val_3.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="val_3.JPEG"):
        _load(fake, workers=2)


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="nope.zip: not found"):
        _load(tmp_path / "nope.zip")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: neither a folder"):
        _load(tmp_path / "notes.txt")


def test_missing_wnids(fake, tmp_path):
    (fake / "wnids.txt").unlink()
    with pytest.raises(DataError, match="wnids.txt: not found"):
        _load(fake)
    with pytest.raises(DataError, match="no wnids.txt in this archive"):
        _load(_zip(fake, tmp_path / "x.zip"))


def test_wnid_without_train_folder(fake):
    _edit(fake / "wnids.txt", WNIDS[2], f"{WNIDS[2]}\n{WNIDS[3]}")
    with pytest.raises(DataError, match=f"train/{WNIDS[3]}/: missing, but wnids.txt lists"):
        _load(fake)


def test_class_folder_without_images(fake):
    for path in (fake / f"train/{WNIDS[1]}/images").glob("*.JPEG"):
        path.unlink()
    with pytest.raises(DataError, match=f"train/{WNIDS[1]}/images/: no images"):
        _load(fake)


def test_annotation_with_unknown_wnid(fake):
    _edit(fake / "val/val_annotations.txt", f"val_2.JPEG\t{WNIDS[2]}", f"val_2.JPEG\t{WNIDS[3]}")
    with pytest.raises(DataError, match=f"val_annotations.txt: val_2.JPEG is labeled {WNIDS[3]}"):
        _load(fake)


def test_annotation_naming_a_missing_image(fake):
    (fake / "val/images/val_4.JPEG").unlink()
    with pytest.raises(DataError, match="names val_4.JPEG, but .*val/images/val_4.JPEG does not"):
        _load(fake)


def test_unannotated_val_image_and_malformed_line(fake):
    _edit(fake / "val/val_annotations.txt", "val_5.JPEG", "val_5.JPEG\textra")
    with pytest.raises(DataError, match="val_annotations.txt, line 6: expected 6 fields"):
        _load(fake)
    _edit(fake / "val/val_annotations.txt", "val_5.JPEG\textra", "val_5.JPEG")
    path = fake / "val/val_annotations.txt"
    path.write_text(
        "".join(line for line in path.read_text().splitlines(True) if "val_1." not in line)
    )
    with pytest.raises(DataError, match="val/images/val_1.JPEG: not in val/val_annotations.txt"):
        _load(fake)


def test_wrong_size_image(fake):
    path = fake / f"train/{WNIDS[1]}/images/{WNIDS[1]}_3.JPEG"
    _jpeg(path, np.random.default_rng(1), size=80)
    with pytest.raises(DataError, match=f"{WNIDS[1]}_3.JPEG: image is 80x80"):
        _load(fake)
    d = _load(fake, resize=True)
    assert d.train_images.shape == (12, 64, 64, 3)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    ref = np.asarray(rgb.resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(d.train_images[7], ref)
    small = _load(fake, resize=True, side=32)  # a 32x32 model's input: one resize from 80x80
    assert small.train_images.shape == (12, 32, 32, 3)
    ref = np.asarray(rgb.resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small.train_images[7], ref)


def test_truncated_and_unreadable_images(fake):
    path = fake / "test/images/test_1.JPEG"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="test_1.JPEG: cannot decode"):
        _load(fake)
    path.write_bytes(b"GIF89a but not really")
    with pytest.raises(DataError, match="test_1.JPEG"):
        _load(fake)


def test_training_data_is_train_and_val_as_the_test_set(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    ref = _load(fake)
    d = load(fake, progress=False)
    np.testing.assert_array_equal(d.train_images, ref.train_images)
    np.testing.assert_array_equal(d.train_labels, ref.train_labels)
    np.testing.assert_array_equal(d.test_images, ref.val_images)
    np.testing.assert_array_equal(d.test_labels, ref.val_labels)
    assert d.class_names == ref.class_words and "Tiny ImageNet at" in d.source
    small = load(fake, progress=False, resize=True, side=32)
    assert small.train_images.shape == (12, 32, 32, 3)


@pytest.mark.data
@needs(SUBSET)
def test_real_subset():
    d = _load(SUBSET)
    assert len(d.class_names) == 20 and d.class_names[0] == "n02124075"
    assert d.class_words[0] == "Egyptian cat"
    assert d.train_images.shape == (10_000, 64, 64, 3)
    assert d.val_images.shape == (1_000, 64, 64, 3)
    assert d.test_images.shape == (500, 64, 64, 3) and len(d.test_files) == 500
    assert np.bincount(d.train_labels).tolist() == [500] * 20
    assert np.bincount(d.val_labels).tolist() == [50] * 20
    assert d.val_files[0] == "val_1.JPEG" and d.class_names[d.val_labels[0]] == "n04067472"
    assert len(d.boxes) == 11_000
    # 138 + 15 + 11 grayscale JPEGs in this subset, converted to RGB.
    assert [n.split(" of ")[0] for n in d.notes] == [
        "train: converted 138",
        "val: converted 15",
        "test: converted 11",
    ]
