"""CIFAR-10 and image-folder data sources, decoded once into uint8 arrays and cached.

A source is one of
  "cifar10"   the official python archive, looked for in the cache directory, else downloaded;
  "sample"    the 5,000 + 1,000 real CIFAR-10 JPEGs shipped in dawntrain/data/sample/;
  a path to   the official archive (cifar-10-python.tar.gz) or its extracted cifar-10-batches-py/,
              or an image folder train/<class>/* + test/<class>/* (one extra top directory is
              allowed), as a directory or a .tar, .tar.gz or .zip read without extracting it.

Decoded arrays are cached under <cache dir>/arrays/<key>/ (see cache.py). The key hashes the
source's content: the sha256 of an archive file's bytes, or for a directory the sha256 of its
sorted listing of (relative path, size, mtime_ns) for every file under it, so editing, adding
or removing a file invalidates the entry while an unchanged directory is not read again.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from dawntrain.data.cache import cached_arrays
from dawntrain.data.download import download, file_digest
from dawntrain.data.images import decode_images
from dawntrain.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_FILES = [*CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta"]
SAMPLE_PATH = Path(__file__).parent / "sample" / "cifar10-sample.tar.gz"
SPLITS = ("train", "test")
# Same list as torchvision's ImageFolder; other files in class folders are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Part of every cache key: bump it when decoding changes so old cached arrays are not reused.
READER_VERSION = 1

SOURCES_HELP = (
    "pass 'cifar10', 'sample', the official cifar-10-python.tar.gz or its extracted "
    "cifar-10-batches-py/, or an image folder with train/<class>/ and test/<class>/ "
    "(or a .tar, .tar.gz or .zip of one)"
)


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


def default_cache_dir() -> Path:
    """$DAWNTRAIN_DATA, else ~/.cache/dawntrain: where archives are looked for and arrays cached."""
    env = os.environ.get("DAWNTRAIN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dawntrain"


# ---------------------------------------------------------------- the official python archive


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


def _is_cifar(files: _Files) -> bool:
    return all(files.find(name) for name in CIFAR10_FILES)


def _decode_cifar(files: _Files) -> dict[str, np.ndarray]:
    """Arrays from the seven official batch files."""

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


# ---------------------------------------------------------------------------- image folders


def _ignored(parts: tuple[str, ...]) -> bool:
    """Hidden files (.DS_Store, macOS ._x.jpg resource forks) and zip's __MACOSX/ folder."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name).parts if p not in ("/", "."))


@dataclass
class _Folder:
    """An image folder's layout: sorted class names and, per split, (member, name, label).

    member is the path as listed (what to open); name is relative to the folder's root,
    "train/<class>/<file>". Files are sorted by name within each class.
    """

    classes: list[str]
    files: dict[str, list[tuple[str, str, int]]]


def _folder_layout(files: list[str], dirs: list[str], where: str) -> _Folder:
    """Find train/<class>/** and test/<class>/** among relative posix paths."""
    entries = [(_parts(p), p, True) for p in files] + [(_parts(p), p, False) for p in dirs]
    entries = [e for e in entries if e[0] and not _ignored(e[0])]
    roots = {
        parts[0] if parts[0] not in SPLITS else ""
        for parts, *_ in entries
        if parts[0] in SPLITS or (len(parts) > 1 and parts[1] in SPLITS)
    }
    if not roots:
        raise DataError(
            f"{where}: no train/<class>/ and test/<class>/ folders found (looked one level down "
            f"too); {SOURCES_HELP}"
        )
    if len(roots) > 1 and "" not in roots:
        tops = ", ".join(sorted(f"{r}/" for r in roots))
        raise DataError(f"{where}: holds several data sets ({tops}); point at one of them")
    root = "" if "" in roots else roots.pop()
    depth = 1 if root else 0
    classes: dict[str, set[str]] = {split: set() for split in SPLITS}
    images: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for parts, member, is_file in entries:
        if depth and parts[0] != root:
            continue
        rel = parts[depth:]
        # rel is (split, class, ..., file); a file directly in train/ or test/ is a stray.
        if len(rel) < 2 or rel[0] not in SPLITS or (is_file and len(rel) < 3):
            continue
        classes[rel[0]].add(rel[1])
        if is_file and rel[-1].lower().endswith(IMAGE_EXTENSIONS):
            images.setdefault((rel[0], rel[1]), []).append(("/".join(rel), member))
    prefix = f"{root}/" if root else ""
    for split in SPLITS:
        if not classes[split]:
            raise DataError(f"{where}: no class folders in {prefix}{split}/; {SOURCES_HELP}")
    if classes["train"] != classes["test"]:
        only_train = ", ".join(sorted(classes["train"] - classes["test"])) or "-"
        only_test = ", ".join(sorted(classes["test"] - classes["train"])) or "-"
        raise DataError(
            f"{where}: train/ and test/ have different class folders (only in train: "
            f"{only_train}; only in test: {only_test}); every class needs both"
        )
    class_names = sorted(classes["train"])
    layout = {}
    for split in SPLITS:
        layout[split] = []
        for label, name in enumerate(class_names):
            found = images.get((split, name))
            if not found:
                raise DataError(
                    f"{where}: class folder {prefix}{split}/{name}/ holds no images "
                    f"({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder"
                )
            layout[split] += [(member, name, label) for name, member in sorted(found)]
    return _Folder(class_names, layout)


def _walk(path: Path) -> tuple[list[str], list[str]]:
    """Relative posix paths of the files and of the directories under path."""
    files, dirs = [], []
    for top, dirnames, filenames in os.walk(path, followlinks=True):
        rel = Path(top).relative_to(path)
        dirs += [(rel / d).as_posix() for d in dirnames]
        files += [(rel / f).as_posix() for f in filenames]
    return sorted(files), sorted(dirs)


def _listing_hash(path: Path) -> str:
    """sha256 of the sorted (relative path, size, mtime_ns) of every file under path."""
    digest = hashlib.sha256()
    for name in _walk(path)[0]:
        stat = (path / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class _Files:
    """The files of a source: a directory, or a .tar(.gz) or .zip read without extracting it.

    A tar is read in one sequential pass (random access into a .tar.gz re-decompresses),
    keeping the bytes of image files and CIFAR batch files only.
    """

    def __init__(self, path: Path):
        self.path = path
        self.is_dir = path.is_dir()
        self.blobs: dict[str, bytes] = {}
        self._zip: zipfile.ZipFile | None = None
        if self.is_dir:
            self.files, self.dirs = _walk(path)
            return
        self.files, self.dirs = [], []
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
                names = self._zip.namelist()
                self.files = [n for n in names if not n.endswith("/")]
                self.dirs = [n for n in names if n.endswith("/")]
                return
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isdir():
                        self.dirs.append(member.name)
                    elif member.isfile():
                        self.files.append(member.name)
                        base = member.name.rsplit("/", 1)[-1]
                        if base in CIFAR10_FILES or base.lower().endswith(IMAGE_EXTENSIONS):
                            self.blobs[member.name] = tar.extractfile(member).read()
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise DataError(
                f"{path}: not a readable .tar, .tar.gz or .zip archive ({e}); {SOURCES_HELP}"
            ) from e

    def display(self, member: str) -> str:
        """How errors name a member."""
        return str(self.path / member) if self.is_dir else f"{member} in {self.path}"

    def read(self, member: str) -> bytes | Path:
        """A file's path in a directory (the decoding workers read it), else its bytes."""
        return self.path / member if self.is_dir else self.read_bytes(member)

    def read_bytes(self, member: str) -> bytes:
        try:
            if self.is_dir:
                return (self.path / member).read_bytes()
            if self._zip is not None:
                return self._zip.read(member)
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{self.display(member)}: cannot read it ({e})") from e
        return self.blobs[member]

    def find(self, base: str) -> str | None:
        """The first file named base, in any folder."""
        return next((f for f in self.files if f.rsplit("/", 1)[-1] == base), None)


# -------------------------------------------------------------------------------- resolving


def resolve_source(source: str | Path, cache_dir: Path, progress: bool) -> tuple[Path, str]:
    """The path a source names, and a description of it."""
    if isinstance(source, str) and source == "cifar10":
        for candidate in (cache_dir / CIFAR10_ARCHIVE, cache_dir / CIFAR10_DIR):
            if candidate.exists():
                return candidate, f"CIFAR-10 python archive {candidate}"
        dest = cache_dir / CIFAR10_ARCHIVE
        try:
            download(CIFAR10_URL, dest, md5=CIFAR10_MD5, progress=progress)
        except DataError as e:
            raise DataError(
                f"{e}; to use a local copy pass --data PATH/{CIFAR10_ARCHIVE} or put it in "
                f"{cache_dir} (set DAWNTRAIN_DATA to choose that directory)"
            ) from None
        return dest, f"CIFAR-10 python archive {dest}"
    if isinstance(source, str) and source == "sample":
        if not SAMPLE_PATH.is_file():
            raise DataError(f"{SAMPLE_PATH}: the shipped sample is missing; reinstall dawntrain")
        return SAMPLE_PATH, f"CIFAR-10 sample shipped with dawntrain ({SAMPLE_PATH})"
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; {SOURCES_HELP}")
    return path, f"{'directory' if path.is_dir() else 'archive'} {path}"


def _folder_arrays(
    items: dict[str, list[tuple[str, bytes | Path, int]]],
    class_names: list[str],
    resize: bool,
    progress: bool,
    workers: int | None,
    side: int | None,
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"class_names": np.array(class_names)}
    # Without a side, the first training image's size: the others must match it (or resize).
    size = (side, side) if side else None
    for split in SPLITS:
        images = decode_images(
            [(name, data) for name, data, _ in items[split]],
            size,
            resize=resize,
            workers=workers,
            progress=f"decoding {split} images" if progress else None,
        )
        size = images.shape[1:3]
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.array([label for *_, label in items[split]], np.int64)
    return arrays


@dataclass
class RawSource:
    """A source's contents before decoding: CIFAR-10's official batches hold pixel arrays
    already; an image folder or archive holds encoded files."""

    class_names: list[str]
    arrays: dict[str, np.ndarray] | None  # the CIFAR batches, as load_dataset caches them
    # split -> [(name for errors, bytes or the file's path in a directory, label)]
    encoded: dict[str, list[tuple[str, bytes | Path, int]]] | None


def read_source(path: Path) -> RawSource:
    """Read a resolved source path (see resolve_source) in one pass, nothing decoded."""
    files = _Files(path)  # one read of an archive, whichever it holds
    if _is_cifar(files):
        arrays = _decode_cifar(files)
        return RawSource([str(c) for c in arrays["class_names"]], arrays, None)
    folder = _folder_layout(files.files, files.dirs, str(path))
    encoded = {
        split: [(files.display(m), files.read(m), label) for m, _, label in folder.files[split]]
        for split in SPLITS
    }
    return RawSource(folder.classes, None, encoded)


def _build(
    path: Path, resize: bool, progress: bool, workers: int | None, side: int | None
) -> dict[str, np.ndarray]:
    """Read and decode a source path into the arrays that get cached."""
    raw = read_source(path)
    if raw.arrays is not None:
        return raw.arrays
    return _folder_arrays(raw.encoded, raw.class_names, resize, progress, workers, side)


def cache_key(path: Path, resize: bool, side: int | None = None) -> tuple[str, str]:
    """(cache key, content hash) of a source path read with these options: the content hash
    is the file's sha256, or for a directory a hash of its listing (see _listing_hash)."""
    content = _listing_hash(path) if path.is_dir() else file_digest(path, "sha256")
    options = f"{READER_VERSION}\0{int(resize)}\0{side or ''}"
    digest = hashlib.sha256(f"{options}\0{content}".encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip("._-") or "data"
    return f"{stem}-{digest[:20]}", content


# ------------------------------------------------------------------------------- public API


def load_dataset(
    source: str | Path = "cifar10",
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    resize: bool = False,
    side: int | None = None,
    workers: int | None = None,
) -> ImageDataset:
    """Load a data set (see the module docstring for the sources), decoding it only once.

    Images that differ in size from the first training image (from side × side, where side is
    given) are an error unless resize, which resizes them straight to that size: a folder of
    mixed photo sizes goes to the model's input size in one step, without holding them all at
    the first photo's size. The CIFAR-10 batch files are 32x32 and ignore side.
    workers: decoding processes (default min(2, CPUs)).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path, description = resolve_source(source, cache_dir, progress)
    key, content = cache_key(path, resize, side)
    arrays = cached_arrays(
        key,
        lambda: _build(path, resize, progress, workers, side),
        cache_dir,
        meta={"source": str(path), "content_sha256": content, "resize": resize, "side": side},
    )
    return ImageDataset.from_arrays(arrays, description)


def load_cifar10(
    source: str | Path = "cifar10", **kw
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(train_images, train_labels, test_images, test_labels, class_names); see load_dataset."""
    data = load_dataset(source, **kw)
    return (
        data.train_images,
        data.train_labels,
        data.test_images,
        data.test_labels,
        data.class_names,
    )


def iter_encoded_images(
    source: str | Path, *, cache_dir: Path | None = None
) -> dict[str, list[tuple[str, bytes, int]]]:
    """The encoded files of an image-folder source: {"train"|"test": [(name, bytes, label)]}.

    name is the path inside the folder, "train/<class>/<file>"; label indexes the sorted
    class names, as in load_dataset. Files come in the same order as load_dataset's rows.
    """
    if source == "cifar10":
        raise DataError("cifar10: the official archive holds raw pixels, not encoded images")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path, _ = resolve_source(source, cache_dir, progress=False)
    files = _Files(path)
    if _is_cifar(files):
        raise DataError(f"{path}: holds raw CIFAR-10 pixels, not encoded images")
    folder = _folder_layout(files.files, files.dirs, str(path))
    return {
        split: [(name, files.read_bytes(m), label) for m, name, label in folder.files[split]]
        for split in SPLITS
    }
