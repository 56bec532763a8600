"""Image records in TFRecord shards: the two layouts, sharded directories with a manifest, a
decode-once loader for data that fits in memory and a streaming reader for data that does not.

Layouts (one tf.train.Example per image):
- "image" (what we write by default, the common TF convention): 'image/encoded' (the original
  JPEG/PNG bytes), 'image/format' (b"jpeg" | b"png"), 'image/class/label', 'image/class/text',
  'image/height', 'image/width'.
- "seed" (the original system's): 'img' = serialize_tensor(float32 HWC image after
  tf.image.per_image_standardization, i.e. zero mean and unit std per image, not [0,1] or
  [0,255]), 'label' = serialize_tensor(uint8 scalar).

A directory of shards is `<split>-00000-of-000NN.tfrecord[.gz|.zz]` files plus manifest.json:
{"layout", "compression", "splits": {split: [{"file", "records", "sha256"}]}, "classes"}.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import hashlib
import io
import json
import math
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dawntrain.data.example import decode_example, encode_example, parse_tensor, serialize_tensor
from dawntrain.data.tfrecord import (
    SUFFIXES,
    PathLike,
    atomic_write,
    normalize_compression,
    read_records,
    write_records,
)
from dawntrain.errors import DataError, RecordError

LAYOUTS = ("image", "seed")
MANIFEST = "manifest.json"
# Below these sizes a process pool costs more (interpreter start, imports) than it saves.
PARALLEL_MIN_RECORDS = 2048  # for writing
PARALLEL_MIN_BYTES = 8 << 20  # of shard files, for loading
_CHUNK_RECORDS = 256  # records per task sent to a worker process


@dataclass
class ImageRecord:
    encoded: bytes
    format: str  # "jpeg" | "png"
    label: int
    height: int
    width: int
    text: str = ""


def image_record_from_array(img: np.ndarray, label: int, text: str = "") -> ImageRecord:
    """PNG-encode a decoded uint8 image (HWC RGB, HW grayscale) into an ImageRecord."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise DataError(f"expected a uint8 HxWx3 or HxW image, got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return ImageRecord(buf.getvalue(), "png", int(label), img.shape[0], img.shape[1], text)


# ---------------------------------------------------------------------------------------------
# One record


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
    if layout == "seed":
        if not 0 <= record.label <= 255:
            raise DataError(f"label {record.label}: the seed layout stores labels as uint8")
        img = standardize_image(decode_image(record.encoded))
        return encode_example(
            {"img": [serialize_tensor(img)], "label": [serialize_tensor(np.uint8(record.label))]}
        )
    raise DataError(f"unknown record layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def _single(features: dict, key: str, kind: type, where: str):
    values = features.get(key)
    if not values or len(values) != 1 or not isinstance(values[0], kind):
        raise RecordError(
            f"{where}: feature {key!r} should hold one {kind.__name__}, found {values!r:.80}"
        )
    return values[0]


def record_layout(features: dict, where: str = "record") -> str:
    if "image/encoded" in features:
        return "image"
    if "img" in features and "label" in features:
        return "seed"
    raise RecordError(
        f"{where}: neither the image layout ('image/encoded', 'image/class/label', ...) nor the seed "
        f"layout ('img', 'label'); the record has {sorted(features)}"
    )


def _decode_features(data: bytes, where: str) -> dict:
    try:
        return decode_example(data)
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from e


def _label(features: dict, layout: str, where: str) -> int:
    if layout == "image":
        return _single(features, "image/class/label", int, where)
    try:
        label = parse_tensor(_single(features, "label", bytes, where))
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from e
    if label.size != 1 or label.dtype.kind not in "iu":
        raise RecordError(
            f"{where}: seed layout 'label' should be an integer scalar, is {label.dtype} "
            f"{label.shape}"
        )
    return int(label.reshape(()))


def decode_record(data: bytes, where: str = "record") -> tuple[np.ndarray, int, str]:
    """(RGB uint8 HWC image, label, class text or "") from a record of either layout."""
    features = _decode_features(data, where)
    layout = record_layout(features, where)
    label = _label(features, layout, where)
    if layout == "image":
        img = decode_image(_single(features, "image/encoded", bytes, where), where)
        texts = features.get("image/class/text") or [b""]
        text = texts[0].decode("utf-8", "replace") if isinstance(texts[0], bytes) else ""
        return img, label, text
    try:
        z = parse_tensor(_single(features, "img", bytes, where), np.float32)
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from e
    if z.ndim != 3 or z.size == 0 or not np.isfinite(z).all():
        raise RecordError(f"{where}: seed layout 'img' should be a finite HWC tensor, is {z.shape}")
    img = destandardize_image(z)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img, label, ""


def _decode_chunk(
    records: list[bytes], where: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode records that must share one image shape into (NHWC uint8, int64 labels, texts)."""
    images, labels, texts = [], [], []
    for data, w in zip(records, where, strict=True):
        img, label, text = decode_record(data, w)
        if images and img.shape != images[0].shape:
            raise DataError(
                f"{w}: image is {img.shape}, earlier ones are {images[0].shape}; stacking needs "
                "one size: resize the source images or use the streaming reader without batching"
            )
        images.append(img)
        labels.append(label)
        texts.append(text)
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0, np.int64), []
    return np.stack(images), np.asarray(labels, np.int64), texts


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    # spawn, not fork: the caller may hold torch/tqdm threads, and fork with threads can deadlock.
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))


def _ordered_map(
    fn, tasks: Iterable[tuple], pool: ProcessPoolExecutor | None, in_flight: int
) -> Iterator:
    """fn(*task) for each task, in order, on `pool` (inline without one), with at most
    `in_flight` tasks submitted ahead so that a stream is never read far ahead."""
    if pool is None:
        for task in tasks:
            yield fn(*task)
        return
    pending: deque[Future] = deque()
    for task in tasks:
        pending.append(pool.submit(fn, *task))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ---------------------------------------------------------------------------------------------
# Sharded directories


def shard_name(split: str, index: int, num_shards: int, compression: str = "gzip") -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord{SUFFIXES[compression]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_shard(path: Path, records: list[ImageRecord], compression: str, layout: str) -> dict:
    count = write_records(path, (encode_record(r, layout) for r in records), compression)
    return {"file": path.name, "records": count, "sha256": _sha256(path)}


def write_shards(
    out_dir: PathLike,
    split: str,
    records: Iterable[ImageRecord],
    num_shards: int,
    compression: str = "gzip",
    layout: str = "image",
    workers: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Write `records` as `num_shards` TFRecord files `<split>-0000i-of-0000N.tfrecord[.gz]`,
    shard i holding the i-th contiguous slice. Shards are written in `workers` processes when
    there are enough records to pay for starting them. Returns [{file, records, sha256}]."""
    compression = normalize_compression(compression)
    if compression == "auto":
        raise DataError("write_shards: compression must be 'none', 'gzip' or 'zlib', not 'auto'")
    if layout not in LAYOUTS:
        raise DataError(f"unknown record layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if num_shards < 1:
        raise DataError(f"num_shards must be at least 1, got {num_shards}")
    records = records if isinstance(records, list | tuple) else list(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = [i * len(records) // num_shards for i in range(num_shards + 1)]
    jobs = [
        (out_dir / shard_name(split, i, num_shards, compression), list(records[lo:hi]))
        for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]
    parallel = min(workers, num_shards) if len(records) >= PARALLEL_MIN_RECORDS else 1
    tasks = ((path, shard, compression, layout) for path, shard in jobs)
    infos = []
    bar = tqdm(
        total=len(records), unit="rec", desc=f"write {split}", disable=not progress, file=sys.stderr
    )
    with bar, _pool(parallel) or contextlib.nullcontext() as pool:
        for info in _ordered_map(_write_shard, tasks, pool, in_flight=num_shards):
            infos.append(info)
            bar.update(info["records"])
    return infos


def write_manifest(
    out_dir: PathLike,
    layout: str,
    splits: dict[str, list[dict]],
    class_names: Sequence[str],
    compression: str | None = None,
) -> Path:
    """Write out_dir/manifest.json (atomically) for the shards written by write_shards.
    compression defaults to what the shard file names say."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown record layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if compression is None:
        kinds = {normalize_compression(None, s["file"]) for ss in splits.values() for s in ss}
        if len(kinds) > 1:
            raise DataError(f"shards mix compressions {sorted(kinds)}; pass compression=")
        compression = kinds.pop() if kinds else "none"
    manifest = {
        "layout": layout,
        "compression": compression,
        "splits": {name: [dict(s) for s in shards] for name, shards in splits.items()},
        "classes": list(class_names),
    }
    path = Path(out_dir) / MANIFEST
    with atomic_write(path) as f:
        f.write(json.dumps(manifest, indent=1).encode() + b"\n")
    return path


def read_manifest(directory: PathLike) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: no manifest; write the shards with write_shards + write_manifest"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e}); re-write it") from e
    missing = [k for k in ("layout", "splits", "classes") if k not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise DataError(f"{path}: not a dawntrain record manifest (missing {missing})")
    return manifest


def verify_manifest(directory: PathLike) -> dict:
    """Check every shard listed in the manifest exists and has its recorded sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for split, shards in manifest["splits"].items():
        for shard in shards:
            path = directory / shard["file"]
            if not path.is_file():
                raise RecordError(f"{path}: listed in {MANIFEST} (split {split!r}) but missing")
            if _sha256(path) != shard["sha256"]:
                raise RecordError(
                    f"{path}: sha256 differs from {MANIFEST}: the shard was modified or damaged "
                    "after it was written; re-write the shards"
                )
    return manifest


def resolve_shards(
    source: PathLike | Iterable[PathLike], split: str | None = None
) -> tuple[list[Path], dict | None]:
    """Shard paths (and the manifest, if any) from a directory (its manifest, else
    `<split>-*.tfrecord*`), a glob pattern, one file or a list of files."""
    if isinstance(source, str | Path) and Path(source).is_dir():
        directory = Path(source)
        if (directory / MANIFEST).exists():
            manifest = read_manifest(directory)
            splits = manifest["splits"]
            if split is None and len(splits) == 1:
                split = next(iter(splits))
            if split not in splits:
                raise DataError(f"{directory}: no split {split!r}; the manifest has {list(splits)}")
            return [directory / s["file"] for s in splits[split]], manifest
        if split is None:
            raise DataError(f"{directory}: no {MANIFEST}; say which split to read")
        paths = sorted(directory.glob(f"{split}-*.tfrecord*"))
        if not paths:
            raise DataError(f"{directory}: no {split}-*.tfrecord* files and no {MANIFEST}")
        return paths, None
    if isinstance(source, str) and any(c in source for c in "*?["):
        paths = [Path(p) for p in sorted(globlib.glob(source))]
        if not paths:
            raise DataError(f"no files match {source!r}")
        return paths, None
    if isinstance(source, str | Path):
        return [Path(source)], None
    return [Path(p) for p in source], None


def _class_names(labels: np.ndarray, texts: Iterable[str], manifest: dict | None) -> list[str]:
    if manifest and manifest.get("classes"):
        if labels.size and not 0 <= labels.min() <= labels.max() < len(manifest["classes"]):
            raise DataError(
                f"labels span [{labels.min()}, {labels.max()}] but the manifest names "
                f"{len(manifest['classes'])} classes; re-write the shards and manifest together"
            )
        return list(manifest["classes"])
    names = {}
    for label, text in zip(labels.tolist(), texts, strict=True):
        if text:
            names.setdefault(label, text)
    count = int(labels.max()) + 1 if labels.size else 0
    return [names.get(i, str(i)) for i in range(count)]


def _located(
    path: Path, first: int = 0, stop: int | None = None, verify: bool = True
) -> Iterator[tuple[bytes, str]]:
    """(record, "<file> record <index>") for records [first, stop) of one file."""
    for index, data in islice(enumerate(read_records(path, verify=verify)), first, stop):
        yield data, f"{path} record {index}"


def _chunks(items: Iterator[tuple[bytes, str]], size: int) -> Iterator[tuple[list, list]]:
    while batch := list(islice(items, size)):
        yield [d for d, _ in batch], [w for _, w in batch]


def load_record_split(
    source: PathLike | Iterable[PathLike],
    split: str | None = None,
    workers: int = 2,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read and decode every record once: (uint8 NHWC images, int64 labels, class names).
    For data that fits in memory. The main process reads and checks the records; decoding runs
    in `workers` processes when the shards hold more than PARALLEL_MIN_BYTES."""
    paths, manifest = resolve_shards(source, split)
    size = sum(p.stat().st_size for p in paths if p.is_file())
    parallel = workers if size >= PARALLEL_MIN_BYTES else 1
    located = (item for path in paths for item in _located(path, verify=verify))
    images, labels, texts = [], [], []
    with _pool(parallel) or contextlib.nullcontext() as pool:
        decoded = _ordered_map(
            _decode_chunk, _chunks(located, _CHUNK_RECORDS), pool, in_flight=2 * parallel
        )
        for chunk_images, chunk_labels, chunk_texts in decoded:
            if images and chunk_images.shape[1:] != images[0].shape[1:]:
                raise DataError(
                    f"{paths[0].parent}: images of sizes {images[0].shape[1:]} and "
                    f"{chunk_images.shape[1:]} in one split; stacking needs one size"
                )
            images.append(chunk_images)
            labels.append(chunk_labels)
            texts.extend(chunk_texts)
    if not images:
        raise DataError(f"{', '.join(map(str, paths))}: no records")
    all_labels = np.concatenate(labels)
    return np.concatenate(images), all_labels, _class_names(all_labels, texts, manifest)


def inspect_records(
    paths: PathLike | Iterable[PathLike], verify: bool = False, split: str | None = None
) -> dict:
    """Summarize record files (or a directory's `split`): count, feature keys and kinds, layout,
    class histogram and first image shape. With verify, check every CRC and decode every image;
    the first failure is reported under "first_bad" ({file, index, error}) instead of raised."""
    paths, _ = resolve_shards(paths, split)
    summary: dict = {"files": len(paths), "records": 0, "features": {}, "layout": None}
    histogram: Counter = Counter()
    first_bad = None
    for path in paths:
        index = -1
        try:
            for index, data in enumerate(read_records(path, verify=verify)):
                summary["records"] += 1
                where = f"{path} record {index}"
                try:
                    features = _decode_features(data, where)
                    layout = record_layout(features, where)
                    if summary["layout"] is None:
                        summary["layout"] = layout
                        summary["features"] = {k: _kind(v) for k, v in features.items()}
                    histogram[_label(features, layout, where)] += 1
                    if verify or "first_image_shape" not in summary:
                        img, _, _ = decode_record(data, where)
                        summary.setdefault("first_image_shape", list(img.shape))
                except RecordError as e:
                    if not verify:
                        raise
                    first_bad = first_bad or {"file": str(path), "index": index, "error": str(e)}
        except RecordError as e:
            if not verify:
                raise
            # The framing is broken: the rest of this file cannot be read.
            first_bad = first_bad or {"file": str(path), "index": index + 1, "error": str(e)}
    summary["class_histogram"] = dict(sorted(histogram.items()))
    if verify:
        summary["first_bad"] = first_bad
    return summary


def _kind(values: list) -> str:
    if not values:
        return "empty"
    return {bytes: "bytes", int: "int64", float: "float"}[type(values[0])]


# ---------------------------------------------------------------------------------------------
# Streaming


def _interleave(
    shards: list[tuple[Path, int, int | None]], cycle_length: int, verify: bool
) -> Iterator[tuple[bytes, str]]:
    """Records of `shards` [(path, first, stop)], one from each of `cycle_length` open shards in
    turn; an exhausted shard's slot goes to the next shard (as tf.data's interleave does)."""
    pending = deque(shards)

    def open_next() -> Iterator[tuple[bytes, str]]:
        path, first, stop = pending.popleft()
        return _located(path, first, stop, verify)

    active = [open_next() for _ in range(min(cycle_length, len(pending)))]
    slot = 0
    while active:
        data = next(active[slot], None)
        if data is None:
            if pending:
                active[slot] = open_next()
            else:
                del active[slot]
                slot = slot % len(active) if active else 0
            continue
        yield data
        slot = (slot + 1) % len(active)


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """tf.data-style shuffle buffer: keep `size` items, emit a random one as each new arrives."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class RecordStream:
    """Stream (image uint8 HWC, label) pairs, or (NHWC uint8, int64) batches, from shards too
    large to load at once.

    Order, epoch by epoch: the records [skip, skip + take) of the shards in the given order
    (the canonical order, fixed, so a skip/take split never leaks between epochs) are cut into
    shard ranges; reader `rank` of `world_size` gets ranges rank, rank + world_size, ...; with
    shuffle, that list is permuted and a shuffle buffer runs over the interleave of
    `cycle_length` open shards, all from a generator seeded by (seed, epoch, rank), so the same
    (seed, epoch) gives the same order and another epoch another. Decoding runs in `workers`
    spawned processes (kept for the stream's life; close() ends them) or inline when 0; order
    never depends on it. skip/take need per-shard record counts: from the manifest when
    `source` is a directory, else counted with one pass over the files.
    """

    def __init__(
        self,
        source: PathLike | Iterable[PathLike],
        split: str | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        cycle_length: int = 4,
        shuffle: bool = True,
        shuffle_buffer: int = 1024,
        seed: int = 0,
        epoch: int = 0,
        skip: int = 0,
        take: int | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
        workers: int = 0,
        verify: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if skip < 0 or (take is not None and take < 0) or cycle_length < 1:
            raise DataError("skip and take must be >= 0 and cycle_length >= 1")
        paths, manifest = resolve_shards(source, split)
        counts: list[int | None] = [None] * len(paths)
        if manifest:
            listed = {s["file"]: s["records"] for ss in manifest["splits"].values() for s in ss}
            counts = [listed.get(p.name) for p in paths]
        if skip or take is not None:
            counts = [
                c if c is not None else sum(1 for _ in read_records(p, verify=False))
                for p, c in zip(paths, counts, strict=True)
            ]
        ranges = self._ranges(paths, counts, skip, take)
        if len(ranges) < world_size:
            raise DataError(
                f"{len(ranges)} shard(s) for {world_size} readers: each reader needs at least "
                "one shard; write more shards (num_shards >= world size) or use fewer readers"
            )
        self.shards = ranges[rank::world_size]
        self.num_records = (
            None
            if any(stop is None for _, _, stop in self.shards)
            else sum(stop - first for _, first, stop in self.shards)
        )
        self.rank, self.cycle_length, self.shuffle = rank, cycle_length, shuffle
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, epoch
        self.batch_size, self.drop_last, self.verify = batch_size, drop_last, verify
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @staticmethod
    def _ranges(paths, counts, skip, take) -> list[tuple[Path, int, int | None]]:
        if not skip and take is None:
            return [(p, 0, c) for p, c in zip(paths, counts, strict=True)]
        end = math.inf if take is None else skip + take
        ranges, start = [], 0
        for path, count in zip(paths, counts, strict=True):
            first, stop = max(skip, start), min(end, start + count)
            if first < stop:
                ranges.append((path, first - start, int(stop - start)))
            start += count
        return ranges

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _located_records(self) -> Iterator[tuple[bytes, str]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        shards = list(self.shards)
        if self.shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        items = _interleave(shards, self.cycle_length, self.verify)
        if self.shuffle and self.shuffle_buffer > 1:
            items = _shuffled(items, self.shuffle_buffer, rng)
        return items

    def records(self) -> Iterator[bytes]:
        """This reader's serialized records for the current epoch, in stream order."""
        return (data for data, _ in self._located_records())

    def __iter__(self) -> Iterator:
        if self._pool is None:
            self._pool = _pool(self.workers)
        chunks = _chunks(self._located_records(), 64)
        decoded = _ordered_map(_decode_pairs, chunks, self._pool, in_flight=2 * self.workers)
        pairs = (pair for chunk in decoded for pair in chunk)
        if self.batch_size is None:
            yield from pairs
            return
        while batch := list(islice(pairs, self.batch_size)):
            if len(batch) < self.batch_size and self.drop_last:
                return
            shapes = {img.shape for img, _ in batch}
            if len(shapes) > 1:
                raise DataError(f"a batch mixes image sizes {sorted(shapes)}; resize the source")
            yield np.stack([img for img, _ in batch]), np.array([l for _, l in batch], np.int64)

    def close(self) -> None:
        """End the decoding processes, if any."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> RecordStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode_pairs(records: list[bytes], where: list[str]) -> list[tuple[np.ndarray, int]]:
    return [decode_record(d, w)[:2] for d, w in zip(records, where, strict=True)]
