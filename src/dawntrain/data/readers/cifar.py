"""CIFAR-10's official python archive: 'cifar10' (looked for in the cache directory, else
downloaded), and the seven pickled batch files wherever a source holds them.

The folder reader reads a path given as a source; when its files turn out to be the official
batches (cifar-10-python.tar.gz, its extracted cifar-10-batches-py/, or any folder or archive
holding the seven files), it takes their arrays from `arrays` here.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from dawntrain.data.cache import default_cache_dir
from dawntrain.data.dataset import ImageDataset
from dawntrain.data.download import Archive, download_archive
from dawntrain.data.readers.archive import Files, RawSource, cached_dataset
from dawntrain.data.readers.options import DEFAULTS, ReadOptions
from dawntrain.errors import DataError

NAME = "cifar10"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
# The md5 is the one published on the CIFAR page; the sha256 is the one Keras and others pin.
ARCHIVE = Archive(
    NAME,
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    CIFAR10_ARCHIVE,
    size=170_498_071,
    md5="c58f30108f718f92721af3b95e74349a",
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
)
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_FILES = [*CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta"]


def matches(source: str) -> bool:
    return source == NAME


def archive_path(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The archive (or its extracted folder) in the cache directory, else downloaded there."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for candidate in (cache_dir / CIFAR10_ARCHIVE, cache_dir / CIFAR10_DIR):
        if candidate.exists():
            return candidate
    return download_archive(ARCHIVE, cache_dir, progress)


def batch_files(path: Path) -> Files:
    """The files of a folder or archive, keeping (of a tar) the batch files' bytes only."""
    return Files(path, lambda base: base in CIFAR10_FILES, f"pass the official {CIFAR10_ARCHIVE}")


def description(path: Path) -> str:
    return f"CIFAR-10 python archive {path}"


def raw(source: str, *, progress: bool = True, cache_dir: Path | None = None) -> RawSource:
    """The official batches' arrays (nothing to decode), downloading the archive if needed."""
    return raw_at(archive_path(cache_dir, progress))


def raw_at(path: Path) -> RawSource:
    files = batch_files(path)
    if not holds(files):
        raise DataError(
            f"{path}: not the CIFAR-10 python archive (no {', '.join(CIFAR10_FILES)} in it); "
            "delete it to download the archive again"
        )
    return raw_of(files, description(path))


def raw_of(files: Files, description: str) -> RawSource:
    """A RawSource of the batch files among `files` (see holds)."""
    data = arrays(files)
    return RawSource(description, [str(c) for c in data["class_names"]], data, None)


def read(source: str, options: ReadOptions = DEFAULTS) -> ImageDataset:
    """The official train and test batches: 32x32 images whatever `side` says (resize them
    after loading); nothing to verify or decode in workers."""
    path = archive_path(options.cache(), options.progress)
    return cached_dataset(path, description(path), lambda: raw_at(path).arrays, options)


# ---------------------------------------------------------------- the official batch files


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of lists and numpy arrays) and nothing that runs code.

    The official files (Python 2, numpy 1) name only _reconstruct, ndarray and dtype; _codecs
    encode is how Python 3 writes bytes at protocol 2, for re-pickled copies.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        # The batches were pickled under numpy 1 (numpy.core); numpy 2 renamed it numpy._core.
        module = "numpy._core.multiarray" if module.endswith("core.multiarray") else module
        try:
            return super().find_class(module, name)
        except ModuleNotFoundError:
            return super().find_class(module.replace("._core", ".core"), name)


def _unpickle(data: bytes, name: str) -> dict[str, object]:
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    except Exception as e:
        raise DataError(f"{name}: not a CIFAR-10 python batch ({e}); is the file damaged?") from e


def _cifar_batch(data: bytes, name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, name)
    try:
        pixels = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except KeyError as e:
        raise DataError(f"{name}: not a CIFAR-10 batch, it has no {e} entry") from None
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(labels) != len(pixels):
        raise DataError(f"{name}: data is {pixels.shape} with {len(labels)} labels, not a batch")
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{name}: labels outside 0..{num_classes - 1}")
    # Rows are 1024 red, 1024 green, 1024 blue values (CHW); the cache holds NHWC.
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def holds(files: Files) -> bool:
    """Whether the files include the seven official batch files (in any folder)."""
    return all(files.find(name) for name in CIFAR10_FILES)


def arrays(files: Files) -> dict[str, np.ndarray]:
    """The arrays of the seven official batch files (train/test images and labels, class_names)."""

    def batch(name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        member = files.find(name)
        return _cifar_batch(files.read_bytes(member), files.display(member), num_classes)

    meta_member = files.find("batches.meta")
    meta = _unpickle(files.read_bytes(meta_member), files.display(meta_member))
    if "label_names" not in meta:
        raise DataError(f"{files.display(meta_member)}: no label_names; is it CIFAR-100's meta?")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    train = [batch(name, len(class_names)) for name in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = batch("test_batch", len(class_names))
    return {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": test_images,
        "test_labels": test_labels,
        "class_names": np.array(class_names),
    }
