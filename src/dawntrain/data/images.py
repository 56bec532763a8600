"""Images for every reader: which files are images, decoding encoded images (JPEG, PNG, ...)
into one (N, H, W, 3) uint8 array with Pillow, resizing (bilinear, the one filter the data
layer uses), and the worker-process pool that records, conversion and decoding share.

Large inputs are decoded by a pool of worker processes in chunks; the result is the same
array, in the same order, as a serial decode.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dawntrain.errors import DataError

# Below this many items a worker pool costs more to start than it saves (a 32x32 JPEG decodes
# in ~0.15 ms).
PARALLEL_MIN_ITEMS = 500
CHUNK_SIZE = 1000

# Same list as torchvision's ImageFolder; other files in class folders are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

EncodedImage = tuple[str, bytes | Path]


class ConvertedToRGBWarning(UserWarning):
    """Some images were not RGB (grayscale, palette, CMYK, alpha, ...) and were converted."""


def is_image_file(name: str) -> bool:
    """Whether a file name has one of IMAGE_EXTENSIONS (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(2, cpus or 1))


def process_pool(workers: int) -> ProcessPoolExecutor | None:
    """`workers` worker processes, or None (work inline) for one or fewer."""
    if workers <= 1:
        return None
    # spawn, not fork: the caller may hold torch/tqdm threads, and fork with threads can deadlock.
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))


def ordered_map(
    fn: Callable, tasks: Iterable[tuple], pool: ProcessPoolExecutor | None, in_flight: int
) -> Iterator:
    """fn(*task) for each task, in order, on `pool` (inline without one), with at most
    `in_flight` tasks submitted ahead so that a stream is never read far ahead. If a task
    fails, the ones submitted after it are cancelled."""
    if pool is None:
        for task in tasks:
            yield fn(*task)
        return
    pending: deque[Future] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) >= max(1, in_flight):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def resize_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """The data layer's one resize: bilinear, as every reader decodes to a size."""
    return image.resize((width, height), Image.Resampling.BILINEAR)


def resize_images(images: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, side, side, 3), with `resize_image`."""
    out = np.empty((len(images), side, side, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(resize_image(Image.fromarray(np.asarray(image)), side, side))
    return out


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
            image = resize_image(image, width, height)
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
    # Inline, small chunks keep the progress bar moving; a worker gets bigger ones.
    parallel = workers > 1 and n >= PARALLEL_MIN_ITEMS
    step = CHUNK_SIZE if parallel else 256
    starts = range(0, n, step)
    tasks = ((items[s : s + step], size, resize) for s in starts)
    with (
        tqdm(total=n, desc=progress, unit="img", disable=not show, file=sys.stderr) as bar,
        process_pool(workers if parallel else 1) or contextlib.nullcontext() as pool,
    ):
        chunks = ordered_map(_decode_chunk, tasks, pool, in_flight=len(starts))
        for start, (chunk, c, e) in zip(starts, chunks, strict=True):
            out[start : start + len(chunk)] = chunk
            converted, example = converted + c, example or e
            bar.update(len(chunk))
    if converted:
        warnings.warn(
            f"converted {converted} of {n} images to RGB (e.g. {example})",
            ConvertedToRGBWarning,
            stacklevel=2,
        )
    return out
