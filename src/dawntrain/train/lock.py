"""One run at a time writes a run directory: `RUN/.lock` (pid, host) held with flock by rank 0;
a lock left by a killed run is free (the kernel dropped the flock) and is taken over with a note.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from dawntrain.errors import DawntrainError
from dawntrain.runtime import distributed

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None

LOCK_NAME = ".lock"


class RunLocked(DawntrainError):
    """The run directory is in use by another live process."""


class StaleLockWarning(UserWarning):
    """A lock left by a run that ended without releasing it (killed) was taken over."""


def _holder(fd: int) -> str:
    """Who wrote a lock file, in words ("" for an empty file)."""
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if not raw:
        return ""
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return raw[:200]


def _remove_partial_files(out: Path) -> None:
    """Temp files of atomic writes cut short by a kill (`.name.XXXX.tmp`): never read, removed."""
    for folder in (out, out / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _acquire(out: Path) -> int | None:
    """flock RUN/.lock and write our pid into it; the open descriptor holds the lock."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    if fcntl is None:  # pragma: no cover
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"{out} is in use by another run ({holder or 'holder unknown'}); wait for it to "
                f"end or pass another --out (if no such process runs, delete {path})"
            ) from None
        # A holder that just ended unlinks the file after we opened it: lock the current one.
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    previous = _holder(fd)
    if previous:
        warnings.warn(
            f"{path}: took over the lock of a run that stopped without releasing it "
            f"({previous}); its last checkpoint is intact",
            StaleLockWarning,
            stacklevel=3,
        )
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%c")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _remove_partial_files(out)
    return fd


@contextlib.contextmanager
def run_lock(out: Path, world: distributed.World | None = None) -> Iterator[None]:
    """Hold RUN/.lock for a run's life (rank 0 only); every rank raises RunLocked if it is taken.
    Directories that the lock created and the run left empty (it failed early) are removed."""
    out, fd, error = Path(out), None, None
    created = [d for d in (out, *out.parents) if not d.exists()]  # innermost first
    if world is None or world.is_main:
        try:
            fd = _acquire(out)
        except (RunLocked, OSError) as e:
            error = str(e) if isinstance(e, RunLocked) else f"{out}: cannot lock the run ({e})"
    error = distributed.broadcast_object(error)
    if error:
        raise RunLocked(error)
    try:
        yield
    finally:
        if fd is not None:
            # Unlink while still holding the flock, so a waiter never locks a removed file.
            with contextlib.suppress(OSError):
                os.unlink(out / LOCK_NAME)
            os.close(fd)
            for directory in created:
                try:
                    directory.rmdir()
                except OSError:  # not empty: the run wrote something
                    break
