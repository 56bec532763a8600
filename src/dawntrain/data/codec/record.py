"""One image record: the two tf.train.Example layouts an image is stored in, both ways.

Layouts (one tf.train.Example per image):
- "image" (what we write by default, the common TF convention): 'image/encoded' (the original
  JPEG/PNG bytes), 'image/format' (b"jpeg" | b"png"), 'image/class/label', 'image/class/text',
  'image/height', 'image/width'.
- "seed" (the original system's): 'img' = serialize_tensor(float32 HWC image after
  tf.image.per_image_standardization, i.e. zero mean and unit std per image, not [0,1] or
  [0,255]), 'label' = serialize_tensor(uint8 scalar).

The readers decode records with `decode_record`; the writer (convert.py) encodes them with
`encode_record`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dawntrain.data.codec.example import (
    decode_example,
    encode_example,
    parse_tensor,
    serialize_tensor,
)
from dawntrain.errors import DataError, RecordError

LAYOUTS = ("image", "seed")


@dataclass
class ImageRecord:
    encoded: bytes
    format: str  # "jpeg" | "png"
    label: int
    height: int
    width: int
    text: str = ""


def check_layout(layout: str, error: type[Exception] = DataError) -> None:
    if layout not in LAYOUTS:
        raise error(f"unknown record layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def image_record_from_array(img: np.ndarray, label: int, text: str = "") -> ImageRecord:
    """PNG-encode a decoded uint8 image (HWC RGB, HW grayscale) into an ImageRecord."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise DataError(f"expected a uint8 HxWx3 or HxW image, got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return ImageRecord(buf.getvalue(), "png", int(label), img.shape[0], img.shape[1], text)


def standardize_image(img: np.ndarray) -> np.ndarray:
    """tf.image.per_image_standardization: (x - mean) / max(std, 1/sqrt(N)), float32."""
    x = np.asarray(img, np.float64)
    std = max(x.std(), 1.0 / math.sqrt(x.size))
    return ((x - x.mean()) / std).astype(np.float32)


def destandardize_image(z: np.ndarray) -> np.ndarray:
    """Back to uint8 from per-image standardization, which keeps pixel values only up to an
    unknown scale and offset. The scale is recovered exactly when the source was integer pixels
    (distinct values then sit on a grid of step 1/std); the offset is lost, so the darkest pixel
    becomes 0 (exact for most photos, which reach black; otherwise a uniform brightness shift
    that standardization, and so the original system, never saw). Other inputs are stretched
    linearly to [0, 255]."""
    flat = np.asarray(z, np.float32).ravel()
    ordered = np.sort(flat)
    lo, hi = float(ordered[0]), float(ordered[-1])
    if hi - lo <= 0:
        return np.zeros(np.shape(z), np.uint8)
    gaps = np.diff(ordered)
    levels = round((hi - lo) / float(gaps[gaps > 0].min()))
    if levels <= 255:
        # The whole range over the level count is a more precise step than the smallest gap.
        steps = (flat.astype(np.float64) - lo) * (levels / (hi - lo))
        pixels = np.rint(steps)
        if np.abs(steps - pixels).max() < 0.1:
            return pixels.astype(np.uint8).reshape(np.shape(z))
    return np.rint((flat - lo) * (255.0 / (hi - lo))).astype(np.uint8).reshape(np.shape(z))


def decode_image(encoded: bytes, where: str = "image") -> np.ndarray:
    """JPEG/PNG/... bytes → RGB uint8 HWC, with Pillow."""
    try:
        with Image.open(io.BytesIO(encoded)) as im:
            return np.array(im.convert("RGB"))  # np.asarray would be read-only
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ... on bad data
        raise RecordError(f"{where}: cannot decode the image: {e}") from e


def encode_record(record: ImageRecord, layout: str = "image") -> bytes:
    """An ImageRecord as a serialized tf.train.Example in `layout`."""
    check_layout(layout)
    if layout == "image":
        return encode_example(
            {
                "image/encoded": [record.encoded],
                "image/format": [record.format.lower().encode()],
                "image/class/label": [record.label],
                "image/class/text": [record.text],
                "image/height": [record.height],
                "image/width": [record.width],
            }
        )
    if not 0 <= record.label <= 255:
        raise DataError(f"label {record.label}: the seed layout stores labels as uint8")
    img = standardize_image(decode_image(record.encoded))
    return encode_example(
        {"img": [serialize_tensor(img)], "label": [serialize_tensor(np.uint8(record.label))]}
    )


def single(features: dict, key: str, kind: type, where: str):
    """The one value of feature `key`, which must be of type `kind`."""
    values = features.get(key)
    if not values or len(values) != 1 or not isinstance(values[0], kind):
        raise RecordError(
            f"{where}: feature {key!r} should hold one {kind.__name__}, found {values!r:.80}"
        )
    return values[0]


def record_features(data: bytes, where: str) -> dict:
    """A serialized tf.train.Example's features; errors name `where`."""
    try:
        return decode_example(data)
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from e


def record_layout(features: dict, where: str = "record") -> str:
    if "image/encoded" in features:
        return "image"
    if "img" in features and "label" in features:
        return "seed"
    raise RecordError(
        f"{where}: neither the image layout ('image/encoded', 'image/class/label', ...) nor the seed "
        f"layout ('img', 'label'); the record has {sorted(features)}"
    )


def record_label(features: dict, layout: str, where: str) -> int:
    if layout == "image":
        return single(features, "image/class/label", int, where)
    try:
        label = parse_tensor(single(features, "label", bytes, where))
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from e
    if label.size != 1 or label.dtype.kind not in "iu":
        raise RecordError(
            f"{where}: seed layout 'label' should be an integer scalar, is {label.dtype} "
            f"{label.shape}"
        )
    return int(label.reshape(()))


def record_text(features: dict) -> str:
    """The class text an image-layout record carries, else ""."""
    texts = features.get("image/class/text") or [b""]
    return texts[0].decode("utf-8", "replace") if isinstance(texts[0], bytes) else ""


def decode_record(data: bytes, where: str = "record") -> tuple[np.ndarray, int, str]:
    """(RGB uint8 HWC image, label, class text or "") from a record of either layout."""
    features = record_features(data, where)
    layout = record_layout(features, where)
    label = record_label(features, layout, where)
    if layout == "image":
        img = decode_image(single(features, "image/encoded", bytes, where), where)
        return img, label, record_text(features)
    try:
        z = parse_tensor(single(features, "img", bytes, where), np.float32)
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from e
    if z.ndim != 3 or z.size == 0 or not np.isfinite(z).all():
        raise RecordError(f"{where}: seed layout 'img' should be a finite HWC tensor, is {z.shape}")
    img = destandardize_image(z)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img, label, ""
