"""TFRecord framing: byte layout, CRCs, compression, corruption, truncation, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import re
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dawntrain.data.codec.tfrecord import (
    detect_compression,
    masked_crc32c,
    read_records,
    write_records,
)
from dawntrain.errors import RecordError
from shared_data import TFRECORD_FIXTURES as FIXTURES
from shared_data import needs

needs_fixtures = needs(FIXTURES)
SUFFIX = {"none": ".tfrecord", "gzip": ".tfrecord.gz", "zlib": ".tfrecord.zz"}


def crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame_reference(record: bytes) -> bytes:
    def mask(crc: int) -> int:
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", mask(crc32c_reference(length)))
        + record
        + struct.pack("<I", mask(crc32c_reference(record)))
    )


RECORDS = [b"", b"a", b"hello world" * 50, bytes(range(256)) * 3, b""]


def test_crc32c_check_value_and_masking_match_reference():
    assert crc32c_reference(b"123456789") == 0xE3069283  # the published CRC-32C check value
    for data in (b"", b"\x00", b"123456789", bytes(range(256)) * 4):
        crc = crc32c_reference(data)
        assert masked_crc32c(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_uncompressed_bytes_match_the_reference_framing(tmp_path):
    path = tmp_path / "x.tfrecord"
    assert write_records(path, RECORDS) == len(RECORDS)
    assert path.read_bytes() == b"".join(frame_reference(r) for r in RECORDS)


@pytest.mark.parametrize("compression", ["none", "gzip", "zlib"])
@pytest.mark.parametrize("records", [RECORDS, [], [b""]], ids=["mixed", "no-records", "empty"])
def test_round_trip_each_compression(tmp_path, compression, records):
    path = tmp_path / f"x{SUFFIX[compression]}"
    assert write_records(path, iter(records)) == len(records)  # compression from the suffix
    expected = b"".join(frame_reference(r) for r in records)
    raw = path.read_bytes()
    if compression == "gzip":
        assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw) == expected
    elif compression == "zlib":
        assert zlib.decompress(raw) == expected
    else:
        assert raw == expected
    assert list(read_records(path)) == records
    assert list(read_records(path, compression=compression)) == records
    assert list(read_records(path, compression=None)) == records


def test_explicit_compression_overrides_suffix_and_auto_detects_it(tmp_path):
    path = tmp_path / "plain-name.tfrecord"
    write_records(path, RECORDS, compression="GZIP")  # TF's spelling
    assert detect_compression(path) == "gzip"
    assert list(read_records(path)) == RECORDS
    with pytest.raises(RecordError, match="plain-name"):
        list(read_records(path, compression="none"))


def test_auto_does_not_mistake_a_zlib_looking_length_for_zlib(tmp_path):
    # A 376-byte first record makes the file start 78 01: a valid zlib header.
    path = tmp_path / "x.tfrecord"
    records = [b"z" * 376, b"tail"]
    write_records(path, records)
    assert path.read_bytes()[:2] == b"\x78\x01"
    assert detect_compression(path) == "none"
    assert list(read_records(path)) == records


@pytest.mark.parametrize("compression", ["gzip", "zlib"])
def test_records_larger_than_the_read_chunk(tmp_path, compression):
    # Random data spans several 1 MiB chunks; zeros inflate > 1 MiB from one small input chunk.
    records = [os.urandom(2_500_000), b"x", bytes(3_000_000), b"y"]
    path = tmp_path / f"big{SUFFIX[compression]}"
    write_records(path, records)
    assert list(read_records(path)) == records


def test_concatenated_gzip_members_read_as_one_stream(tmp_path):
    a, b = tmp_path / "a.tfrecord.gz", tmp_path / "b.tfrecord.gz"
    write_records(a, [b"one", b"two"])
    write_records(b, [b"three"])
    both = tmp_path / "both.tfrecord.gz"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    assert list(read_records(both)) == [b"one", b"two", b"three"]


def test_reads_several_files_in_order(tmp_path):
    paths = []
    for i, compression in enumerate(["none", "gzip", "zlib"]):
        paths.append(tmp_path / f"{i}{SUFFIX[compression]}")
        write_records(paths[-1], [bytes([i]) * 3])
    assert list(read_records(paths)) == [b"\x00" * 3, b"\x01" * 3, b"\x02" * 3]


def test_flipped_data_byte_names_file_record_and_offset(tmp_path):
    path = tmp_path / "x.tfrecord"
    write_records(path, RECORDS)
    offset = sum(len(frame_reference(r)) for r in RECORDS[:2])  # record 2 starts here
    raw = bytearray(path.read_bytes())
    raw[offset + 12 + 7] ^= 0x01
    path.write_bytes(bytes(raw))
    reader = read_records(path)
    assert next(reader) == RECORDS[0] and next(reader) == RECORDS[1]
    with pytest.raises(RecordError, match=rf"x\.tfrecord: record 2 at byte {offset}\b.*CRC"):
        next(reader)
    # verify=False skips the data CRC, so the damage passes through
    assert list(read_records(path, verify=False))[2] != RECORDS[2]


def test_flipped_length_byte_is_caught_even_without_verify(tmp_path):
    path = tmp_path / "x.tfrecord"
    write_records(path, RECORDS)
    raw = bytearray(path.read_bytes())
    offset = len(frame_reference(RECORDS[0]))
    raw[offset + 3] ^= 0x40  # record 1's length field
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordError, match=f"record 1 at byte {offset}: the length field"):
        list(read_records(path, verify=False))


@pytest.mark.parametrize("compression", ["gzip", "zlib"])
def test_corrupt_compressed_data_names_the_file(tmp_path, compression):
    path = tmp_path / f"x{SUFFIX[compression]}"
    write_records(path, [os.urandom(5000) for _ in range(4)])
    raw = bytearray(path.read_bytes())
    for i in range(100, len(raw) - 10, 97):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordError, match=re.escape(str(path))):
        list(read_records(path))


@pytest.mark.parametrize("compression", ["none", "gzip", "zlib"])
def test_truncated_file_errors_or_yields_whole_records(tmp_path, compression):
    records = [os.urandom(300) for _ in range(5)]  # incompressible, so a cut loses record 4
    full = tmp_path / f"full{SUFFIX[compression]}"
    write_records(full, records)
    cut = tmp_path / f"cut{SUFFIX[compression]}"
    if compression == "none":
        cut_at = 3 * len(frame_reference(records[0])) + 100  # inside record 3
        cut.write_bytes(full.read_bytes()[:cut_at])
    else:
        raw = full.read_bytes()
        cut.write_bytes(raw[: len(raw) - 20])  # loses the stream end and part of record 4
    with pytest.raises(RecordError, match=r"cut.*truncated.*allow_truncated"):
        list(read_records(cut))
    with pytest.warns(RuntimeWarning, match=r"cut.*truncated.*dropped \d+ bytes"):
        got = list(read_records(cut, allow_truncated=True))
    assert got == records[: len(got)]
    assert len(got) == (3 if compression == "none" else 4)


def test_missing_file_and_directory_are_record_errors(tmp_path):
    with pytest.raises(RecordError, match="no such"):
        list(read_records(tmp_path / "nope.tfrecord"))
    with pytest.raises(RecordError, match="directory"):
        list(read_records(tmp_path))


def test_unreadable_file_is_a_record_error_that_says_permission(tmp_path, monkeypatch):
    from dawntrain.data.codec import tfrecord

    path = tmp_path / "locked.tfrecord"
    write_records(path, [b"x"])

    def denied(*args, **kwargs):  # as open() fails on a chmod 000 file (root reads anything)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(tfrecord, "open", denied, raising=False)
    with pytest.raises(RecordError, match=r"locked.tfrecord: no permission.*chmod"):
        list(read_records(path))


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    write_records(path, [b"old"])
    before = path.read_bytes()

    def failing():
        yield b"new"
        raise ValueError("source broke")

    with pytest.raises(ValueError, match="source broke"):
        write_records(path, failing())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tfrecord.gz"]


def test_disk_full_is_a_record_error_and_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.tfrecord"
    write_records(path, [b"old"])

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(RecordError, match="disk is full.*intact"):
        write_records(path, [b"new" * 1000])
    monkeypatch.undo()
    assert list(read_records(path)) == [b"old"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.tfrecord"]


@needs_fixtures
def test_tensorflow_written_fixtures_frame_correctly():
    jpeg = list(read_records(FIXTURES / "encoded-jpeg.tfrecord"))
    seed = list(read_records(sorted(FIXTURES.glob("seed-format-*.tfrecord.gz"))))
    assert len(jpeg) == len(seed) == 24
    assert detect_compression(FIXTURES / "seed-format-00-of-02.tfrecord.gz") == "gzip"


def _valid_file_bytes(compression: str) -> bytes:
    framed = b"".join(frame_reference(r) for r in [b"abc", b"", b"x" * 40])
    if compression == "gzip":
        return gzip.compress(framed, mtime=0)
    return zlib.compress(framed) if compression == "zlib" else framed


@pytest.mark.filterwarnings("ignore:.*truncated file:RuntimeWarning")
@settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    compression=st.sampled_from(["none", "gzip", "zlib"]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10_000),
    junk=st.binary(max_size=64),
)
def test_fuzz_mutated_files_raise_only_record_errors(tmp_path, compression, edits, cut, junk):
    raw = bytearray(_valid_file_bytes(compression))
    for position, value in edits:
        raw[position % len(raw)] = value
    path = tmp_path / "fuzz.tfrecord"
    path.write_bytes(bytes(raw[: cut % (len(raw) + 1)]) + junk)
    for mode in ("auto", compression):
        with contextlib.suppress(RecordError):
            list(read_records(path, compression=mode, allow_truncated=True))


@settings(
    max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200), mode=st.sampled_from(["auto", "none", "gzip", "zlib"]))
def test_fuzz_random_bytes_raise_only_record_errors(tmp_path, data, mode):
    path = tmp_path / "fuzz.tfrecord"
    path.write_bytes(data)
    with contextlib.suppress(RecordError):
        list(read_records(path, compression=mode))


def test_tensorflow_reads_what_we_write(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed")
    for compression in ("none", "gzip", "zlib"):
        path = tmp_path / f"x{SUFFIX[compression]}"
        write_records(path, RECORDS)
        tf_compression = {"none": "", "gzip": "GZIP", "zlib": "ZLIB"}[compression]
        got = [r.numpy() for r in tf.data.TFRecordDataset(str(path), tf_compression)]
        assert got == RECORDS
