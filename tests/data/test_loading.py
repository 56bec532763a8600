"""checked: the data a run trains on (size expectation, resizing, label checks, given data sets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.data import ImageDataset, checked, load
from dawntrain.errors import DataError


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def folder(root: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_size_is_checked_or_decoded_straight_to_the_side(tmp_path):
    source = folder(tmp_path / "d", 20)
    with pytest.raises(DataError, match="20x20, the x preset expects 16x16; pass --resize"):
        checked(source, side=16, resize=False, what="the x preset")
    data = checked(source, side=16, resize=True, what="the x preset")
    assert data.train_images.shape == (4, 16, 16, 3) and data.test_images.shape == (4, 16, 16, 3)
    assert checked(source, side=None, resize=False, what="-").train_images.shape[1:3] == (20, 20)
    assert checked(str(source), side=20, resize=False, what="-").class_names == ["c0", "c1"]


def test_decoding_to_the_side_equals_resizing_the_stored_arrays(tmp_path):
    """One filter: a folder decoded straight to the side has the pixels that resizing its
    stored-size arrays (as checked does for records and CIFAR batches) gives."""
    source = folder(tmp_path / "d", 20)
    stored = load(source, progress=False)
    data = checked(source, side=8, resize=True, what="-")
    ref = np.asarray(
        Image.fromarray(np.asarray(stored.train_images[0])).resize(
            (8, 8), Image.Resampling.BILINEAR
        )
    )
    assert data.train_images.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(data.train_images[0], ref)


def test_a_data_set_given_in_code_keeps_its_size_and_has_its_labels_checked():
    images = np.zeros((3, 5, 5, 3), np.uint8)
    labels = np.array([0, 1, 0])
    given = ImageDataset(images, labels, images, labels, ["a", "b"], "in memory")
    assert checked(given, side=32, resize=False, what="-") is given
    bad = ImageDataset(images, labels, images, np.array([0, 2, 0]), ["a", "b"], "in memory")
    with pytest.raises(DataError, match="in memory: test label 2 at index 1 is outside 0..1"):
        checked(bad, side=None, resize=False, what="-")
