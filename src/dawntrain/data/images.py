"""Decode encoded images (JPEG, PNG, ...) into one (N, H, W, 3) uint8 array with Pillow.

Shared by every reader of encoded images (CIFAR-10 image folders, Tiny ImageNet, the sample).
Large inputs are decoded by a pool of worker processes in chunks; the result is the same
array, in the same order, as a serial decode.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dawntrain.errors import DataError

# Below this many items a worker pool costs more to start than it saves (a 32x32 JPEG decodes
# in ~0.15 ms).
PARALLEL_MIN_ITEMS = 500
CHUNK_SIZE = 1000

EncodedImage = tuple[str, bytes | Path]


class ConvertedToRGBWarning(UserWarning):
    """Some images were not RGB (grayscale, palette, CMYK, alpha, ...) and were converted."""


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(2, cpus or 1))


def _open(name: str, source: bytes | Path) -> Image.Image:
    """Open and fully decode one image; every way it can fail becomes a DataError naming it."""
    try:
        data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
        image = Image.open(io.BytesIO(data))
        # load() decodes now, so a truncated file fails here: Pillow's LOAD_TRUNCATED_IMAGES is
        # left False on purpose, a half-grey training image is worse than an error.
        image.load()
        return image
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image file Pillow can read (JPEG, PNG, ...)") from None
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{name}: cannot decode image ({e}); is the file truncated?") from e


def _size_text(height: int, width: int) -> str:
    return f"{width}x{height} (width x height)"


def _decode_chunk(
    items: Sequence[EncodedImage], size: tuple[int, int], resize: bool
) -> tuple[np.ndarray, int, str | None]:
    """Decode items to (n, H, W, 3) uint8; also return how many were converted and one example."""
    height, width = size
    out = np.empty((len(items), height, width, 3), dtype=np.uint8)
    converted, example = 0, None
    for i, (name, source) in enumerate(items):
        image = _open(name, source)
        if image.mode != "RGB":
            converted += 1
            example = example or f"{name} ({image.mode})"
            try:
                image = image.convert("RGB")
            except (OSError, ValueError) as e:
                raise DataError(f"{name}: cannot convert mode {image.mode} to RGB ({e})") from e
        if image.size != (width, height):
            if not resize:
                raise DataError(
                    f"{name}: image is {_size_text(image.height, image.width)}, expected "
                    f"{_size_text(height, width)}; pass --resize to resize images"
                )
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        out[i] = np.asarray(image)
    return out, converted, example


def decode_images(
    items: Sequence[EncodedImage],
    size: tuple[int, int] | None = None,
    *,
    resize: bool = False,
    workers: int | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Decode (name, encoded bytes or file path) items into an (N, H, W, 3) uint8 array.

    size is (height, width), as in the array's shape; None means the first image's size.
    An image of another size is a DataError unless resize is True (bilinear resize then).
    Non-RGB images are converted, with one ConvertedToRGBWarning giving the count.
    More than PARALLEL_MIN_ITEMS items are decoded by `workers` processes (default
    min(2, CPUs)). progress labels a tqdm bar on stderr, shown only on a terminal.
    """
    if size is None:
        if not items:
            return np.empty((0, 0, 0, 3), dtype=np.uint8)
        first = _open(*items[0])
        size = (first.height, first.width)
    n = len(items)
    out = np.empty((n, *size, 3), dtype=np.uint8)
    workers = default_workers() if workers is None else max(1, workers)
    show = progress is not None and sys.stderr.isatty()
    converted, example = 0, None
    with tqdm(total=n, desc=progress, unit="img", disable=not show, file=sys.stderr) as bar:
        if workers == 1 or n < PARALLEL_MIN_ITEMS:
            step = 256
            for start in range(0, n, step):
                chunk, c, e = _decode_chunk(items[start : start + step], size, resize)
                out[start : start + len(chunk)] = chunk
                converted, example = converted + c, example or e
                bar.update(len(chunk))
        else:
            starts = range(0, n, CHUNK_SIZE)
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_decode_chunk, items[s : s + CHUNK_SIZE], size, resize)
                    for s in starts
                ]
                try:
                    for start, future in zip(starts, futures, strict=True):
                        chunk, c, e = future.result()
                        out[start : start + len(chunk)] = chunk
                        converted, example = converted + c, example or e
                        bar.update(len(chunk))
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    if converted:
        warnings.warn(
            f"converted {converted} of {n} images to RGB (e.g. {example})",
            ConvertedToRGBWarning,
            stacklevel=2,
        )
    return out
