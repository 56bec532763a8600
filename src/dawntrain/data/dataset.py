"""ImageDataset: what every reader returns and training uses, and the checks made before a run
(labels index the class list; images have the side the model expects, else are resized)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dawntrain.data.images import resize_images
from dawntrain.errors import DataError


@dataclass
class ImageDataset:
    train_images: np.ndarray  # (N, H, W, 3) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str  # what was loaded, for logs and reports

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: str) -> ImageDataset:
        """From the arrays a cache entry holds (train/test images and labels, class_names)."""
        return cls(
            arrays["train_images"],
            arrays["train_labels"],
            arrays["test_images"],
            arrays["test_labels"],
            [str(name) for name in arrays["class_names"]],
            source=source,
        )


def check_labels(dataset, where: str) -> None:
    """Every train and test label indexes dataset.class_names (any object with those fields)."""
    n = len(dataset.class_names)
    for split in ("train", "test"):
        labels = getattr(dataset, f"{split}_labels", None)
        if labels is None or not len(labels):
            continue
        bad = np.flatnonzero((np.asarray(labels) < 0) | (np.asarray(labels) >= n))
        if len(bad):
            raise DataError(
                f"{where}: {split} label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
                f"0..{n - 1} ({n} classes; {len(bad)} such labels); fix the labels or the class list"
            )


def sized(dataset, side: int | None, resize: bool, what: str, where: str):
    """`dataset` with side x side images: as it is when they are (or side is None), resized
    (bilinear) when `resize`, else a DataError saying what expects which size."""
    height, width = dataset.train_images.shape[1:3]
    if side is None or (height, width) == (side, side):
        return dataset
    if not resize:
        raise DataError(
            f"{where}: images are {width}x{height}, {what} expects {side}x{side}; pass --resize "
            f"to resize them, or --set image_size={height} to train at their size"
        )
    dataset.train_images = resize_images(dataset.train_images, side)
    if dataset.test_images is not None:
        dataset.test_images = resize_images(dataset.test_images, side)
    return dataset
