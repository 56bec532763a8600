"""Decode once: keep a data set's uint8 arrays as .npy files and memory-map them afterwards.

An entry is `<cache_dir>/arrays/<key>/{name}.npy` plus `meta.json` (array shapes and dtypes,
and the caller's meta). It is written in a temporary directory and renamed into place, so a
crash never leaves a half-written entry; an entry that fails to load is rebuilt.
`entries` lists a cache's entries and `remove` deletes some (`dawntrain data cache`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dawntrain.errors import DataError

# Bump when the layout of an entry changes: older entries are then rebuilt, not misread.
CACHE_FORMAT = 1
_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CacheRebuiltWarning(UserWarning):
    """A cache entry was unreadable (corrupt, truncated, old format) and has been rebuilt."""


def default_cache_dir() -> Path:
    """Where archives are looked for and downloaded, and arrays cached: $DAWNTRAIN_DATA, else
    $XDG_CACHE_HOME/dawntrain, else ~/.cache/dawntrain."""
    env = os.environ.get("DAWNTRAIN_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec: a relative path is invalid and is ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "dawntrain"


def _load_entry(entry: Path) -> dict[str, np.ndarray]:
    """Memory-map every array of an entry, checking them against meta.json; raise ValueError."""
    info = json.loads((entry / "meta.json").read_text())
    if info.get("format") != CACHE_FORMAT:
        raise ValueError(f"cache format {info.get('format')}, expected {CACHE_FORMAT}")
    arrays = {}
    for name, spec in info["arrays"].items():
        # Copy-on-write mapping: callers may modify their arrays without touching the cache,
        # and torch.from_numpy does not warn about read-only memory.
        array = np.load(entry / f"{name}.npy", mmap_mode="c", allow_pickle=False)
        if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
            raise ValueError(f"{name}.npy is {array.dtype.str} {array.shape}, expected {spec}")
        arrays[name] = np.asarray(array)
    return arrays


def _remove_abandoned(arrays_dir: Path, key: str) -> None:
    """Delete temporary directories for this key ("*": any) left by processes that no longer
    run."""
    for tmp in arrays_dir.glob(f".tmp-{key}-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, OSError):
            pass


def cached_arrays(
    key: str,
    build: Callable[[], dict[str, np.ndarray]],
    cache_dir: Path,
    meta: dict | None = None,
) -> dict[str, np.ndarray]:
    """Return the arrays cached under key, calling build() and caching its result if needed.

    The arrays come back memory-mapped copy-on-write: loading is instant, and writes to them
    stay in the process. key must be a file name (letters, digits, '.', '_', '-').
    """
    if not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"cache key {key!r} is not a plain file name")
    arrays_dir = Path(cache_dir) / "arrays"
    entry = arrays_dir / key
    if entry.exists():
        try:
            return _load_entry(entry)
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(
                f"cache entry {entry} is unreadable ({e}); rebuilding it",
                CacheRebuiltWarning,
                stacklevel=2,
            )
            shutil.rmtree(entry, ignore_errors=True)

    arrays = build()
    try:
        arrays_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(arrays_dir, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{os.getpid()}-", dir=arrays_dir))
    except OSError as e:
        raise DataError(
            f"cannot write the data cache in {arrays_dir} ({e}); set "
            "DAWNTRAIN_DATA to a writable directory"
        ) from e
    try:
        specs = {}
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            specs[name] = {"shape": list(array.shape), "dtype": array.dtype.str}
        info = {"format": CACHE_FORMAT, "key": key, "arrays": specs, "meta": meta or {}}
        (tmp / "meta.json").write_text(json.dumps(info, indent=1) + "\n")
        try:
            tmp.rename(entry)
        except OSError:
            if not entry.exists():  # another process won the race: its entry is as good
                raise
    except OSError as e:
        raise DataError(f"cannot write the data cache entry {entry} ({e})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_entry(entry)


@dataclass(frozen=True)
class CacheEntry:
    """One cached data set, as `dawntrain data cache` lists it."""

    key: str
    path: Path
    source: str  # what was decoded ("?" where meta.json is unreadable)
    size: int  # bytes on disk
    written: float  # when the entry was written (seconds since the epoch)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.written


def _entry(path: Path) -> CacheEntry:
    files = [f for f in path.iterdir() if f.is_file()]
    meta = path / "meta.json"
    try:
        source = str(json.loads(meta.read_text())["meta"].get("source", "?"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        source = "?"
    written = meta.stat().st_mtime if meta.exists() else path.stat().st_mtime
    return CacheEntry(path.name, path, source, sum(f.stat().st_size for f in files), written)


def entries(cache_dir: Path) -> list[CacheEntry]:
    """The cache's entries, oldest first (temporary directories of writes under way are not
    entries)."""
    arrays_dir = Path(cache_dir) / "arrays"
    if not arrays_dir.is_dir():
        return []
    found = [
        _entry(p) for p in arrays_dir.iterdir() if p.is_dir() and _KEY_PATTERN.fullmatch(p.name)
    ]
    return sorted(found, key=lambda e: (e.written, e.key))


def remove(cache_dir: Path, chosen: list[CacheEntry]) -> None:
    """Delete these entries, and the temporary directories that dead processes left. A process
    that has an entry memory-mapped keeps its arrays; the next load decodes the source again."""
    arrays_dir = Path(cache_dir) / "arrays"
    for entry in chosen:
        try:
            shutil.rmtree(entry.path)
        except FileNotFoundError:
            pass  # removed meanwhile
        except OSError as e:
            raise DataError(f"cannot remove the cache entry {entry.path} ({e})") from e
    if arrays_dir.is_dir():
        _remove_abandoned(arrays_dir, "*")
