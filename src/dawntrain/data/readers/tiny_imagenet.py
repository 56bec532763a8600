"""Tiny ImageNet: the official tiny-imagenet-200/ layout, for training (train, and the labelled
val split as the test set) and for conversion (every split, with the listing's boxes and notes).

The source is 'tiny-imagenet' (the copy in the cache directory, else the official zip downloaded
there), the folder itself, the official tiny-imagenet-200.zip or a .tar.gz of the folder;
archives are read in place (no extraction). The layout:

    wnids.txt                      one wnid a line; its order defines the labels
    words.txt                      wnid<TAB>words (optional here)
    train/<wnid>/images/*.JPEG     500 a class
    train/<wnid>/<wnid>_boxes.txt  file<TAB>x0<TAB>y0<TAB>x1<TAB>y1 (metadata only)
    val/images/*.JPEG + val/val_annotations.txt  file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1
    test/images/*.JPEG             unlabeled

Files whose path has a part starting with "." (.DS_Store, ._x) or named __MACOSX are ignored.
"""

from __future__ import annotations

import re
import tarfile
import warnings
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from dawntrain.data.cache import default_cache_dir
from dawntrain.data.dataset import ImageDataset
from dawntrain.data.download import Archive, download_archive
from dawntrain.data.images import (
    IMAGE_EXTENSIONS,
    ConvertedToRGBWarning,
    decode_images,
    is_image_file,
)
from dawntrain.data.readers.archive import cached_dataset, ignored
from dawntrain.data.readers.options import DEFAULTS, ReadOptions
from dawntrain.errors import DataError

NAME = "tiny-imagenet"
# The official zip. It has no published sha256: the md5 is the one loaders of it have long
# pinned, and its size is checked first.
ARCHIVE = Archive(
    NAME,
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    "tiny-imagenet-200.zip",
    size=248_100_043,
    md5="90528d7ca1a48142e341f4ef8d21d0de",
)
IMAGE_SIZE = 64

Box = tuple[str, int, int, int, int]  # (wnid, x0, y0, x1, y1)

_HOW_TO_FIX = "re-extract tiny-imagenet-200.zip or fix the file"


def matches(source: str) -> bool:
    if source == NAME:
        return True
    path = Path(source)
    return (path / "wnids.txt").is_file() or path.name.startswith("tiny-imagenet")


def source_path(source: str, progress: bool = True, cache_dir: Path | None = None) -> Path:
    """The path a Tiny ImageNet source names: for 'tiny-imagenet' the copy in the cache
    directory, else the official zip downloaded there."""
    if source != NAME:
        return Path(source)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    local = [cache_dir / "tiny-imagenet-200", cache_dir / ARCHIVE.filename]
    found = next((p for p in local if p.exists()), None)
    return found or download_archive(ARCHIVE, cache_dir, progress)


def _is_stray(rel: str) -> bool:
    return ignored(rel.split("/"))


def _natural_key(name: str) -> list:
    """n01443537_10.JPEG sorts after n01443537_9.JPEG."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Tree:
    """The files under a tiny-imagenet-200/ root, wherever they are stored."""

    def __init__(self, label: str, files: dict[str, bytes | Path]):
        self.label = label  # how messages name the root, ending in "/"
        self.files = files  # path relative to the root -> encoded bytes or a file on disk

    def where(self, rel: str) -> str:
        return self.label + rel

    def text(self, rel: str) -> str:
        data = self.files[rel]
        data = data if isinstance(data, bytes) else data.read_bytes()
        return data.decode("utf-8", errors="replace")


def _archive_root(names: list[str], source: Path) -> str:
    """The prefix ('tiny-imagenet-200/' or '') of the shallowest wnids.txt in an archive."""
    found = [n for n in names if PurePosixPath(n).name == "wnids.txt"]
    if not found:
        raise DataError(
            f"{source}: no wnids.txt in this archive; expected the official "
            "tiny-imagenet-200.zip or a .tar.gz of the tiny-imagenet-200/ folder"
        )
    shallowest = min(found, key=lambda n: n.count("/"))
    return shallowest[: -len("wnids.txt")]


def _open_tree(source: Path) -> Tree:
    if not source.exists():
        raise DataError(
            f"{source}: not found; pass the tiny-imagenet-200/ folder, tiny-imagenet-200.zip "
            "(http://cs231n.stanford.edu/tiny-imagenet-200.zip) or a .tar.gz of the folder"
        )
    if source.is_dir():
        root = source
        if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200/wnids.txt").is_file():
            root = root / "tiny-imagenet-200"
        if not (root / "wnids.txt").is_file():
            raise DataError(
                f"{root / 'wnids.txt'}: not found; pass the tiny-imagenet-200/ folder itself "
                "(the one holding wnids.txt, train/, val/ and test/)"
            )
        files = {}
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if not _is_stray(rel) and path.is_file():
                files[rel] = path
        return Tree(f"{root}/", files)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and not _is_stray(n)]
            prefix = _archive_root(names, source)
            files = {n[len(prefix) :]: archive.read(n) for n in names if n.startswith(prefix)}
        return Tree(f"{source}:{prefix}", files)
    if tarfile.is_tarfile(source):
        # A gzip stream has no index, so read every member in one pass.
        with tarfile.open(source, "r:*") as archive:
            files = {
                m.name.removeprefix("./"): archive.extractfile(m).read()
                for m in archive
                if m.isfile() and not _is_stray(m.name.removeprefix("./"))
            }
        prefix = _archive_root(list(files), source)
        files = {n[len(prefix) :]: d for n, d in files.items() if n.startswith(prefix)}
        return Tree(f"{source}:{prefix}", files)
    raise DataError(
        f"{source}: neither a folder, a .zip nor a tar archive; pass the tiny-imagenet-200/ "
        "folder, tiny-imagenet-200.zip or a .tar.gz of the folder"
    )


def _read_table(tree: Tree, rel: str, columns: int) -> list[list[str]]:
    """Tab/space separated rows with `columns` fields, the last four of them integers."""
    rows = []
    for number, line in enumerate(tree.text(rel).splitlines(), 1):
        if not line.strip():
            continue
        row = line.split()
        if len(row) != columns or not all(re.fullmatch(r"-?\d+", v) for v in row[-4:]):
            raise DataError(
                f"{tree.where(rel)}, line {number}: expected {columns} fields ending in four "
                f"integers (x0 y0 x1 y1), got {line!r}; {_HOW_TO_FIX}"
            )
        rows.append(row)
    return rows


def _box(wnid: str, coords: list[str]) -> Box:
    x0, y0, x1, y1 = (int(v) for v in coords)
    return (wnid, x0, y0, x1, y1)


def _images_in(by_dir: dict[str, list[str]], folder: str) -> list[str]:
    names = [n for n in by_dir.get(folder, []) if is_image_file(n)]
    return [f"{folder}/{n}" for n in sorted(names, key=_natural_key)]


def _read_train(
    tree: Tree, by_dir: dict[str, list[str]], wnids: list[str], boxes: dict, notes: list[str]
) -> tuple[list[str], list[int]]:
    train_dirs = {rel.split("/")[1] for rel in tree.files if rel.startswith("train/")}
    files, labels = [], []
    stray_boxes = 0  # boxes are metadata: a line for a missing image is dropped, not an error
    for label, wnid in enumerate(wnids):
        if wnid not in train_dirs:
            raise DataError(
                f"{tree.where(f'train/{wnid}/')}: missing, but wnids.txt lists {wnid}; "
                "restore the folder or remove the wnid from wnids.txt"
            )
        images = _images_in(by_dir, f"train/{wnid}/images")
        if not images:
            raise DataError(
                f"{tree.where(f'train/{wnid}/images/')}: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                f"for class {wnid}; restore them or remove the wnid from wnids.txt"
            )
        files += images
        labels += [label] * len(images)
        boxes_file = f"train/{wnid}/{wnid}_boxes.txt"
        if boxes_file in tree.files:
            present = set(by_dir[f"train/{wnid}/images"])
            for name, *coords in _read_table(tree, boxes_file, 5):
                if name in present:
                    boxes[name] = _box(wnid, coords)
                else:
                    stray_boxes += 1
    if stray_boxes:
        notes.append(f"train: ignored {stray_boxes} *_boxes.txt lines naming missing images")
    extra = sorted(train_dirs - set(wnids))
    if extra:
        notes.append(f"train/: ignored {len(extra)} folders not in wnids.txt: {extra[:5]}")
    return files, labels


def _read_val(
    tree: Tree, by_dir: dict[str, list[str]], wnids: list[str], boxes: dict
) -> tuple[list[str], list[int]]:
    annotations = "val/val_annotations.txt"
    if annotations not in tree.files:
        raise DataError(f"{tree.where(annotations)}: not found; {_HOW_TO_FIX}")
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    images = set(_images_in(by_dir, "val/images"))
    labels: dict[str, int] = {}
    for name, wnid, *coords in _read_table(tree, annotations, 6):
        if wnid not in label_of:
            raise DataError(
                f"{tree.where(annotations)}: {name} is labeled {wnid}, which is not in wnids.txt; "
                "add the wnid to wnids.txt or remove the line"
            )
        if f"val/images/{name}" not in images:
            raise DataError(
                f"{tree.where(annotations)}: names {name}, but {tree.where('val/images/' + name)} "
                "does not exist; restore the image or remove the line"
            )
        labels[f"val/images/{name}"] = label_of[wnid]
        boxes[name] = _box(wnid, coords)
    unlabeled = sorted(images - set(labels), key=_natural_key)
    if unlabeled:
        raise DataError(
            f"{tree.where(unlabeled[0])}: not in {annotations} ({len(unlabeled)} val images are "
            "not); restore the annotation file or remove the images"
        )
    files = sorted(labels, key=_natural_key)
    return files, [labels[f] for f in files]


@dataclass
class TinyImageNetFiles:
    """The checked listing of a Tiny ImageNet source, nothing decoded: files are paths inside
    `tree` (e.g. "val/images/val_0.JPEG"), in label order within each split."""

    tree: Tree
    wnids: list[str]
    words: dict[str, str]  # wnid -> words.txt text, where it has one
    train: tuple[list[str], list[int]]  # (files, labels)
    val: tuple[list[str], list[int]]
    test: list[str]  # unlabeled
    boxes: dict[str, Box]
    notes: list[str]

    @property
    def class_words(self) -> list[str]:
        return [self.words.get(wnid, wnid) for wnid in self.wnids]

    def files(self, split: str) -> list[str]:
        """A split's files ("train" | "val" | "test"), paths inside `tree`, in label order."""
        return self.test if split == "test" else getattr(self, split)[0]

    def labels(self, split: str) -> np.ndarray:
        """A labelled split's int64 labels (indexes into wnids)."""
        return np.array(getattr(self, split)[1], dtype=np.int64)

    def decode(
        self,
        split: str,
        *,
        side: int = IMAGE_SIZE,
        resize: bool = False,
        workers: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """A split's images as uint8 (N, side, side, 3). An image of another size is a DataError
        unless resize (bilinear); non-RGB images are converted and counted in `notes` (Tiny
        ImageNet has grayscale JPEGs). Decoding uses `workers` processes (default 2)."""
        items = [(self.tree.where(rel), self.tree.files[rel]) for rel in self.files(split)]
        label = f"Tiny ImageNet {split}" if progress else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvertedToRGBWarning)
            images = decode_images(
                items, (side, side), resize=resize, workers=workers, progress=label
            )
        for w in caught:
            if issubclass(w.category, ConvertedToRGBWarning):
                self.notes.append(f"{split}: {w.message}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return images


def list_tiny_imagenet(source: str | Path) -> TinyImageNetFiles:
    """Read the folder, .zip or .tar.gz's listing, class list, labels and boxes, checking that
    they agree (a DataError names the file and says what to fix)."""
    tree = _open_tree(Path(source))
    by_dir: dict[str, list[str]] = defaultdict(list)
    for rel in tree.files:
        folder, _, name = rel.rpartition("/")
        by_dir[folder].append(name)

    wnids = tree.text("wnids.txt").split()
    if not wnids:
        raise DataError(f"{tree.where('wnids.txt')}: empty; {_HOW_TO_FIX}")
    if len(set(wnids)) != len(wnids):
        dupes = sorted({w for w in wnids if wnids.count(w) > 1})
        raise DataError(f"{tree.where('wnids.txt')}: repeated wnids {dupes}; {_HOW_TO_FIX}")
    notes: list[str] = []
    words = {}
    if "words.txt" in tree.files:
        for line in tree.text("words.txt").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.strip()
    else:
        notes.append("no words.txt: class_words are the wnids")

    boxes: dict[str, Box] = {}
    train = _read_train(tree, by_dir, wnids, boxes, notes)
    val = _read_val(tree, by_dir, wnids, boxes)
    test = _images_in(by_dir, "test/images")
    if not test:
        notes.append("no test/images: the test split is empty")
    return TinyImageNetFiles(tree, wnids, words, train, val, test, boxes, notes)


def read(source: str, options: ReadOptions = DEFAULTS) -> ImageDataset:
    """Tiny ImageNet as an ImageDataset: train, and the official val set (labelled) as the test
    set; class names are the words.txt words. Images must be 64x64 unless resize (bilinear, to
    side x side, default 64); non-RGB images are converted. Decoded once, then cached."""
    path = source_path(source, options.progress, options.cache())

    def build() -> dict[str, np.ndarray]:
        listing = list_tiny_imagenet(path)
        kw = {"side": options.side or IMAGE_SIZE, "resize": options.resize}
        kw |= {"workers": options.workers, "progress": options.progress}
        return {
            "train_images": listing.decode("train", **kw),
            "train_labels": listing.labels("train"),
            "test_images": listing.decode("val", **kw),
            "test_labels": listing.labels("val"),
            "class_names": np.array(listing.class_words),
        }

    return cached_dataset(path, f"Tiny ImageNet at {path}", build, options, "tiny-imagenet-")
