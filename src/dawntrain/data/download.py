"""Download a file atomically, with a progress bar and a checksum check."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dawntrain.errors import DataError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes (hashlib algorithm name: "md5", "sha256", ...)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(
    url: str, tmp: Path, algorithms: list[str], label: str, progress: bool
) -> dict[str, str]:
    """Stream url into tmp and return the hex digests of what was written."""
    digests = {name: hashlib.new(name) for name in algorithms}
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The pid keeps two processes downloading the same file from writing into one temp file.
    tmp = dest.with_name(f"{dest.name}.part{os.getpid()}")
    show = progress and sys.stderr.isatty()
    if progress and not show:
        print(f"downloading {url} to {dest}", file=sys.stderr)
    try:
        for attempt in (1, 2):
            got = _fetch(url, tmp, list(expected), dest.name, show)
            wrong = {name: got[name] for name in expected if got[name] != expected[name]}
            if not wrong:
                os.replace(tmp, dest)
                return dest
            tmp.unlink()
            if attempt == 1 and progress:
                print(f"checksum mismatch for {dest.name}; downloading it again", file=sys.stderr)
        name, value = next(iter(wrong.items()))
        raise DataError(
            f"{dest}: the {name} of the file downloaded from {url} is {value}, expected "
            f"{expected[name]} (tried twice; the download was deleted)"
        )
    finally:
        tmp.unlink(missing_ok=True)
