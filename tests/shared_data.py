"""The real data and TensorFlow's fixtures that ../shared (beside the checkout) holds where the
project is developed and in CI; a user's clone has none of it, so tests that need a file skip
with `needs(path)`, saying where it was looked for."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
TFRECORD_FIXTURES = SHARED / "fixtures" / "tfrecord"
CIFAR10_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"
TINY_IMAGENET_SUBSET = SHARED / "data" / "tiny-imagenet-200-subset20.tar.gz"


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not found (../shared absent)")
