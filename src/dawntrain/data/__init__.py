"""Data sources: each decodes once into uint8 arrays that the training engine keeps on its device.

`load(source)` picks the reader from the source's name or shape:
  cifar10 | sample | PATH to the CIFAR-10 archive or an image folder (dawntrain.data.sources),
  tiny-imagenet | PATH to tiny-imagenet-200/ or its .zip/.tar.gz (dawntrain.data.tiny_imagenet),
  PATH to a directory of TFRecord shards or a glob of record files (dawntrain.data.records).
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import numpy as np

from dawntrain.data.sources import ImageDataset, default_cache_dir, load_cifar10, load_dataset

__all__ = ["ImageDataset", "load", "load_cifar10", "load_dataset"]

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# The official zip: 248,100,043 bytes; this md5 is the one published with the data loaders that use it.
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def _is_records(source: str) -> bool:
    if any(c in source for c in "*?["):
        return bool(glob.glob(source))
    path = Path(source)
    if path.is_dir():
        return (path / "manifest.json").is_file() or any(path.glob("*.tfrecord*"))
    return ".tfrecord" in path.name


def _is_tiny_imagenet(source: str) -> bool:
    if source == "tiny-imagenet":
        return True
    path = Path(source)
    return (path / "wnids.txt").is_file() or path.name.startswith("tiny-imagenet")


def _file_key(path: Path) -> str:
    """Content hash of a file, or of a folder's (path, size, mtime) listing: cheap and stable."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    else:
        for root, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(
                    f"{os.path.relpath(os.path.join(root, name), path)}:{st.st_size}:{st.st_mtime_ns}\n".encode()
                )
    return h.hexdigest()[:24]


def load_tiny_imagenet_dataset(
    source: str, progress: bool = True, resize: bool = False
) -> ImageDataset:
    """Tiny ImageNet as an ImageDataset: the official val set (labelled) plays the test set."""
    from dawntrain.data.cache import cached_arrays
    from dawntrain.data.download import download
    from dawntrain.data.tiny_imagenet import load_tiny_imagenet

    cache_dir = default_cache_dir()
    if source == "tiny-imagenet":
        local = [cache_dir / "tiny-imagenet-200", cache_dir / "tiny-imagenet-200.zip"]
        found = next((p for p in local if p.exists()), None)
        if found is None:
            found = cache_dir / "tiny-imagenet-200.zip"
            download(TINY_IMAGENET_URL, found, md5=TINY_IMAGENET_MD5, progress=progress)
        path = found
    else:
        path = Path(source)

    def build() -> dict[str, np.ndarray]:
        t = load_tiny_imagenet(path, progress=progress, resize=resize)
        return {
            "train_images": t.train_images,
            "train_labels": t.train_labels,
            "test_images": t.val_images,
            "test_labels": t.val_labels,
            "class_names": np.array(t.class_words),
        }

    key = f"tiny-imagenet-{_file_key(path)}{'-resized' if resize else ''}"
    arrays = cached_arrays(key, build, cache_dir, meta={"source": str(path)})
    return ImageDataset(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        [str(c) for c in arrays["class_names"]],
        source=f"Tiny ImageNet at {path}",
    )


def load_records_dataset(source: str) -> ImageDataset:
    from dawntrain.data.records import load_record_split

    train_x, train_y, classes = load_record_split(source, "train")
    try:
        test_x, test_y, _ = load_record_split(source, "test")
    except Exception:
        test_x, test_y = load_record_split(source, "val")[:2]
    return ImageDataset(train_x, train_y, test_x, test_y, classes, source=f"records {source}")


def load(source: str = "cifar10", *, progress: bool = True, resize: bool = False) -> ImageDataset:
    """Any source the tool reads, as uint8 NHWC train/test arrays with class names."""
    source = str(source)
    if _is_records(source):
        return load_records_dataset(source)
    if _is_tiny_imagenet(source):
        return load_tiny_imagenet_dataset(source, progress=progress, resize=resize)
    return load_dataset(source, progress=progress, resize=resize)
