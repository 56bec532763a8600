"""tf.train.Example and TensorProto wire format, checked against protos built byte by byte."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dawntrain.data.codec.example import (
    decode_example,
    encode_example,
    parse_tensor,
    serialize_tensor,
)
from dawntrain.errors import RecordError
from shared_data import TFRECORD_FIXTURES as FIXTURES
from shared_data import needs


# A minimal protobuf wire encoder, independent of the module under test.
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 are ten-byte two's complement varints
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def packed(number: int, items: bytes) -> bytes:
    return length_delimited(number, items)


def example_wire(features: dict[str, bytes]) -> bytes:
    """Example{features=1: Features{feature=1: map entry{key=1, value=2: Feature}}}, in the
    order given (encode_example sorts its keys)."""
    entries = b"".join(
        length_delimited(1, length_delimited(1, name.encode()) + length_delimited(2, feature))
        for name, feature in features.items()
    )
    return length_delimited(1, entries)


def tensor_wire(dtype: int, shape: list[int], *fields: bytes) -> bytes:
    dims = b"".join(length_delimited(2, key(1, 0) + varint(size)) for size in shape)
    return key(1, 0) + varint(dtype) + length_delimited(2, dims) + b"".join(fields)


def test_example_bytes_match_hand_built_wire_format():
    got = encode_example({"b": [b"xy", "é"], "f": [1.5, -2.0], "i": [3, -1, True]})
    expected = example_wire(
        {
            "b": length_delimited(
                1, length_delimited(1, b"xy") + length_delimited(1, "é".encode())
            ),
            "f": length_delimited(2, packed(1, struct.pack("<2f", 1.5, -2.0))),
            "i": length_delimited(3, packed(1, varint(3) + varint(-1) + varint(1))),
        }
    )
    assert got == expected


def test_decode_accepts_packed_and_unpacked_lists():
    unpacked_ints = b"".join(key(1, 0) + varint(v) for v in (7, -8, 2**40))
    unpacked_floats = b"".join(key(1, 5) + struct.pack("<f", v) for v in (0.25, -3.0))
    data = example_wire(
        {
            "a": length_delimited(3, unpacked_ints),
            "b": length_delimited(2, unpacked_floats),
            "c": length_delimited(3, packed(1, varint(5) + varint(6))),
            "d": b"",  # a Feature with no kind set
        }
    )
    assert decode_example(data) == {"a": [7, -8, 2**40], "b": [0.25, -3.0], "c": [5, 6], "d": []}


def test_numpy_arrays_and_scalars_pick_the_list_kind_by_dtype():
    got = decode_example(
        encode_example(
            {
                "u8": np.arange(4, dtype=np.uint8).reshape(2, 2),
                "bool": np.array([True, False]),
                "f64": np.array([0.1, 2.0]),
                "str": np.array(["ab", "c"]),
                "bytes": np.array([b"q"]),
                "label": 7,
                "text": "cat",
                "mixed": [1, 0.5],
            }
        )
    )
    assert got == {
        "bool": [1, 0],
        "bytes": [b"q"],
        "f64": [float(np.float32(0.1)), 2.0],
        "label": [7],
        "mixed": [1.0, 0.5],
        "str": [b"ab", b"c"],
        "text": [b"cat"],
        "u8": [0, 1, 2, 3],
    }


@pytest.mark.parametrize(
    "features",
    [{"x": [b"a", 1]}, {"x": [2**63]}, {"x": np.array([1 + 2j])}, {"x": {"a": 1}}, {1: [1]}],
)
def test_unencodable_features_are_record_errors(features):
    with pytest.raises(RecordError):
        encode_example(features)


feature_lists = st.one_of(
    st.lists(st.binary(max_size=20), max_size=5),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=5),
    st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=12), feature_lists, max_size=6))
def test_examples_round_trip(features):
    assert decode_example(encode_example(features)) == features


TENSORS = [
    np.array(7, np.uint8),
    np.array(-3, np.int32),
    np.array(2**40, np.int64),
    np.array(1.5, np.float16),
    np.array(0.1, np.float32),
    np.array(1e300, np.float64),
    np.array(True),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
    np.arange(5, dtype=np.int64) * -(2**35),
    np.linspace(-2, 2, 12).astype(np.float16).reshape(4, 3),
    np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32),
    np.random.default_rng(1).standard_normal(7),
    np.array([[True, False, True]]),
    np.zeros((0, 3), np.float32),
    np.arange(6, dtype=np.int16).reshape(2, 3),
    np.arange(6, dtype=np.uint64),
]


@pytest.mark.parametrize("array", TENSORS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_tensors_round_trip(array):
    got = parse_tensor(serialize_tensor(array), array.dtype)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_serialize_tensor_matches_tensorflow_bytes():
    # tf.io.serialize_tensor(tf.constant(19, tf.uint8)), as in the seed fixture's 'label'
    assert serialize_tensor(np.uint8(19)) == b'\x08\x04\x12\x00"\x01\x13'
    data = serialize_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    content = np.arange(6, dtype="<f4").tobytes()
    assert data == tensor_wire(1, [2, 3], length_delimited(4, content))
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    assert serialize_tensor(big_endian) == data


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


@pytest.mark.parametrize(
    "proto, expected",
    [
        # one value broadcast to the whole shape, as tf.constant(1.5, shape=[2, 3]) writes it
        (tensor_wire(1, [2, 3], packed(5, floats(1.5))), np.full((2, 3), 1.5, np.float32)),
        # fewer values than elements: the last one repeats
        (tensor_wire(1, [4], packed(5, floats(1, 2))), np.array([1, 2, 2, 2], np.float32)),
        # no values at all: zeros
        (tensor_wire(9, [2, 2]), np.zeros((2, 2), np.int64)),
        (tensor_wire(2, [3], packed(6, struct.pack("<d", 0.1))), np.full(3, 0.1)),
        (tensor_wire(3, [2], packed(7, varint(-5) + varint(6))), np.array([-5, 6], np.int32)),
        (tensor_wire(4, [3], packed(7, varint(200))), np.full(3, 200, np.uint8)),
        (tensor_wire(9, [], packed(10, varint(-(2**40)))), np.array(-(2**40), np.int64)),
        (tensor_wire(10, [3], packed(11, varint(1) + varint(0))), np.array([1, 0, 0], bool)),
        # half_val holds float16 bit patterns: 0x3E00 = 1.5, 0xC000 = -2
        (tensor_wire(19, [2], packed(13, varint(0x3E00) + varint(0xC000))), np.array([1.5, -2], np.float16)),
        # unpacked float_val, as older writers produce
        (tensor_wire(1, [2], key(5, 5) + floats(3), key(5, 5) + floats(4)), np.array([3, 4], np.float32)),
    ],
)  # fmt: skip
def test_parse_typed_value_fields(proto, expected):
    got = parse_tensor(proto)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "proto, message",
    [
        (tensor_wire(1, [2, 2], length_delimited(4, floats(1, 2, 3))), "tensor_content holds 12"),
        (tensor_wire(7, [1]), "unsupported or invalid dtype string"),
        (tensor_wire(1, [2**40, 2**20]), "over the"),
        (tensor_wire(1, [-1]), "negative"),
        (b"\xff\xff", "malformed"),
    ],
)
def test_bad_tensors_are_record_errors(proto, message):
    with pytest.raises(RecordError, match=message):
        parse_tensor(proto)


def test_dtype_mismatch_is_a_record_error():
    with pytest.raises(RecordError, match="float32, uint8 was expected"):
        parse_tensor(serialize_tensor(np.zeros(2, np.float32)), np.uint8)


@needs(FIXTURES)
def test_tensorflow_written_examples_re_encode_byte_for_byte():
    from dawntrain.data.codec.tfrecord import read_records

    for data in read_records(FIXTURES / "seed-format-00-of-02.tfrecord.gz"):
        features = decode_example(data)
        assert encode_example(features) == data  # keys 'img' < 'label': TF's order is sorted here
        img = parse_tensor(features["img"][0], np.float32)
        assert serialize_tensor(img) == features["img"][0]


VALID = [
    encode_example({"image/encoded": [b"\xff\xd8jpeg"], "label": [3], "f": [0.5, 1.0]}),
    serialize_tensor(np.arange(12, dtype=np.float32).reshape(3, 4)),
    serialize_tensor(np.uint8(9)),
]


@settings(max_examples=300, deadline=1000)
@given(
    base=st.sampled_from(VALID),
    edits=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 1000),
    junk=st.binary(max_size=32),
)
def test_fuzz_mutated_protos_raise_only_record_errors(base, edits, cut, junk):
    data = bytearray(base)
    for position, value in edits:
        data[position % len(data)] = value
    data = bytes(data[: cut % (len(data) + 1)]) + junk
    for parse in (decode_example, parse_tensor):
        with contextlib.suppress(RecordError):
            parse(data)


@settings(max_examples=200, deadline=1000)
@given(st.binary(max_size=100))
def test_fuzz_random_bytes_raise_only_record_errors(data):
    for parse in (decode_example, parse_tensor):
        with contextlib.suppress(RecordError):
            parse(data)
