"""Convert any source the tool reads into TFRecord shards plus manifest.json (`dawntrain data`).

What each source becomes, one record per image (the layouts are described in codec/record.py):
  CIFAR-10 official archive ('cifar10', cifar-10-python.tar.gz, cifar-10-batches-py/): its raw
      pixels PNG-encoded (lossless); splits train and test.
  image folder, or its .tar/.tar.gz/.zip ('sample' too): the ORIGINAL JPEG/PNG bytes, untouched;
      splits train and test.
  Tiny ImageNet (tiny-imagenet-200/, its .zip or .tar.gz): the original JPEG bytes; splits train,
      val (labelled by val_annotations.txt) and test. Test has no labels: its records carry label
      -1 and no class text, and the manifest lists it under "unlabelled", so training and
      evaluation never use it while prediction can. The seed layout stores labels as uint8 and
      cannot say -1: there the test split is left out, as the manifest's "notes" say.
  record files (a converted directory, a glob, files): re-sharded; each record is copied byte for
      byte when the layout stays, re-encoded when it changes.
Every source image is decoded once during conversion, in `workers` processes, so an image Pillow
cannot read fails here, named, and not in the middle of training.

Shard counts. shard_size=N: every split in shards of N records. shards=N: the train split (else
the largest) in N shards, the others in as many as keep about the same shard size. Neither: the
original system's 10 train shards, more if a shard would pass ~100 MB (uncompressed), so a stream
can spread the train split over up to 10 readers while each shard stays a short read. No split
gets more shards than it has records.

manifest.json holds what write_manifest writes (layout, compression, splits: {split:
[{file, records, sha256}]}, classes) plus "source", "unlabelled" (splits without labels) and
"notes".

This is the writer: it reads sources through the readers and the codec, which never import it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dawntrain.data.codec.record import (
    ImageRecord,
    check_layout,
    decode_record,
    encode_record,
    image_record_from_array,
    record_features,
    record_label,
    record_layout,
    record_text,
)
from dawntrain.data.codec.tfrecord import normalize_compression, read_records, write_records
from dawntrain.data.images import ordered_map, process_pool
from dawntrain.data.readers import reader_for, tiny_imagenet
from dawntrain.data.readers import records as record_source
from dawntrain.data.readers.folder import SPLITS
from dawntrain.data.readers.records import MANIFEST, record_splits, shard_name
from dawntrain.errors import ConfigError, DataError, RecordError
from dawntrain.files import PathLike, atomic_write, file_sha256

TARGET_SHARD_BYTES = 100 * 10**6
DEFAULT_TRAIN_SHARDS = 10  # the original system's train shard count
UNLABELLED = -1  # the label of an image without one (Tiny ImageNet's test split)
# Below this many records a process pool costs more (interpreter start, imports) than it saves.
PARALLEL_MIN_RECORDS = 2048
_CHUNK = 512  # images per task sent to a worker process
_EXAMPLE_OVERHEAD = 120  # bytes of tf.train.Example fields around the image bytes, about

# A split's records: ImageRecords to encode, or serialized records (bytes) to copy as they are.
Records = list[ImageRecord] | list[bytes]


# ---------------------------------------------------------------------------------------------
# Per-image work, run in worker processes


def _encoded_record(name: str, data: bytes, label: int, text: str) -> ImageRecord:
    """An ImageRecord keeping `data`, the original bytes, once Pillow has decoded them."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode now: a damaged file fails here, named, not in training
            fmt, (width, height) = im.format or "", im.size
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ... on bad data
        raise DataError(
            f"{name}: cannot decode the image ({e}); fix or remove the file and convert again"
        ) from e
    return ImageRecord(data, fmt.lower(), label, height, width, text)


def _encoded_chunk(items: list[tuple[str, bytes, int]], classes: list[str]) -> list[ImageRecord]:
    return [
        _encoded_record(name, data, label, classes[label] if label >= 0 else "")
        for name, data, label in items
    ]


def _png_chunk(items: list[tuple[np.ndarray, int]], classes: list[str]) -> list[ImageRecord]:
    return [image_record_from_array(img, int(label), classes[label]) for img, label in items]


def _record_chunk(items: list[tuple[bytes, str]], classes: list[str]) -> list[ImageRecord]:
    """Records of either layout as ImageRecords; image-layout bytes are kept, seed-layout
    pixels are PNG-encoded."""
    out = []
    for data, where in items:
        features = record_features(data, where)
        if record_layout(features, where) == "image":
            encoded = features["image/encoded"][0]
            label = record_label(features, "image", where)
            out.append(_encoded_record(where, encoded, label, _text(features, label, classes)))
        else:
            img, label, _ = decode_record(data, where)
            out.append(image_record_from_array(img, label, _text(features, label, classes)))
    return out


def _text(features: dict, label: int, classes: list[str]) -> str:
    return record_text(features) or (classes[label] if 0 <= label < len(classes) else "")


def _map_chunks(
    fn: Callable, items: Sequence, extra: tuple, pool: Executor | None, desc: str, progress: bool
) -> list:
    """fn(chunk, *extra) over chunks of `items`, in order, on `pool` (inline without one)."""
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    out: list = []
    bar = tqdm(total=len(items), unit="img", desc=desc, disable=not progress, file=sys.stderr)
    pool = pool if len(items) >= PARALLEL_MIN_RECORDS else None
    with bar:
        results = ordered_map(fn, ((chunk, *extra) for chunk in chunks), pool, len(chunks))
        for chunk, result in zip(chunks, results, strict=True):
            out += result
            bar.update(len(chunk))
    return out


# ---------------------------------------------------------------------------------------------
# Sources


class _Source:
    def __init__(self, description: str, classes: list[str]):
        self.description = description
        self.classes = classes
        self.splits: dict[str, Records] = {}
        self.unlabelled: list[str] = []
        self.notes: list[str] = []
        self.extra: dict = {}  # more manifest keys


def _read_images(raw, pool: Executor | None, progress: bool) -> _Source:
    """The CIFAR-10 archive (PNG-encoded pixels) or an image folder (original bytes), from
    the cifar or folder reader's RawSource."""
    source = _Source(raw.description, raw.class_names)
    for split in SPLITS:
        if raw.arrays is not None:
            items = list(zip(raw.arrays[f"{split}_images"], raw.arrays[f"{split}_labels"].tolist()))
            chunk, what = _png_chunk, "png-encode"
        else:
            items = [(name, _read_bytes(data), label) for name, data, label in raw.encoded[split]]
            chunk, what = _encoded_chunk, "check"
        source.splits[split] = _map_chunks(
            chunk, items, (source.classes,), pool, f"{what} {split}", progress
        )
    return source


def _read_tiny_imagenet(src: str, pool: Executor | None, progress: bool) -> _Source:
    """Tiny ImageNet's original JPEG bytes: train, val and the unlabelled test split."""
    listing = tiny_imagenet.list_tiny_imagenet(tiny_imagenet.source_path(src, progress))
    tree = listing.tree
    source = _Source(f"Tiny ImageNet at {tree.label}", listing.class_words)
    listed = {"train": listing.train, "val": listing.val}
    if listing.test:
        listed["test"] = (listing.test, [UNLABELLED] * len(listing.test))
        source.unlabelled.append("test")
    source.notes += listing.notes
    source.extra["wnids"] = listing.wnids
    for split, (rels, labels) in listed.items():
        items = [
            (tree.where(rel), _read_bytes(tree.files[rel]), label)
            for rel, label in zip(rels, labels, strict=True)
        ]
        source.splits[split] = _map_chunks(
            _encoded_chunk, items, (source.classes,), pool, f"check {split}", progress
        )
    return source


def _read_bytes(data: bytes | Path) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        return data.read_bytes()
    except OSError as e:
        raise DataError(f"{data}: cannot read it ({e.strerror or e}); fix or remove it") from e


def _read_record_source(src: str, layout: str, pool: Executor | None, progress: bool) -> _Source:
    """Records to re-shard: copied as they are when `layout` is theirs, else re-encoded."""
    splits, manifest = record_splits(src)
    read = {
        split: [
            (data, f"{path} record {i}")
            for path in paths
            for i, data in enumerate(read_records(path, verify=True))
        ]
        for split, paths in splits.items()
    }
    layouts, texts, unlabelled = set(), {}, set()
    for split, items in read.items():
        for data, where in items:
            features = record_features(data, where)
            kind = record_layout(features, where)
            layouts.add(kind)
            label = record_label(features, kind, where)
            if label < 0:
                unlabelled.add(split)
            elif label not in texts or not texts[label]:
                texts[label] = _text(features, label, [])
    if manifest:
        classes = list(manifest["classes"])
        unlabelled |= set(manifest.get("unlabelled", []))
    else:
        classes = [texts.get(i) or str(i) for i in range(max(texts, default=-1) + 1)]
    source = _Source(f"records {src}", classes)
    source.unlabelled = sorted(unlabelled)
    if layouts == {layout}:  # copied byte for byte
        source.splits = {split: [data for data, _ in items] for split, items in read.items()}
        return source
    for split, items in read.items():
        source.splits[split] = _map_chunks(
            _record_chunk, items, (classes,), pool, f"re-encode {split}", progress
        )
    return source


def _read_source(src: str, layout: str, pool: Executor | None, progress: bool) -> _Source:
    reader = reader_for(src)
    if reader is record_source:
        return _read_record_source(src, layout, pool, progress)
    if reader is tiny_imagenet:
        return _read_tiny_imagenet(src, pool, progress)
    return _read_images(reader.raw(src, progress=progress), pool, progress)


# ---------------------------------------------------------------------------------------------
# Shards and the manifest


def _write_shard(path: Path, records: Records, compression: str, layout: str) -> dict:
    serialized = (r if isinstance(r, bytes) else encode_record(r, layout) for r in records)
    count = write_records(path, serialized, compression)
    return {"file": path.name, "records": count, "sha256": file_sha256(path)}


def write_shards(
    out_dir: PathLike,
    split: str,
    records: Iterable[ImageRecord] | Iterable[bytes],
    num_shards: int,
    compression: str = "gzip",
    layout: str = "image",
    workers: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Write `records` as `num_shards` TFRecord files `<split>-0000i-of-0000N.tfrecord[.gz]`,
    shard i holding the i-th contiguous slice. ImageRecords are encoded in `layout`; records
    given as bytes (already serialized, in `layout`) are copied byte for byte. Shards are
    written in `workers` processes when there are enough records to pay for starting them.
    Returns [{file, records, sha256}]."""
    compression = normalize_compression(compression)
    if compression == "auto":
        raise DataError("write_shards: compression must be 'none', 'gzip' or 'zlib', not 'auto'")
    check_layout(layout)
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
    with bar, process_pool(parallel) or contextlib.nullcontext() as pool:
        for info in ordered_map(_write_shard, tasks, pool, in_flight=num_shards):
            infos.append(info)
            bar.update(info["records"])
    return infos


def write_manifest(
    out_dir: PathLike,
    layout: str,
    splits: dict[str, list[dict]],
    class_names: Sequence[str],
    compression: str | None = None,
    **extra,
) -> Path:
    """Write out_dir/manifest.json (atomically) for the shards written by write_shards, with
    `extra` keys after the standard ones. compression defaults to what the shard file names
    say."""
    check_layout(layout)
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
        **extra,
    }
    path = Path(out_dir) / MANIFEST
    return atomic_write(path, json.dumps(manifest, indent=1).encode() + b"\n", error=RecordError)


# ---------------------------------------------------------------------------------------------
# Sharding and writing


def _record_bytes(record: ImageRecord | bytes, layout: str) -> int:
    """About how many bytes a record takes in a shard before compression."""
    if isinstance(record, bytes):
        return len(record)
    if layout == "seed":
        return 4 * 3 * record.height * record.width + _EXAMPLE_OVERHEAD  # float32 HWC
    return len(record.encoded) + len(record.text) + _EXAMPLE_OVERHEAD


def shard_counts(
    sizes: dict[str, tuple[int, int]], shards: int | None = None, shard_size: int | None = None
) -> dict[str, int]:
    """Shards per split from {split: (records, bytes)}; see the module docstring."""
    if shards is not None and shard_size is not None:
        raise ConfigError("pass shards or shard_size (--shards or --shard-size), not both")
    if (shards is not None and shards < 1) or (shard_size is not None and shard_size < 1):
        raise ConfigError(f"shards and shard_size must be at least 1, got {shards or shard_size}")
    sizes = {split: size for split, size in sizes.items() if size[0] > 0}
    if shard_size is not None:
        return {split: math.ceil(n / shard_size) for split, (n, _) in sizes.items()}
    if not sizes:
        return {}
    ref = "train" if "train" in sizes else max(sizes, key=lambda s: sizes[s][0])
    ref_records, ref_bytes = sizes[ref]
    if shards is None:
        shards = max(DEFAULT_TRAIN_SHARDS, math.ceil(ref_bytes / TARGET_SHARD_BYTES))
    return {
        split: max(1, min(n, math.ceil(shards * n / ref_records)))
        for split, (n, _) in sizes.items()
    }


def _check_out_dir(out_dir: Path) -> None:
    if (out_dir / MANIFEST).exists() or any(out_dir.glob("*.tfrecord*")):
        raise DataError(
            f"{out_dir}: already holds record files; convert into a new directory, or remove "
            "them first (re-sharding in place would mix old and new shards)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file; pass a directory for the shards")


def convert(
    src: str | Path,
    out_dir: str | Path,
    shards: int | None = None,
    shard_size: int | None = None,
    compression: str = "gzip",
    layout: str = "image",
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Write `src` (any source the tool reads) as `out_dir/<split>-0000i-of-0000N.tfrecord[.gz]`
    shards plus `out_dir/manifest.json`, and return the manifest. See the module docstring for
    what each source becomes and how many shards each split gets."""
    compression = normalize_compression(compression)
    if compression == "auto":
        raise ConfigError("compression must be 'gzip', 'zlib' or 'none' to write")
    check_layout(layout, ConfigError)
    shard_counts({}, shards, shard_size)  # check the options before reading anything
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    with process_pool(workers) or contextlib.nullcontext() as pool:
        source = _read_source(str(src), layout, pool, progress)
    if layout == "seed" and source.unlabelled:
        for split in source.unlabelled:
            if source.splits.pop(split, None):
                source.notes.append(
                    f"{split}: left out, its images have no labels and the seed layout stores "
                    "labels as uint8 (no -1); use the image layout to keep it"
                )
        source.unlabelled = []
    sizes = {
        split: (len(records), sum(_record_bytes(r, layout) for r in records))
        for split, records in source.splits.items()
    }
    counts = shard_counts(sizes, shards, shard_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, split_records in source.splits.items():
        if split not in counts:
            source.notes.append(f"{split}: no images, no shards")
        else:
            written[split] = write_shards(
                out_dir,
                split,
                split_records,
                counts[split],
                compression,
                layout,
                workers,
                progress,
            )
    path = write_manifest(
        out_dir,
        layout,
        written,
        source.classes,
        compression,
        source=source.description,
        unlabelled=source.unlabelled,
        notes=source.notes,
        **source.extra,
    )
    return json.loads(path.read_text())
