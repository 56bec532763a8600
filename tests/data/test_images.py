"""decode_images: pixels, mode conversion, errors naming their file, resize, parallel = serial."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from dawntrain.data.images import ConvertedToRGBWarning, decode_images
from dawntrain.errors import DataError


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **kw) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_exact_and_jpeg_matches_pillow():
    a, b = noise(0), noise(1)
    jpeg = encode(b, "JPEG", quality=75)
    out = decode_images([("a.png", encode(a)), ("b.jpg", jpeg)], (8, 8))
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[1], np.asarray(Image.open(io.BytesIO(jpeg))))


def test_file_paths_and_non_square_size_is_height_width(tmp_path):
    a = noise(2, h=4, w=6)
    (tmp_path / "a.png").write_bytes(encode(a))
    out = decode_images([("a.png", tmp_path / "a.png")])
    assert out.shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(out[0], a)
    with pytest.raises(DataError, match="a.png: file not found"):
        decode_images([("a.png", tmp_path / "missing.png")])


def test_non_rgb_modes_converted_with_one_counted_warning():
    a = noise(3)
    items = [("rgb.png", encode(a))] + [
        (f"{mode}.png", encode(a, mode=mode)) for mode in ("L", "P", "RGBA", "LA")
    ]
    items.append(("cmyk.jpg", encode(a, "JPEG", mode="CMYK")))
    with pytest.warns(ConvertedToRGBWarning, match="converted 5 of 6 images") as record:
        out = decode_images(items, (8, 8))
    assert len(record) == 1
    gray = np.asarray(Image.fromarray(a).convert("L"))
    np.testing.assert_array_equal(out[1], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(out[3], a)  # RGBA from RGB: alpha dropped, colours unchanged


def test_rgb_only_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_images([("a.png", encode(noise(4)))])


def test_truncated_jpeg_is_an_error_naming_the_file():
    jpeg = encode(noise(5, 32, 32), "JPEG", quality=95)
    with pytest.raises(DataError, match="cat/0007.jpg: cannot decode"):
        decode_images([("ok.jpg", jpeg), ("cat/0007.jpg", jpeg[: len(jpeg) // 2])])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_not_an_image_is_an_error_naming_the_file():
    with pytest.raises(DataError, match="notes.txt: not an image"):
        decode_images([("notes.txt", b"hello, not a picture")])


def test_wrong_size_needs_resize():
    big = noise(6, 10, 12)
    with pytest.raises(DataError, match=r"big.png: image is 12x10.*expected 8x8.*--resize"):
        decode_images([("big.png", encode(big))], (8, 8))
    out = decode_images([("big.png", encode(big))], (8, 8), resize=True)
    expected = Image.fromarray(big).resize((8, 8), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out[0], np.asarray(expected))


def test_size_none_means_first_images_size():
    items = [("a.png", encode(noise(7))), ("b.png", encode(noise(8, 8, 9)))]
    with pytest.raises(DataError, match="b.png: image is 9x8"):
        decode_images(items)
    assert decode_images(items, resize=True).shape == (2, 8, 8, 3)
    assert decode_images([]).shape == (0, 0, 0, 3)


def test_parallel_decode_equals_serial_and_reports_errors():
    encoded = [encode(noise(i % 7, 4, 4)) for i in range(7)]
    items = [(f"{i}.png", encoded[i % 7]) for i in range(1200)]  # > PARALLEL_MIN_ITEMS
    serial = decode_images(items, (4, 4), workers=1)
    parallel = decode_images(items, (4, 4), workers=2)
    np.testing.assert_array_equal(parallel, serial)
    np.testing.assert_array_equal(serial[8], noise(1, 4, 4))
    items[1100] = ("bad/1100.png", b"junk")
    with pytest.raises(DataError, match="bad/1100.png"):
        decode_images(items, (4, 4), workers=2)
