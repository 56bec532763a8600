"""tf.train.Example and TensorProto (tf.io.serialize_tensor) on the wire, without TensorFlow.

The message types are declared here as descriptors, field numbers copied from TensorFlow's
example/feature.proto, tensor.proto and tensor_shape.proto, in a private descriptor pool (so they
never clash with TensorFlow's own when both are imported). Only the fields this project reads or
writes are declared; unknown fields in the input are skipped, as protobuf always does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dawntrain.errors import RecordError

_F = descriptor_pb2.FieldDescriptorProto


def _field(name, number, kind, label=_F.LABEL_OPTIONAL, type_name=None, oneof=None):
    field = _F(name=name, number=number, type=kind, label=label, json_name=name)
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _repeated(name, number, kind, type_name=None):
    return _field(name, number, kind, _F.LABEL_REPEATED, type_name)


def _build_messages() -> dict[str, type]:
    f = descriptor_pb2.FileDescriptorProto(
        name="dawntrain/tensorflow_wire.proto", package="tensorflow", syntax="proto3"
    )
    # feature.proto. proto3 packs repeated scalars by default, as TF writes them; the parser
    # accepts the unpacked form too.
    f.message_type.add(name="BytesList").field.append(_repeated("value", 1, _F.TYPE_BYTES))
    f.message_type.add(name="FloatList").field.append(_repeated("value", 1, _F.TYPE_FLOAT))
    f.message_type.add(name="Int64List").field.append(_repeated("value", 1, _F.TYPE_INT64))
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name in enumerate(("bytes_list", "float_list", "int64_list"), start=1):
        type_name = ".tensorflow." + "".join(p.title() for p in name.split("_"))
        feature.field.append(_field(name, number, _F.TYPE_MESSAGE, type_name=type_name, oneof=0))
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.append(_field("key", 1, _F.TYPE_STRING))
    entry.field.append(_field("value", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.Feature"))
    features.field.append(
        _repeated("feature", 1, _F.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry")
    )
    example = f.message_type.add(name="Example")
    example.field.append(_field("features", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.Features"))

    # tensor_shape.proto
    shape = f.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    dim.field.append(_field("size", 1, _F.TYPE_INT64))
    dim.field.append(_field("name", 2, _F.TYPE_STRING))
    shape.field.append(_repeated("dim", 2, _F.TYPE_MESSAGE, ".tensorflow.TensorShapeProto.Dim"))
    shape.field.append(_field("unknown_rank", 3, _F.TYPE_BOOL))

    # tensor.proto (dtype is the DataType enum there: an int32 on the wire, so int32 here).
    tensor = f.message_type.add(name="TensorProto")
    tensor.field.extend(
        [
            _field("dtype", 1, _F.TYPE_INT32),
            _field("tensor_shape", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.TensorShapeProto"),
            _field("version_number", 3, _F.TYPE_INT32),
            _field("tensor_content", 4, _F.TYPE_BYTES),
            _repeated("float_val", 5, _F.TYPE_FLOAT),
            _repeated("double_val", 6, _F.TYPE_DOUBLE),
            _repeated("int_val", 7, _F.TYPE_INT32),
            _repeated("string_val", 8, _F.TYPE_BYTES),
            _repeated("int64_val", 10, _F.TYPE_INT64),
            _repeated("bool_val", 11, _F.TYPE_BOOL),
            _repeated("half_val", 13, _F.TYPE_INT32),
            _repeated("uint32_val", 16, _F.TYPE_UINT32),
            _repeated("uint64_val", 17, _F.TYPE_UINT64),
        ]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(f.SerializeToString())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
        for name in ("Example", "Feature", "TensorProto")
    }


_MESSAGES = _build_messages()
Example = _MESSAGES["Example"]
Feature = _MESSAGES["Feature"]
TensorProto = _MESSAGES["TensorProto"]

# DataType enum values (tensorflow/core/framework/types.proto) → numpy dtype and the typed
# TensorProto field TF uses for that dtype when tensor_content is empty.
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    1: (np.dtype("<f4"), "float_val"),  # DT_FLOAT
    2: (np.dtype("<f8"), "double_val"),  # DT_DOUBLE
    3: (np.dtype("<i4"), "int_val"),  # DT_INT32
    4: (np.dtype("u1"), "int_val"),  # DT_UINT8
    5: (np.dtype("<i2"), "int_val"),  # DT_INT16
    6: (np.dtype("i1"), "int_val"),  # DT_INT8
    9: (np.dtype("<i8"), "int64_val"),  # DT_INT64
    10: (np.dtype("?"), "bool_val"),  # DT_BOOL
    17: (np.dtype("<u2"), "int_val"),  # DT_UINT16
    19: (np.dtype("<f2"), "half_val"),  # DT_HALF: the uint16 bit patterns, as int32s
    22: (np.dtype("<u4"), "uint32_val"),  # DT_UINT32
    23: (np.dtype("<u8"), "uint64_val"),  # DT_UINT64
}
_ENUM_OF = {dtype: enum for enum, (dtype, _) in _DTYPES.items()}
_DTYPE_NAMES = {7: "string", 8: "complex64", 14: "bfloat16", 18: "complex128", 20: "resource"}
# Typed value fields let a few values stand for a large tensor (TF repeats the last one), so a
# tiny input could ask for any size: refuse outputs beyond this rather than exhaust memory.
MAX_TENSOR_BYTES = 1 << 30

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise RecordError(f"{what} must be bytes, not {type(data).__name__}")


def _parse(message_type: type, data: object, what: str):
    message = message_type()
    try:
        message.ParseFromString(_as_bytes(data, what))
    except RecordError:
        raise
    except Exception as e:  # DecodeError, and whatever else the C parser raises on garbage
        raise RecordError(
            f"{what}: malformed protobuf ({len(data)} bytes): {e}; the record is corrupt or is "
            "not a serialized " + message_type.DESCRIPTOR.name
        ) from e
    return message


# ---------------------------------------------------------------------------------------------
# tf.train.Example


def _feature_values(key: str, value: object) -> tuple[str, list] | None:
    """(field name of the Feature oneof, values), or None for an empty untyped list."""
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value).ravel()
        kind = array.dtype.kind
        if kind in "biu":
            if kind == "u" and array.size and array.max() > _INT64_MAX:
                raise RecordError(f"feature {key!r}: uint64 values above 2**63-1 do not fit int64")
            return "int64_list", array.astype(np.int64).tolist()
        if kind == "f":
            return "float_list", array.astype(np.float32).tolist()
        if kind == "S":
            return "bytes_list", array.tolist()
        if kind == "U":
            return "bytes_list", [s.encode() for s in array.tolist()]
        if kind != "O":
            raise RecordError(
                f"feature {key!r}: cannot encode a numpy array of dtype {array.dtype}"
            )
        value = array.tolist()
    if isinstance(value, bytes | bytearray | str | int | float):
        value = [value]
    if not isinstance(value, Sequence):
        raise RecordError(
            f"feature {key!r}: expected a list of bytes/str/int/float or a numpy array, "
            f"not {type(value).__name__}"
        )
    if not value:
        return None
    if all(isinstance(v, bytes | bytearray | str) for v in value):
        return "bytes_list", [v.encode() if isinstance(v, str) else bytes(v) for v in value]
    if all(isinstance(v, int | np.integer | np.bool_) for v in value):
        ints = [int(v) for v in value]
        if min(ints) < _INT64_MIN or max(ints) > _INT64_MAX:
            raise RecordError(f"feature {key!r}: a value does not fit int64")
        return "int64_list", ints
    if all(isinstance(v, int | float | np.integer | np.floating | np.bool_) for v in value):
        return "float_list", [float(v) for v in value]
    kinds = sorted({type(v).__name__ for v in value})
    raise RecordError(
        f"feature {key!r}: a list must hold only bytes/str, only ints/bools, or only numbers; "
        f"got {', '.join(kinds)}"
    )


def encode_example(features: Mapping[str, object]) -> bytes:
    """Serialize a tf.train.Example. Each value's type picks the list kind: bytes or str
    (UTF-8) → BytesList, bool/int → Int64List, float (or ints mixed with floats) → FloatList,
    numpy arrays by dtype (flattened). A lone scalar is a one-element list; an empty list is a
    Feature with no kind, which TF reads as empty whatever type it expects."""
    example = Example()
    feature_map = example.features.feature
    for key, value in features.items():
        if not isinstance(key, str):
            raise RecordError(f"feature names must be str, not {type(key).__name__} ({key!r})")
        typed = _feature_values(key, value)
        feature = feature_map[key]
        if typed is None:
            feature.SetInParent()
        else:
            field, values = typed
            getattr(feature, field).value.extend(values)
    # deterministic=True sorts the map, so equal inputs give byte-identical shards (and sha256s).
    return example.SerializeToString(deterministic=True)


def decode_example(data: bytes) -> dict[str, list[bytes] | list[int] | list[float]]:
    """Parse a serialized tf.train.Example into {name: list}, names sorted. FloatList values
    come back as Python floats holding the float32 values."""
    example = _parse(Example, data, "tf.train.Example")
    out: dict[str, list] = {}
    for key in sorted(example.features.feature):
        feature = example.features.feature[key]
        kind = feature.WhichOneof("kind")
        out[key] = [] if kind is None else list(getattr(feature, kind).value)
    return out


# ---------------------------------------------------------------------------------------------
# TensorProto (tf.io.serialize_tensor / tf.io.parse_tensor)


def serialize_tensor(array: np.ndarray) -> bytes:
    """Serialize like tf.io.serialize_tensor: dtype, shape and the raw little-endian values in
    tensor_content (what TF writes for every numeric dtype, scalars included)."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    enum = _ENUM_OF.get(dtype)
    if enum is None:
        supported = ", ".join(sorted(str(d) for d in _ENUM_OF))
        raise RecordError(f"serialize_tensor: dtype {array.dtype} is not supported ({supported})")
    proto = TensorProto(dtype=enum)
    proto.tensor_shape.SetInParent()  # TF writes the (empty) shape of a scalar too
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return proto.SerializeToString()


def _dtype_name(enum: int) -> str:
    if enum in _DTYPES:
        return str(_DTYPES[enum][0].name)
    return _DTYPE_NAMES.get(enum, f"DataType {enum}")


def parse_tensor(data: bytes, dtype: np.dtype | type | str | None = None) -> np.ndarray:
    """Parse a serialized TensorProto, as tf.io.parse_tensor does. With `dtype`, a tensor of any
    other dtype is an error (TF requires out_type to match). Reads tensor_content, or TF's typed
    value fields where fewer values than elements repeat the last one (none at all: zeros)."""
    proto = _parse(TensorProto, data, "TensorProto")
    if proto.dtype not in _DTYPES:
        raise RecordError(f"TensorProto: unsupported or invalid dtype {_dtype_name(proto.dtype)}")
    np_dtype, value_field = _DTYPES[proto.dtype]
    if dtype is not None and np.dtype(dtype) != np_dtype:
        raise RecordError(
            f"TensorProto: type mismatch: the tensor is {np_dtype.name}, {np.dtype(dtype).name} "
            "was expected"
        )
    if proto.tensor_shape.unknown_rank:
        raise RecordError("TensorProto: the shape has unknown rank; a stored tensor needs one")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(s < 0 for s in shape):
        raise RecordError(f"TensorProto: invalid shape {list(shape)} (negative dimension)")
    count = math.prod(shape)
    if count * np_dtype.itemsize > MAX_TENSOR_BYTES:
        raise RecordError(
            f"TensorProto: shape {list(shape)} of {np_dtype.name} needs "
            f"{count * np_dtype.itemsize} bytes, over the {MAX_TENSOR_BYTES}-byte limit"
        )
    content = proto.tensor_content
    if content:
        if len(content) != count * np_dtype.itemsize:
            raise RecordError(
                f"TensorProto: tensor_content holds {len(content)} bytes but shape {list(shape)} "
                f"of {np_dtype.name} needs {count * np_dtype.itemsize}"
            )
        return np.frombuffer(content, np_dtype).reshape(shape).copy()
    values = getattr(proto, value_field)
    if np_dtype == np.float16:
        typed = np.array(values, np.int64).astype(np.uint16).view(np.float16)
    else:
        # int_val holds int8/uint8/int16/uint16 as int32s; TF narrows them with a C cast.
        wide = np.int64 if value_field == "int_val" else np_dtype
        typed = np.array(values, wide).astype(np_dtype)
    out = np.zeros(count, np_dtype)
    n = min(len(typed), count)
    out[:n] = typed[:n]
    if 0 < n < count:
        out[n:] = typed[n - 1]
    return out.reshape(shape)
