"""What the CIFAR-10 and image-folder readers share: a source's files (a directory, or a .tar,
.tar.gz or .zip read without extracting it), the content hash that keys their cache entries,
and the cached read itself.

The cache key hashes the source's content: the sha256 of an archive file's bytes, or for a
directory the sha256 of its sorted listing of (relative path, size, mtime_ns) for every file
under it, so editing, adding or removing a file invalidates the entry while an unchanged
directory is not read again.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from dawntrain.data.cache import cached_arrays, default_cache_dir
from dawntrain.data.dataset import ImageDataset
from dawntrain.data.readers.options import ReadOptions
from dawntrain.errors import DataError
from dawntrain.files import file_sha256

# Part of every cache key: bump it when decoding changes so old cached arrays are not reused.
READER_VERSION = 1


def ignored(parts: tuple[str, ...] | list[str]) -> bool:
    """Hidden files (.DS_Store, macOS ._x.jpg resource forks) and zip's __MACOSX/ folder."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def path_parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name).parts if p not in ("/", "."))


def walk(path: Path) -> tuple[list[str], list[str]]:
    """Relative posix paths of the files and of the directories under path."""
    files, dirs = [], []
    for top, dirnames, filenames in os.walk(path, followlinks=True):
        rel = Path(top).relative_to(path)
        dirs += [(rel / d).as_posix() for d in dirnames]
        files += [(rel / f).as_posix() for f in filenames]
    return sorted(files), sorted(dirs)


def listing_hash(path: Path) -> str:
    """sha256 of the sorted (relative path, size, mtime_ns) of every file under path."""
    digest = hashlib.sha256()
    for name in walk(path)[0]:
        stat = (path / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(path: Path, resize: bool, side: int | None = None) -> tuple[str, str]:
    """(cache key, content hash) of a source path read with these options: the content hash
    is the file's sha256, or for a directory a hash of its listing (see listing_hash)."""
    content = listing_hash(path) if path.is_dir() else file_sha256(path)
    options = f"{READER_VERSION}\0{int(resize)}\0{side or ''}"
    digest = hashlib.sha256(f"{options}\0{content}".encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip("._-") or "data"
    return f"{stem}-{digest[:20]}", content


def cached_dataset(
    path: Path,
    description: str,
    build: Callable[[], dict[str, np.ndarray]],
    options: ReadOptions,
    prefix: str = "",
) -> ImageDataset:
    """The arrays `build()` makes from the source at `path`, decoded once and then memory-mapped
    from the cache entry keyed by prefix + cache_key(path, options.resize, options.side)."""
    resize, side = options.resize, options.side
    key, content = cache_key(path, resize, side)
    arrays = cached_arrays(
        prefix + key,
        build,
        options.cache() or default_cache_dir(),
        meta={"source": str(path), "content_sha256": content, "resize": resize, "side": side},
    )
    return ImageDataset.from_arrays(arrays, description)


@dataclass
class RawSource:
    """A source's contents before decoding: CIFAR-10's official batches hold pixel arrays
    already; an image folder or archive holds encoded files."""

    description: str
    class_names: list[str]
    arrays: dict[str, np.ndarray] | None  # the CIFAR batches, as the readers cache them
    # split -> [(name for errors, bytes or the file's path in a directory, label)]
    encoded: dict[str, list[tuple[str, bytes | Path, int]]] | None


class Files:
    """The files of a source: a directory, or a .tar(.gz) or .zip read without extracting it.

    A tar is read in one sequential pass (random access into a .tar.gz re-decompresses),
    keeping the bytes of the members whose base name `keep` accepts. `hint` ends the error
    for an unreadable archive (what the source may be instead).
    """

    def __init__(self, path: Path, keep: Callable[[str], bool], hint: str):
        self.path = path
        self.is_dir = path.is_dir()
        self.blobs: dict[str, bytes] = {}
        self._zip: zipfile.ZipFile | None = None
        if self.is_dir:
            self.files, self.dirs = walk(path)
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
                        if keep(member.name.rsplit("/", 1)[-1]):
                            self.blobs[member.name] = tar.extractfile(member).read()
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise DataError(
                f"{path}: not a readable .tar, .tar.gz or .zip archive ({e}); {hint}"
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
