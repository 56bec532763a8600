"""Image folders: train/<class>/* + test/<class>/* (one extra top directory is allowed), as a
directory or a .tar, .tar.gz or .zip read without extracting it; 'sample', the 5,000 + 1,000
real CIFAR-10 JPEGs shipped in dawntrain/data/sample/, is one. Labels index the sorted class
folder names; files are sorted by name within each class.

This is the reader of any path no other reader claims, so a folder or archive that holds
CIFAR-10's official batch files instead (cifar-10-python.tar.gz, cifar-10-batches-py/) is read
here too, its arrays taken from the cifar reader. Decoded arrays are cached, keyed by the
source's content (see archive.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dawntrain.data.dataset import ImageDataset
from dawntrain.data.images import IMAGE_EXTENSIONS, decode_images, is_image_file
from dawntrain.data.readers import cifar
from dawntrain.data.readers.archive import Files, RawSource, cached_dataset, ignored, path_parts
from dawntrain.data.readers.options import DEFAULTS, ReadOptions
from dawntrain.errors import DataError

SAMPLE = "sample"
SAMPLE_PATH = Path(__file__).parents[1] / "sample" / "cifar10-sample.tar.gz"
SPLITS = ("train", "test")

SOURCES_HELP = (
    "pass 'cifar10', 'sample', the official cifar-10-python.tar.gz or its extracted "
    "cifar-10-batches-py/, or an image folder with train/<class>/ and test/<class>/ "
    "(or a .tar, .tar.gz or .zip of one)"
)


def matches(source: str) -> bool:
    """Any source: this reader is the last one asked."""
    return True


def resolve(source: str | Path) -> tuple[Path, str]:
    """The path a source names, and a description of it."""
    if isinstance(source, str) and source == SAMPLE:
        if not SAMPLE_PATH.is_file():
            raise DataError(f"{SAMPLE_PATH}: the shipped sample is missing; reinstall dawntrain")
        return SAMPLE_PATH, f"CIFAR-10 sample shipped with dawntrain ({SAMPLE_PATH})"
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; {SOURCES_HELP}")
    return path, f"{'directory' if path.is_dir() else 'archive'} {path}"


def source_files(path: Path) -> Files:
    """A folder or archive's files, keeping (of a tar) the bytes of images and batch files."""
    return Files(
        path, lambda base: base in cifar.CIFAR10_FILES or is_image_file(base), SOURCES_HELP
    )


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
    entries = [(path_parts(p), p, True) for p in files] + [(path_parts(p), p, False) for p in dirs]
    entries = [e for e in entries if e[0] and not ignored(e[0])]
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
        if is_file and is_image_file(rel[-1]):
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


def raw(source: str | Path, *, progress: bool = True, cache_dir: Path | None = None) -> RawSource:
    """Read a source in one pass, nothing decoded: the image files by split, or the official
    CIFAR-10 batches' arrays when that is what it holds."""
    path, description = resolve(source)
    return raw_at(path, description)


def raw_at(path: Path, description: str) -> RawSource:
    files = source_files(path)  # one read of an archive, whichever it holds
    if cifar.holds(files):
        return cifar.raw_of(files, description)
    folder = _folder_layout(files.files, files.dirs, str(path))
    encoded = {
        split: [(files.display(m), files.read(m), label) for m, _, label in folder.files[split]]
        for split in SPLITS
    }
    return RawSource(description, folder.classes, None, encoded)


def decode(
    raw: RawSource, *, resize: bool, side: int | None, workers: int | None, progress: bool
) -> dict[str, np.ndarray]:
    """The arrays that get cached: the batches' as they are, or the image files decoded.

    Images that differ in size from the first training image (from side x side, where side is
    given) are an error unless resize, which resizes them straight to that size: a folder of
    mixed photo sizes goes to the model's input size in one step, without holding them all at
    the first photo's size. The CIFAR-10 batch files are 32x32 and ignore side."""
    if raw.arrays is not None:
        return raw.arrays
    arrays: dict[str, np.ndarray] = {"class_names": np.array(raw.class_names)}
    # Without a side, the first training image's size: the others must match it (or resize).
    size = (side, side) if side else None
    for split in SPLITS:
        images = decode_images(
            [(name, data) for name, data, _ in raw.encoded[split]],
            size,
            resize=resize,
            workers=workers,
            progress=f"decoding {split} images" if progress else None,
        )
        size = images.shape[1:3]
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.array([label for *_, label in raw.encoded[split]], np.int64)
    return arrays


def read(source: str | Path, options: ReadOptions = DEFAULTS) -> ImageDataset:
    """Decode a folder or archive once (see `decode`), then serve it from the cache.
    workers: decoding processes (default min(2, CPUs)); nothing to verify."""
    path, description = resolve(source)

    def build() -> dict[str, np.ndarray]:
        raw = raw_at(path, description)
        o = options
        return decode(raw, resize=o.resize, side=o.side, workers=o.workers, progress=o.progress)

    return cached_dataset(path, description, build, options)


def iter_encoded_images(source: str | Path) -> dict[str, list[tuple[str, bytes, int]]]:
    """The encoded files of an image-folder source: {"train"|"test": [(name, bytes, label)]}.

    name is the path inside the folder, "train/<class>/<file>"; label indexes the sorted
    class names, as in `read`. Files come in the same order as `read`'s rows.
    """
    if source == cifar.NAME:
        raise DataError("cifar10: the official archive holds raw pixels, not encoded images")
    path, _ = resolve(source)
    files = source_files(path)
    if cifar.holds(files):
        raise DataError(f"{path}: holds raw CIFAR-10 pixels, not encoded images")
    folder = _folder_layout(files.files, files.dirs, str(path))
    return {
        split: [(name, files.read_bytes(m), label) for m, name, label in folder.files[split]]
        for split in SPLITS
    }
