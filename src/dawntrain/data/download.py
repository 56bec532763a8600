"""Download a file resumably, and verified before it appears under its name.

The bytes go to `<dest>.part`, held with flock while a process writes it. A dropped connection
is resumed with an HTTP Range request (in the same call while it keeps making progress, else by
the next call, which finds the .part); a server that ignores Range sends the whole file again.
The finished .part is checked against the expected size and checksums and only then renamed to
dest (dawntrain.files.replace_durably). Progress is a tqdm bar where stderr is a terminal and a
line every few percent elsewhere.

`Archive` is an official data set file (url, name, size, checksums); `download_archive` puts one
in a directory, and its errors say where a copy downloaded on another machine goes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from tqdm import tqdm

from dawntrain.errors import DataError
from dawntrain.files import CHUNK_BYTES, DISK_FULL, digests, replace_durably

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, downloads still work
    fcntl = None

TIMEOUT_S = 60
RESUME_TRIES = 5  # reconnections in one call, each after a connection that brought some bytes
LINE_EVERY_PERCENT = 5  # progress lines where stderr is no terminal
LINE_EVERY_BYTES = 32 << 20  # ... and where the size is unknown


@dataclass(frozen=True)
class Archive:
    """An official data set file and what it must be."""

    name: str  # the name `dawntrain data download` and --data know it by
    url: str
    filename: str
    size: int | None = None  # bytes
    md5: str | None = None
    sha256: str | None = None

    def expected(self) -> dict[str, str]:
        """The checks a download must pass: {"size" | "md5" | "sha256": expected value}."""
        checks = {"size": str(self.size) if self.size is not None else None}
        checks |= {"sha256": self.sha256, "md5": self.md5}  # a mismatch names the first
        return {name: value.lower() for name, value in checks.items() if value}


class _Dropped(Exception):
    """The connection ended before the whole file came, after bringing some bytes."""


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class _Progress:
    """A tqdm bar on a terminal; elsewhere a line each LINE_EVERY_PERCENT percent (or each
    LINE_EVERY_BYTES when the size is unknown); nothing when disabled."""

    def __init__(self, label: str, total: int | None, done: int, stream: TextIO, enabled: bool):
        self.label, self.total, self.done, self.stream = label, total, done, stream
        self.enabled = enabled
        self.bar = None
        if enabled and stream.isatty():
            self.bar = tqdm(
                total=total,
                initial=done,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=stream,
            )
        self.mark = self._next_mark()

    def _next_mark(self) -> int:
        if self.total:
            percent = self.done * 100 // self.total
            return (percent // LINE_EVERY_PERCENT + 1) * LINE_EVERY_PERCENT
        return (self.done // LINE_EVERY_BYTES + 1) * LINE_EVERY_BYTES

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.enabled:
            return
        if self.total and self.done * 100 // self.total >= self.mark:
            line = f"{self.done * 100 // self.total}% ({mib(self.done)} of {mib(self.total)})"
        elif not self.total and self.done >= self.mark:
            line = mib(self.done)
        else:
            return
        print(f"{self.label}: {line}", file=self.stream, flush=True)
        self.mark = self._next_mark()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _range_start(response) -> int | None:
    """The first byte of a 206 response (its Content-Range), else None."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _open(url: str, offset: int):
    """The response to GET url (from byte `offset` on, where offset > 0); None when the server
    says there is nothing past offset (416). Network and HTTP errors are one-line DataErrors."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return None
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, a malformed URL
        raise DataError(f"cannot download {url}: {e}") from None


def fetch(
    url: str, out: BinaryIO, part: Path, size: int | None, progress: bool, stream: TextIO
) -> None:
    """One request: append to `out` (the open `part`) what the server has past its end, or the
    whole file where the server ignores Range. Raises _Dropped if the connection ended early
    after bringing bytes, DataError if it failed before any."""
    label = part.name.removesuffix(".part")
    offset = out.seek(0, os.SEEK_END)
    if size is not None and offset > size:  # not a prefix of this file
        offset = out.truncate(0)
    if size is not None and offset == size:
        return
    response = _open(url, offset)
    if response is None:
        return  # 416: the .part is complete (or not this file: the checks will say)
    with response:
        start = offset if getattr(response, "status", None) == 206 else 0
        if start and _range_start(response) != offset:
            raise DataError(f"cannot download {url}: asked for bytes {offset}-, got another range")
        if start and progress:
            print(f"{label}: resuming at {mib(start)}", file=stream, flush=True)
        out.truncate(start)
        out.seek(start)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else size
        bar = _Progress(label, total, start, stream, progress)
        got, failure = 0, None
        try:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except OSError as e:  # a reset or a timeout in the middle
                    failure = e
                    break
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        except OSError as e:
            if e.errno in DISK_FULL:
                raise DataError(
                    f"{part}: the disk is full (or over quota); free space and download "
                    "again: it resumes from what was written"
                ) from e
            raise
        finally:
            bar.close()
    if failure is None and (total is None or start + got >= total):
        return
    reason = failure or f"the connection closed after {mib(start + got)} of {mib(total)}"
    if got:
        raise _Dropped(reason)
    raise DataError(f"cannot download {url}: {reason}")


def _fetch_resuming(
    url: str, out: BinaryIO, part: Path, size: int | None, progress: bool, stream: TextIO
) -> None:
    """fetch, reconnecting (with Range) up to RESUME_TRIES times while each try brings bytes."""
    for _ in range(RESUME_TRIES):
        try:
            return fetch(url, out, part, size, progress, stream)
        except _Dropped as e:
            if progress:
                print(f"{part.name}: {e}; reconnecting", file=stream, flush=True)
    try:
        return fetch(url, out, part, size, progress, stream)
    except _Dropped as e:
        raise DataError(
            f"cannot download {url}: {e} ({RESUME_TRIES + 1} connections dropped); {part} "
            f"keeps the {mib(part.stat().st_size)} so far: run the command again to resume"
        ) from None


def checked(path: Path, expected: dict[str, str]) -> dict[str, str]:
    """{check: actual value} of the `expected` checks ("size", "md5", "sha256") that path fails;
    a wrong size is reported alone (the digests then differ too)."""
    actual_size = path.stat().st_size
    if "size" in expected and str(actual_size) != expected["size"]:
        return {"size": str(actual_size)}
    algorithms = [name for name in expected if name != "size"]
    got = digests(path, algorithms) if algorithms else {}
    return {name: value for name, value in got.items() if value != expected[name]}


@contextlib.contextmanager
def _locked_part(part: Path) -> Iterator[BinaryIO]:
    """The .part file opened for writing (kept as it is) and flocked; removed on the way out if
    it is empty, so a failure before the first byte leaves nothing behind."""
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        out = os.fdopen(os.open(part, os.O_RDWR | os.O_CREAT, 0o666), "r+b")
    except OSError as e:
        raise DataError(f"cannot write {part} ({e}); choose a writable directory") from e
    with out:
        if fcntl is not None:
            try:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataError(
                    f"{part}: another process is downloading this file; wait for it to finish"
                ) from None
        try:
            yield out
        finally:
            if os.fstat(out.fileno()).st_size == 0:
                part.unlink(missing_ok=True)


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    size: int | None = None,
    stream: TextIO | None = None,
) -> Path:
    """Download url to dest (resuming dest's .part if there is one) and check its size and
    checksum(s); dest appears only once it passes.

    A check that fails truncates the download and tries once more, then raises a DataError
    naming the file and both values. A network failure raises a one-line DataError; a download
    cut short keeps its .part for the next call to resume. Progress goes to `stream` (stderr).
    """
    dest, stream = Path(dest), stream or sys.stderr
    part = dest.with_name(dest.name + ".part")
    expected = Archive("", url, dest.name, size, md5, sha256).expected()
    if progress and not stream.isatty():
        print(f"downloading {url} to {dest}", file=stream, flush=True)
    with _locked_part(part) as out:
        for attempt in (1, 2):
            _fetch_resuming(url, out, part, size, progress, stream)
            wrong = checked(part, expected)
            if not wrong:
                replace_durably(part, dest)
                return dest
            out.truncate(0)
            if attempt == 1 and progress:
                print(f"checksum mismatch for {dest.name}; downloading it again", file=stream)
    name, value = next(iter(wrong.items()))
    raise DataError(
        f"{dest}: the {name} of the file downloaded from {url} is {value}, expected "
        f"{expected[name]} (tried twice; the download was deleted)"
    )


def download_archive(archive: Archive, directory: Path, progress: bool = True) -> Path:
    """The archive's file in directory: checked if it is there already, else downloaded there.
    A failure says how to bring a copy from a machine with a network."""
    dest = Path(directory) / archive.filename
    if dest.exists():
        wrong = checked(dest, archive.expected())
        if wrong:
            name, value = next(iter(wrong.items()))
            raise DataError(
                f"{dest}: its {name} is {value}, expected {archive.expected()[name]}: not the "
                f"official {archive.filename} or damaged; delete it and download it again"
            )
        return dest
    try:
        return download(
            archive.url, dest, archive.md5, archive.sha256, progress=progress, size=archive.size
        )
    except DataError as e:
        raise DataError(
            f"{e}; without a network here, run `dawntrain data download {archive.name} --to DIR` "
            f"on a machine that has one (or fetch {archive.url}) and copy {archive.filename} "
            f"into {directory} (or set DAWNTRAIN_DATA to the directory holding it), or pass "
            f"--data PATH/{archive.filename}"
        ) from None
