"""Data sources: each decodes once into uint8 arrays that the training engine keeps on its device.

`load(source)` picks the reader from the source's name or shape:
  cifar10 | sample | PATH to the CIFAR-10 archive or an image folder (dawntrain.data.sources),
  tiny-imagenet | PATH to tiny-imagenet-200/ or its .zip/.tar.gz (dawntrain.data.tiny_imagenet),
  PATH to a directory of TFRecord shards or a glob of record files (dawntrain.data.records).
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import numpy as np

from dawntrain.data.sources import (
    ImageDataset,
    cache_key,
    default_cache_dir,
    load_cifar10,
    load_dataset,
)
from dawntrain.errors import DataError

__all__ = ["ImageDataset", "load", "load_cifar10", "load_dataset"]

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# The official zip: 248,100,043 bytes; this md5 is the one published with the data loaders that use it.
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
# Evaluation split of record data, first found wins; Tiny ImageNet's labelled split is "val".
RECORD_TEST_SPLITS = ("test", "val", "validation")
# Part of the record cache key: bump it when decoding records changes.
RECORDS_CACHE_VERSION = 1


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


def tiny_imagenet_path(source: str, progress: bool = True) -> Path:
    """The path a Tiny ImageNet source names: for 'tiny-imagenet' the copy in the cache
    directory, else the official zip downloaded there."""
    from dawntrain.data.download import download

    if source != "tiny-imagenet":
        return Path(source)
    cache_dir = default_cache_dir()
    local = [cache_dir / "tiny-imagenet-200", cache_dir / "tiny-imagenet-200.zip"]
    found = next((p for p in local if p.exists()), None)
    if found is None:
        found = cache_dir / "tiny-imagenet-200.zip"
        download(TINY_IMAGENET_URL, found, md5=TINY_IMAGENET_MD5, progress=progress)
    return found


def load_tiny_imagenet_dataset(
    source: str, progress: bool = True, resize: bool = False, side: int | None = None
) -> ImageDataset:
    """Tiny ImageNet as an ImageDataset: the official val set (labelled) plays the test set."""
    from dawntrain.data.cache import cached_arrays
    from dawntrain.data.tiny_imagenet import IMAGE_SIZE, load_tiny_imagenet

    cache_dir = default_cache_dir()
    path = tiny_imagenet_path(source, progress)

    def build() -> dict[str, np.ndarray]:
        t = load_tiny_imagenet(path, progress=progress, resize=resize, side=side or IMAGE_SIZE)
        return {
            "train_images": t.train_images,
            "train_labels": t.train_labels,
            "test_images": t.val_images,
            "test_labels": t.val_labels,
            "class_names": np.array(t.class_words),
        }

    key = f"tiny-imagenet-{cache_key(path, resize, side)[0]}"
    arrays = cached_arrays(key, build, cache_dir, meta={"source": str(path)})
    return ImageDataset.from_arrays(arrays, f"Tiny ImageNet at {path}")


def load_records_dataset(source: str) -> ImageDataset:
    """Record shards (a converted directory, a glob or files) as train + test arrays: the train
    split, and test (else val) as the test set, skipping splits the manifest marks unlabelled.
    Decoded once, then cached under a key made of each shard's sha256 (from the manifest), size
    and mtime, so a second load is a memory map and a re-written shard is decoded again."""
    from dawntrain.data.cache import cached_arrays
    from dawntrain.data.convert import record_splits
    from dawntrain.data.records import load_record_split

    splits, manifest = record_splits(source)
    unlabelled = set((manifest or {}).get("unlabelled", []))
    test = next((s for s in RECORD_TEST_SPLITS if s in splits and s not in unlabelled), None)
    if "train" not in splits or test is None:
        raise DataError(
            f"{source}: training needs a train split and a labelled test or val split, found "
            f"{sorted(splits)}; shard files name their split (train-00000-of-00010.tfrecord.gz) "
            "or a manifest.json lists them: write them with `dawntrain data convert`"
        )
    paths = splits["train"] + splits[test]
    listed = (
        {s["file"]: s["sha256"] for ss in manifest["splits"].values() for s in ss}
        if manifest
        else {}
    )
    classes = (manifest or {}).get("classes", [])
    key = hashlib.sha256(f"records {RECORDS_CACHE_VERSION} {test} {classes}\n".encode())
    for path in paths:
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(f"{path}: cannot read this shard ({e}); re-convert the source") from e
        key.update(
            f"{path.name}\0{listed.get(path.name, '')}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )

    def build() -> dict[str, np.ndarray]:
        train_x, train_y, train_names = load_record_split(splits["train"])
        test_x, test_y, test_names = load_record_split(splits[test])
        names = list(classes) or train_names + test_names[len(train_names) :]
        for split, labels in (("train", train_y), (test, test_y)):
            if not 0 <= labels.min() <= labels.max() < len(names):
                raise DataError(
                    f"{source}: split {split} has labels in [{labels.min()}, {labels.max()}] for "
                    f"{len(names)} classes (-1 marks unlabelled images); train and evaluate on "
                    "labelled splits"
                )
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(
                f"{source}: train images are {train_x.shape[1:]}, {test} images "
                f"{test_x.shape[1:]}; both splits need one size"
            )
        return {
            "train_images": train_x,
            "train_labels": train_y,
            "test_images": test_x,
            "test_labels": test_y,
            "class_names": np.array(names),
        }

    arrays = cached_arrays(
        f"records-{key.hexdigest()[:24]}", build, default_cache_dir(), meta={"source": source}
    )
    return ImageDataset.from_arrays(arrays, f"records {source} (train, {test})")


def load(
    source: str = "cifar10", *, progress: bool = True, resize: bool = False, side: int | None = None
) -> ImageDataset:
    """Any source the tool reads, as uint8 NHWC train/test arrays with class names.

    resize: images of another size are resized (bilinear) instead of refused; to side × side
    where given, decoding straight to it (record shards and CIFAR-10's batch files keep their
    stored size: resize those arrays after loading)."""
    source = str(source)
    if _is_records(source):
        return load_records_dataset(source)
    if _is_tiny_imagenet(source):
        return load_tiny_imagenet_dataset(source, progress=progress, resize=resize, side=side)
    return load_dataset(source, progress=progress, resize=resize, side=side)
