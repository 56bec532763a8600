"""TFRecord files: the framing TensorFlow writes, with CRC32C checks and GZIP/ZLIB compression.

A record on disk (after decompression) is

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

Reading streams the file in 1 MiB chunks (decompressed with zlib as it goes), so a shard of any
size reads in bounded memory. Writing goes through dawntrain.files.atomic_write: a temporary file
replaces the target only once it is complete and on disk, so a reader never sees half a shard.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from dawntrain.errors import ConfigError, RecordError
from dawntrain.files import PathLike, atomic_write

if google_crc32c.implementation != "c":
    warnings.warn(
        "google-crc32c is running its pure-Python fallback, which makes TFRecord CRC checks about "
        "100x slower; reinstall google-crc32c from a wheel that ships the C extension",
        RuntimeWarning,
        stacklevel=2,
    )

_CHUNK = 1 << 20
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_LEN = struct.Struct("<Q")
# zlib window bits: 31 = gzip wrapper (what TF's "GZIP" writes), 15 = zlib wrapper ("ZLIB").
_WBITS = {"gzip": 31, "zlib": 15}
# TF's writer uses zlib's default level (Z_DEFAULT_COMPRESSION = 6), not gzip(1)'s 9.
_LEVEL = 6
SUFFIXES = {"none": "", "gzip": ".gz", "zlib": ".zz"}


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C rotated right by 15 bits plus a constant (from leveldb), so
    that the CRC of data that itself contains CRCs is not trivially related to them."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def normalize_compression(compression: str | None, path: PathLike | None = None) -> str:
    """'none' | 'gzip' | 'zlib' from TF's names ('', 'GZIP', 'ZLIB') or ours; None infers it
    from the suffix of `path` (.gz, .zz, anything else)."""
    if compression is None:
        suffix = Path(path).suffix.lower() if path is not None else ""
        return {".gz": "gzip", ".zz": "zlib"}.get(suffix, "none")
    name = compression.strip().lower() or "none"
    if name not in ("none", "gzip", "zlib", "auto"):
        raise ConfigError(
            f"compression {compression!r} is not one of 'none', 'gzip', 'zlib' (or 'auto' to read)"
        )
    return name


def write_records(path: PathLike, records: Iterable[bytes], compression: str | None = None) -> int:
    """Write `records` to a TFRecord file atomically and return how many were written.
    compression: 'none' | 'gzip' | 'zlib', or None to infer it from the suffix (.gz, .zz)."""
    compression = normalize_compression(compression, path)
    if compression == "auto":
        raise ConfigError("compression 'auto' is only for reading; pass 'none', 'gzip' or 'zlib'")
    count = 0

    def write(f: BinaryIO) -> None:
        nonlocal count
        if compression == "none":
            out, finish = f.write, None
        else:
            deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS[compression])

            def out(data: bytes) -> None:
                f.write(deflate.compress(data))

            def finish() -> None:
                f.write(deflate.flush())

        for record in records:
            if not isinstance(record, bytes):
                if not isinstance(record, bytearray | memoryview):
                    raise TypeError(f"record {count} is {type(record).__name__}, not bytes")
                record = bytes(record)
            length = _LEN.pack(len(record))
            out(length + _CRC.pack(masked_crc32c(length)))
            out(record)
            out(_CRC.pack(masked_crc32c(record)))
            count += 1
        if finish is not None:
            finish()

    atomic_write(path, write, error=RecordError)
    return count


def detect_compression(path: PathLike) -> str:
    """Guess 'none' | 'gzip' | 'zlib' from the first bytes of a file, not its name."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    return _detect(head)


def _detect(head: bytes) -> str:
    # A valid length CRC settles it first: the length bytes of an uncompressed file can look like
    # a gzip or zlib magic (a first record of 376 bytes starts 78 01), but a compressed stream
    # matches the CRC of its own first 8 bytes only by a 2**-32 accident.
    if len(head) >= _HEADER.size and masked_crc32c(head[:8]) == _HEADER.unpack_from(head)[1]:
        return "none"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    # RFC 1950 header: CM = 8 (deflate), CINFO <= 7, and (CMF*256 + FLG) divisible by 31.
    cmf_flg = int.from_bytes(head[:2], "big")
    if len(head) >= 2 and cmf_flg >> 8 & 0x0F == 8 and cmf_flg >> 12 <= 7 and cmf_flg % 31 == 0:
        return "zlib"
    return "none"


class _TruncatedStream(Exception):
    """The compressed stream ended before its end-of-stream marker."""


def _raw_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _inflate(raw: Iterator[bytes], wbits: int) -> Iterator[bytes]:
    """Decompress chunk by chunk, at most _CHUNK bytes of output at a time (so a small bomb
    cannot blow up memory), following concatenated members as gzip(1) does."""
    inflater = zlib.decompressobj(wbits)
    started = False
    for data in raw:
        while data:
            started = True
            out = inflater.decompress(data, _CHUNK)
            data = inflater.unconsumed_tail
            # Output capped at _CHUNK can leave more pending inside zlib with no input left.
            while out:
                yield out
                out = b""
                if not data and not inflater.eof:
                    out = inflater.decompress(b"", _CHUNK)
            if inflater.eof:
                data = inflater.unused_data
                inflater, started = zlib.decompressobj(wbits), False
    if started:
        raise _TruncatedStream


def _records_from_chunks(
    chunks: Iterator[bytes], path: PathLike, verify: bool, allow_truncated: bool, compression: str
) -> Iterator[bytes]:
    buf = bytearray()
    pos = 0  # start of the next record in buf
    base = 0  # stream offset of buf[0]
    index = 0
    need = _HEADER.size  # bytes of buf (from pos) needed before the next step can run
    stream_truncated = False
    try:
        for chunk in chunks:
            if pos:
                del buf[:pos]
                base += pos
                pos = 0
            buf += chunk
            while len(buf) - pos >= need:
                length, length_crc = _HEADER.unpack_from(buf, pos)
                # The length CRC is always checked (8 bytes, cheap): a corrupt length would
                # otherwise make the reader wait for gigabytes that never come.
                if masked_crc32c(bytes(buf[pos : pos + 8])) != length_crc:
                    raise RecordError(
                        f"{path}: record {index} at byte {base + pos}: the length field fails "
                        "its CRC32C check; the file is corrupt (or not a TFRecord file, or read "
                        "with the wrong compression); re-write it from its source"
                    )
                end = pos + _HEADER.size + length + 4
                if len(buf) < end:
                    need = end - pos
                    break
                data = bytes(buf[pos + _HEADER.size : end - 4])
                if verify and masked_crc32c(data) != _CRC.unpack_from(buf, end - 4)[0]:
                    raise RecordError(
                        f"{path}: record {index} at byte {base + pos} (of the "
                        f"{'decompressed ' if compression != 'none' else ''}stream): the data "
                        "fails its CRC32C check; the file is corrupt; re-write it from its source"
                    )
                yield data
                index += 1
                pos = end
                need = _HEADER.size
    except zlib.error as e:
        raise RecordError(
            f"{path}: corrupt {compression} data after record {index} (byte {base + pos} of the "
            f"decompressed stream): {e}; the file is damaged; re-write it from its source"
        ) from e
    except _TruncatedStream:
        stream_truncated = True
    left = len(buf) - pos
    if not left and not stream_truncated:
        return
    what = (
        f"{left} bytes of a partial record {index} at byte {base + pos}"
        if left
        else f"the end of the {compression} stream (after record {index - 1})"
    )
    if not allow_truncated:
        raise RecordError(
            f"{path}: the file is truncated: it ends inside {what}; a writer was probably "
            "stopped mid-write; re-write it, or pass allow_truncated=True to read the "
            f"{index} whole records before the cut"
        )
    warnings.warn(
        f"{path}: truncated file: read {index} whole records and dropped {what}",
        RuntimeWarning,
        stacklevel=3,
    )


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise RecordError(f"{path}: no such TFRecord file; check the path") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: is a directory, not a TFRecord file") from None
    except PermissionError:
        raise RecordError(
            f"{path}: no permission to read this TFRecord file; fix its permissions (chmod)"
        ) from None


def read_records(
    paths: PathLike | Iterable[PathLike],
    compression: str | None = "auto",
    verify: bool = True,
    allow_truncated: bool = False,
) -> Iterator[bytes]:
    """Yield the records of one or more TFRecord files, in order, streaming.

    compression: 'auto' (from the file's first bytes), 'none', 'gzip', 'zlib', or None (from the
    suffix). verify checks each record's data CRC32C (the length CRC is always checked). A file
    that ends inside a record raises RecordError unless allow_truncated, which warns and stops
    after the last whole record."""
    requested = normalize_compression(compression) if compression is not None else None
    for path in _as_paths(paths):
        with _open(path) as f:
            if requested is None:
                kind = normalize_compression(None, path)
            elif requested == "auto":
                kind = _detect(f.read(_HEADER.size))
                f.seek(0)
            else:
                kind = requested
            raw = _raw_chunks(f)
            chunks = raw if kind == "none" else _inflate(raw, _WBITS[kind])
            yield from _records_from_chunks(chunks, path, verify, allow_truncated, kind)
