"""Guards that keep a run's work: checked input, one run per directory, a clean stop on
Ctrl-C / SIGTERM, and optimizer steps undone when their loss is not finite.

- `checked_dataset`: loads the run's data (verifying a record manifest's sha256s), checks labels
  against the class list and image sizes against the model's input size (or resizes them).
- `run_lock`: `RUN/.lock` (pid, host) held with flock by rank 0 while a run writes RUN; a lock
  left by a killed run is free (the kernel dropped the flock) and is taken over with a note.
- `StopSignals`: the first SIGINT/SIGTERM sets a flag that the loop reads after each step; it
  then saves a checkpoint and raises `RunInterrupted` (exit 128 + signal). A second one stops now.
- `SkipNonFinite`: on_nonfinite = "skip-step" without a host sync per step.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dawntrain.errors import DataError

if TYPE_CHECKING:
    from dawntrain.config import Config

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None

LOCK_NAME = ".lock"
# The input side each model was designed for. Other sizes run (the models pool globally) but
# usually mean the wrong data: 64x64 Tiny ImageNet under a CIFAR preset costs 4x per step.
MODEL_IMAGE_SIZE = {"davidnet": 32, "fast": 32, "davidnet64": 64, "preact_resnet": 64}


# ---------------------------------------------------------------------------------- input


def expected_image_size(config: Config) -> int | None:
    """The side of the square images a run expects: config.image_size, else the model's."""
    return config.image_size or MODEL_IMAGE_SIZE.get(config.model)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, size, size, 3), bilinear as the data readers resize."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(
            Image.fromarray(np.asarray(image)).resize((size, size), Image.Resampling.BILINEAR)
        )
    return out


def _verify_manifest(source: str) -> None:
    """A record directory's shards must still have the sha256s its manifest lists."""
    from dawntrain.data.records import MANIFEST, verify_manifest

    if Path(source).is_dir() and (Path(source) / MANIFEST).is_file():
        verify_manifest(source)


def check_labels(dataset, where: str) -> None:
    """Every train and test label indexes dataset.class_names."""
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


def checked_dataset(config: Config, dataset=None):
    """The run's data: `dataset` as given, else loaded from config.data and checked.

    Loaded data must have the model's input size (`expected_image_size`) unless config.resize,
    which resizes it; a dataset passed in code is used at its size (its caller chose it)."""
    loaded = dataset is None
    if loaded:
        from dawntrain.data import load

        _verify_manifest(config.data)
        side = expected_image_size(config) if config.resize else None
        try:
            dataset = load(config.data, resize=config.resize, side=side)
        except OSError as e:  # a file the readers did not expect to fail, e.g. a broken link
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DataError(
                f"{e.filename or config.data}: cannot read it ({e.strerror or e}); fix the file "
                "or remove it from the data set"
            ) from e
    where = getattr(dataset, "source", None) or config.data
    check_labels(dataset, where)
    size = expected_image_size(config)
    height, width = dataset.train_images.shape[1:3]
    if not loaded or size is None or (height, width) == (size, size):
        return dataset
    if not config.resize:
        raise DataError(
            f"{where}: images are {width}x{height}, the {config.preset} preset (model "
            f"{config.model}) expects {size}x{size}; pass --resize to resize them, or "
            f"--set image_size={height} to train at their size"
        )
    dataset.train_images = resize_images(dataset.train_images, size)
    if dataset.test_images is not None:
        dataset.test_images = resize_images(dataset.test_images, size)
    return dataset
