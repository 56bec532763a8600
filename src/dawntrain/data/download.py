"""Download a file atomically (dawntrain.files.atomic_write), with a progress bar and a checksum
check before the file appears."""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from dawntrain.errors import DataError
from dawntrain.files import CHUNK_BYTES, atomic_write

TIMEOUT_S = 60


class _Mismatch(Exception):
    """The downloaded bytes do not have the expected checksums."""

    def __init__(self, wrong: dict[str, str]):
        super().__init__(wrong)
        self.wrong = wrong


def fetch(
    url: str, out: BinaryIO, algorithms: list[str], label: str, progress: bool
) -> dict[str, str]:
    """Stream url into the open file `out` and return the hex digests of what was written."""
    digests = {name: hashlib.new(name) for name in algorithms}
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            with tqdm(
                total=int(length) if length else None,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    for digest in digests.values():
                        digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, a malformed URL
        raise DataError(f"cannot download {url}: {e}") from None
    return {name: digest.hexdigest() for name, digest in digests.items()}


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download url to dest and verify its checksum(s); dest appears only once it is verified.

    A checksum mismatch deletes the download and tries once more, then raises a DataError
    naming the file and both checksums. A network failure raises a one-line DataError.
    """
    dest = Path(dest)
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}
    show = progress and sys.stderr.isatty()
    if progress and not show:
        print(f"downloading {url} to {dest}", file=sys.stderr)

    def write_verified(out: BinaryIO) -> None:
        got = fetch(url, out, list(expected), dest.name, show)
        wrong = {name: got[name] for name in expected if got[name] != expected[name]}
        if wrong:
            raise _Mismatch(wrong)  # atomic_write deletes what was written

    for attempt in (1, 2):
        try:
            return atomic_write(dest, write_verified, error=DataError)
        except _Mismatch as e:
            wrong = e.wrong
        if attempt == 1 and progress:
            print(f"checksum mismatch for {dest.name}; downloading it again", file=sys.stderr)
    name, value = next(iter(wrong.items()))
    raise DataError(
        f"{dest}: the {name} of the file downloaded from {url} is {value}, expected "
        f"{expected[name]} (tried twice; the download was deleted)"
    )
