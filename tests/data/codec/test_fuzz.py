"""Fuzzing the readers of untrusted bytes: TFRecord framing (every compression), tf.train.Example,
TensorProto and whole image records. Random and mutated inputs must end in a RecordError, never
another exception, a hang or a blown-up allocation; valid inputs must still round-trip."""

import contextlib
import gzip
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dawntrain.data.codec.example import (
    decode_example,
    encode_example,
    parse_tensor,
    serialize_tensor,
)
from dawntrain.data.codec.record import ImageRecord, decode_record, encode_record
from dawntrain.data.codec.tfrecord import masked_crc32c, read_records, write_records
from dawntrain.errors import RecordError

COMPRESSIONS = ["none", "gzip", "zlib"]
READ_MODES = ["auto", None, "none", "gzip", "zlib"]  # None: from the file name's suffix
SUFFIX = {"none": ".tfrecord", "gzip": ".tfrecord.gz", "zlib": ".tfrecord.zz"}
RECORDS = [b"abc", b"", bytes(range(256)), b"x" * 40]
FUZZ = settings(
    max_examples=300,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:.*truncated file:RuntimeWarning"),
]


def valid_file(tmp_path, compression: str) -> bytes:
    path = tmp_path / f"valid{SUFFIX[compression]}"
    write_records(path, RECORDS)
    return path.read_bytes()


def png(size=(4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (9, 80, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


VALID_MESSAGES = [
    encode_example({"image/encoded": [b"\xff\xd8jpeg"], "label": [3], "f": [0.5, 1.0]}),
    serialize_tensor(np.arange(12, dtype=np.float32).reshape(3, 4)),
    serialize_tensor(np.uint8(9)),
    encode_record(ImageRecord(png(), "png", 1, 3, 4, "cat")),
    encode_record(ImageRecord(png(), "png", 2, 3, 4), layout="seed"),
]
mutations = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)


def mutate(data: bytes, edits: list, cut: int, junk: bytes) -> bytes:
    raw = bytearray(data)
    for position, value in edits:
        if raw:
            raw[position % len(raw)] = value
    return bytes(raw[: cut % (len(raw) + 1)]) + junk


def read_all(path, mode, **kw) -> list[bytes]:
    with contextlib.suppress(RecordError):
        return list(read_records(path, compression=mode, **kw))
    return []


@FUZZ
@given(data=st.binary(max_size=512), compression=st.sampled_from(COMPRESSIONS))
def test_random_files_raise_only_record_errors(tmp_path, data, compression):
    path = tmp_path / f"fuzz{SUFFIX[compression]}"
    path.write_bytes(data)
    for mode in READ_MODES:
        read_all(path, mode)
        read_all(path, mode, verify=False, allow_truncated=True)


@FUZZ
@given(
    compression=st.sampled_from(COMPRESSIONS),
    edits=mutations,
    cut=st.integers(0, 1 << 16),
    junk=st.binary(max_size=64),
    verify=st.booleans(),
)
def test_mutated_files_raise_only_record_errors(tmp_path, compression, edits, cut, junk, verify):
    path = tmp_path / f"fuzz{SUFFIX[compression]}"
    path.write_bytes(mutate(valid_file(tmp_path, compression), edits, cut, junk))
    for mode in ("auto", compression):
        got = read_all(path, mode, verify=verify, allow_truncated=True)
        if verify:  # whatever passes its CRCs is a record that was written
            assert all(record in RECORDS for record in got)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_unmutated_files_still_read(tmp_path, compression):
    path = tmp_path / f"x{SUFFIX[compression]}"
    path.write_bytes(valid_file(tmp_path, compression))
    for mode in ("auto", None, compression):
        assert list(read_records(path, compression=mode)) == RECORDS


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_huge_length_with_a_valid_crc_is_not_allocated(tmp_path, compression):
    # A length of 2**60 that passes its CRC: the reader must wait for the bytes, not reserve them.
    length = struct.pack("<Q", 1 << 60)
    framed = length + struct.pack("<I", masked_crc32c(length)) + b"tiny"
    raw = {"none": framed, "gzip": gzip.compress(framed, mtime=0), "zlib": zlib.compress(framed)}
    path = tmp_path / f"huge{SUFFIX[compression]}"
    path.write_bytes(raw[compression])
    with pytest.raises(RecordError, match="truncated"):
        list(read_records(path))


def decode_all(data: bytes) -> None:
    for parse in (decode_example, parse_tensor, decode_record):
        with contextlib.suppress(RecordError):
            parse(data)


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_messages_raise_only_record_errors(data):
    decode_all(data)


@FUZZ
@given(
    base=st.sampled_from(VALID_MESSAGES),
    edits=mutations,
    cut=st.integers(0, 1 << 16),
    junk=st.binary(max_size=32),
)
def test_mutated_messages_raise_only_record_errors(base, edits, cut, junk):
    decode_all(mutate(base, edits, cut, junk))


def test_unmutated_messages_still_decode():
    assert decode_example(VALID_MESSAGES[0])["label"] == [3]
    assert parse_tensor(VALID_MESSAGES[1]).shape == (3, 4)
    image, label, text = decode_record(VALID_MESSAGES[3])
    assert image.shape == (3, 4, 3) and (label, text) == (1, "cat")
    assert decode_record(VALID_MESSAGES[4])[1] == 2
