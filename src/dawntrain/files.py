"""Files written whole or not at all, and file digests: the one copy the data layer (and any
other writer) uses.

`atomic_write` writes a temporary file beside the target (`.<name>.<random>.tmp`: the dot and
suffix keep it out of globs like 'train-*.tfrecord.gz', and a run directory's clean-up removes
ones a kill left behind), fsyncs it, renames it over the target and fsyncs the directory, so a
crash at any point leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dawntrain.errors import DawntrainError

PathLike = str | os.PathLike
CHUNK_BYTES = 1 << 20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def atomic_write(
    path: PathLike,
    data: bytes | bytearray | memoryview | Callable[[BinaryIO], object],
    *,
    error: type[DawntrainError] = DawntrainError,
) -> Path:
    """Write `data` (bytes, or a function that writes into the binary file it is given) to
    `path` atomically, creating missing parent directories, and return the path.

    If writing fails in any way the temporary file is removed and `path` is left as it was; a
    full disk (or quota) raises `error` saying so, other errors propagate as they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # "x": never write into a file that exists; open() gives the usual 0666 & ~umask mode.
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise error(
                f"{path}: the disk is full (or over quota) while writing; the partial file was "
                f"removed and any previous {path.name} is intact; free space and write again"
            ) from e
        raise
    return path


def replace_durably(src: PathLike, dest: PathLike) -> None:
    """Rename src over dest (same directory, written and fsynced already) and fsync the
    directory, so the rename itself survives a crash."""
    os.replace(src, dest)
    with contextlib.suppress(OSError):  # not possible everywhere
        dir_fd = os.open(Path(dest).parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def digests(path: PathLike, algorithms: list[str]) -> dict[str, str]:
    """{algorithm: hex digest} of a file's bytes (hashlib names: "sha256", "md5", ...), all in
    one read of the file, in 1 MiB chunks."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            for h in hashes.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (a hashlib algorithm name)."""
    return digests(path, [algorithm])[algorithm]


def file_sha256(path: PathLike) -> str:
    return digest(path, "sha256")
