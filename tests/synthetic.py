"""Small synthetic data sets for tests that train: learnable (class-dependent brightness), fast;
and what a model is fed when it trains on one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dawntrain.data import ImageDataset


def tiny_dataset(
    n: int = 96,
    classes: int = 4,
    size: int = 16,
    n_test: int = 32,
    seed: int = 0,
    noise: int = 100,
    step: int = 40,
    class_names: list[str] | None = None,
) -> ImageDataset:
    """uint8 NHWC images: uniform noise in [0, noise) plus `step` × label; the first n_test
    training images double as the test set."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    pixels = rng.integers(0, noise, (n, size, size, 3)) + labels[:, None, None, None] * step
    images = pixels.astype(np.uint8)
    return ImageDataset(
        train_images=images,
        train_labels=labels,
        test_images=images[:n_test],
        test_labels=labels[:n_test],
        class_names=class_names or [f"c{i}" for i in range(classes)],
        source=f"synthetic data ({n} images of {classes} classes)",
    )


def image_folder(root: Path, per_class: int = 24, size: int = 32, classes: int = 3) -> Path:
    """train/<class>/*.png and test/<class>/*.png for `classes` classes (class0, class1, ...),
    as users lay them out."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 3)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (size, size, 3)) + 60 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def first_epoch_inputs(sets: list[str], data: ImageDataset) -> list:
    """The batches a `fast` run resolved with `sets` feeds its model in epoch 0, step by step."""
    from dawntrain.config import resolve
    from dawntrain.engine.build import build
    from dawntrain.engine.step import StepStats

    run = build(resolve("fast", sets=sets), data)
    inputs = []
    run.model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
    stats = StepStats.zeros(run.device)
    run.start_epoch(0)
    for step, (x, y) in enumerate(run.batches(0)):
        run.step(stats, x, y, 0, step)
    return inputs
