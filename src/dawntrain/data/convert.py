"""Convert any source the tool reads into TFRecord shards plus manifest.json (`dawntrain data`).

What each source becomes, one record per image (the layouts are described in records.py):
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

manifest.json holds what records.write_manifest writes (layout, compression, splits: {split:
[{file, records, sha256}]}, classes) plus "source", "unlabelled" (splits without labels) and
"notes".
"""

from __future__ import annotations

import contextlib
import glob as globlib
import io
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dawntrain.data import sources
from dawntrain.data.download import file_digest
from dawntrain.data.records import (
    LAYOUTS,
    MANIFEST,
    PARALLEL_MIN_RECORDS,
    ImageRecord,
    _decode_features,
    _label,
    decode_record,
    image_record_from_array,
    inspect_records,
    read_manifest,
    record_layout,
    shard_name,
    write_manifest,
    write_shards,
)
from dawntrain.data.tfrecord import atomic_write, normalize_compression, read_records, write_records
from dawntrain.errors import ConfigError, DataError

TARGET_SHARD_BYTES = 100 * 10**6
DEFAULT_TRAIN_SHARDS = 10  # the original system's train shard count
UNLABELLED = -1  # the label of an image without one (Tiny ImageNet's test split)
_CHUNK = 512  # images per task sent to a worker process
_EXAMPLE_OVERHEAD = 120  # bytes of tf.train.Example fields around the image bytes, about
_SHARD_NAME = re.compile(r"(.+?)-\d+-of-\d+\.tfrecord")

# A split's records: ImageRecords to encode, or serialized records (bytes) to copy as they are.
Records = list[ImageRecord] | list[bytes]


# ---------------------------------------------------------------------------------------------
# Record sources by split


def _split_of(path: Path) -> str:
    """'train' for train-00000-of-00010.tfrecord.gz, else the name before '.tfrecord'."""
    match = _SHARD_NAME.match(path.name)
    return match.group(1) if match else path.name.split(".tfrecord")[0]


def record_splits(
    source: str | Path | Iterable[str | Path],
) -> tuple[dict[str, list[Path]], dict | None]:
    """Shard paths by split, and the manifest if there is one, for a converted directory (its
    manifest), a directory of *.tfrecord* files, a glob, one file or a list of files. Without
    a manifest a file's split is its name up to '-00000-of-000NN' (else up to '.tfrecord'); a
    glob or list whose files all sit in one converted directory uses that directory's manifest."""
    if isinstance(source, str | Path) and Path(source).is_dir():
        directory = Path(source)
        if (directory / MANIFEST).is_file():
            manifest = read_manifest(directory)
            splits = {
                split: [directory / s["file"] for s in shards]
                for split, shards in manifest["splits"].items()
            }
            return splits, manifest
        # pathlib globs match dot files: skip atomic_write's temporary .<name>.tmp files.
        paths = [p for p in sorted(directory.glob("*.tfrecord*")) if not p.name.startswith(".")]
        if not paths:
            raise DataError(f"{directory}: no *.tfrecord* files and no {MANIFEST}")
    elif isinstance(source, str) and any(c in source for c in "*?["):
        paths = [Path(p) for p in sorted(globlib.glob(source))]
        if not paths:
            raise DataError(f"no files match {source!r}")
    elif isinstance(source, str | Path):
        paths = [Path(source)]
    else:
        paths = [Path(p) for p in source]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: no such record file")
    splits: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        splits[_split_of(path)].append(path)
    parents = {p.parent for p in paths}
    if len(parents) == 1 and (parents.pop() / MANIFEST).is_file():
        manifest = read_manifest(paths[0].parent)
        listed = {s["file"] for ss in manifest["splits"].values() for s in ss}
        if all(p.name in listed for p in paths):
            return dict(splits), manifest
    return dict(splits), None


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
        features = _decode_features(data, where)
        if record_layout(features, where) == "image":
            encoded = features["image/encoded"][0]
            label = _label(features, "image", where)
            out.append(_encoded_record(where, encoded, label, _text(features, label, classes)))
        else:
            img, label, _ = decode_record(data, where)
            out.append(image_record_from_array(img, label, _text(features, label, classes)))
    return out


def _text(features: dict, label: int, classes: list[str]) -> str:
    texts = features.get("image/class/text") or [b""]
    text = texts[0].decode("utf-8", "replace") if isinstance(texts[0], bytes) else ""
    return text or (classes[label] if 0 <= label < len(classes) else "")


def _map_chunks(
    fn: Callable, items: Sequence, extra: tuple, pool: Executor | None, desc: str, progress: bool
) -> list:
    """fn(chunk, *extra) over chunks of `items`, in order, on `pool` (inline without one)."""
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    out: list = []
    bar = tqdm(total=len(items), unit="img", desc=desc, disable=not progress, file=sys.stderr)
    with bar:
        if pool is None or len(items) < PARALLEL_MIN_RECORDS:
            results = (fn(chunk, *extra) for chunk in chunks)
        else:
            results = pool.map(fn, chunks, *[[e] * len(chunks) for e in extra])
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
        self.layout: str | None = None  # the layout of records to copy as they are
        self.extra: dict = {}  # more manifest keys


def _read_images(src: str, pool: Executor | None, progress: bool) -> _Source:
    """The CIFAR-10 archive (PNG-encoded pixels) or an image folder (original bytes)."""
    path, description = sources.resolve_source(src, sources.default_cache_dir(), progress)
    raw = sources.read_source(path)
    source = _Source(description, raw.class_names)
    for split in sources.SPLITS:
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
    from dawntrain.data import tiny_imagenet_path
    from dawntrain.data.tiny_imagenet import list_tiny_imagenet

    listing = list_tiny_imagenet(tiny_imagenet_path(src, progress))
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
            features = _decode_features(data, where)
            kind = record_layout(features, where)
            layouts.add(kind)
            label = _label(features, kind, where)
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
    if layouts == {layout}:
        source.layout = layout
        source.splits = {split: [data for data, _ in items] for split, items in read.items()}
        return source
    for split, items in read.items():
        source.splits[split] = _map_chunks(
            _record_chunk, items, (classes,), pool, f"re-encode {split}", progress
        )
    return source


def _read_source(src: str, layout: str, pool: Executor | None, progress: bool) -> _Source:
    from dawntrain.data import _is_records, _is_tiny_imagenet

    if _is_records(src):
        return _read_record_source(src, layout, pool, progress)
    if _is_tiny_imagenet(src):
        return _read_tiny_imagenet(src, pool, progress)
    return _read_images(src, pool, progress)


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


def _copy_shard(path: Path, records: list[bytes], compression: str) -> dict:
    count = write_records(path, records, compression)
    return {"file": path.name, "records": count, "sha256": file_digest(path, "sha256")}


def _write_copies(
    out_dir: Path,
    split: str,
    records: list[bytes],
    num_shards: int,
    compression: str,
    workers: int,
    progress: bool,
) -> list[dict]:
    """write_shards for records already serialized: shard i holds the i-th contiguous slice."""
    bounds = [i * len(records) // num_shards for i in range(num_shards + 1)]
    jobs = [
        (out_dir / shard_name(split, i, num_shards, compression), records[lo:hi], compression)
        for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))
    ]
    bar = tqdm(
        total=len(records), unit="rec", desc=f"write {split}", disable=not progress, file=sys.stderr
    )
    parallel = min(workers, num_shards) if len(records) >= PARALLEL_MIN_RECORDS else 1
    infos = []
    with bar, _pool(parallel) or contextlib.nullcontext() as pool:
        results = pool.map(_copy_shard, *zip(*jobs)) if pool else (_copy_shard(*j) for j in jobs)
        for info in results:
            infos.append(info)
            bar.update(info["records"])
    return infos


def _pool(workers: int) -> ProcessPoolExecutor | None:
    # spawn, not fork: the caller may hold torch/tqdm threads, and fork with threads can deadlock.
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None


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
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown record layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    shard_counts({}, shards, shard_size)  # check the options before reading anything
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    with _pool(workers) or contextlib.nullcontext() as pool:
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
    for split, records in source.splits.items():
        if split not in counts:
            source.notes.append(f"{split}: no images, no shards")
        elif source.layout is not None:
            written[split] = _write_copies(
                out_dir, split, records, counts[split], compression, workers, progress
            )
        else:
            written[split] = write_shards(
                out_dir, split, records, counts[split], compression, layout, workers, progress
            )
    path = write_manifest(out_dir, layout, written, source.classes, compression)
    manifest = json.loads(path.read_text())
    manifest.update(
        source=source.description,
        unlabelled=source.unlabelled,
        notes=source.notes,
        **source.extra,
    )
    with atomic_write(path) as f:
        f.write(json.dumps(manifest, indent=1).encode() + b"\n")
    return manifest


# ---------------------------------------------------------------------------------------------
# Inspecting


def inspect(
    paths: Sequence[str | Path], split: str | None = None, verify: bool = False
) -> dict[str, dict]:
    """{split: records.inspect_records summary} for record sources (converted directories, globs,
    files), plus "bytes" and, from a manifest, "classes". With verify every CRC is checked and
    every image decoded (and a manifest's sha256s compared); the first failure of a split is its
    "first_bad" ({file, index, error}; index None for a sha256 mismatch)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    manifests: dict[str, tuple[Path, dict]] = {}
    for source in paths:
        splits, manifest = record_splits(source)
        for name, shard_paths in splits.items():
            groups[name] += shard_paths
            if manifest:
                manifests[name] = (shard_paths[0].parent, manifest)
    if split is not None:
        if split not in groups:
            raise DataError(
                f"no split {split!r} in {', '.join(map(str, paths))}; found {sorted(groups)}"
            )
        groups = {split: groups[split]}
    report = {}
    for name, shard_paths in groups.items():
        summary = inspect_records(shard_paths, verify=verify)
        summary["bytes"] = sum(p.stat().st_size for p in shard_paths)
        if name in manifests:
            directory, manifest = manifests[name]
            summary["classes"] = list(manifest["classes"])
            if verify and summary["first_bad"] is None:
                summary["first_bad"] = _sha256_mismatch(directory, manifest, name)
        report[name] = summary
    return report


def _sha256_mismatch(directory: Path, manifest: dict, split: str) -> dict | None:
    for shard in manifest["splits"][split]:
        path = directory / shard["file"]
        if file_digest(path, "sha256") != shard["sha256"]:
            return {
                "file": str(path),
                "index": None,
                "error": f"its sha256 differs from {MANIFEST}: the shard changed after it was written",
            }
    return None


def format_inspection(report: dict[str, dict]) -> str:
    """inspect()'s report as text, one block per split."""
    lines = []
    for split, s in report.items():
        lines.append(
            f"{split}: {s['records']} records in {s['files']} file(s), {s['bytes'] / 1e6:.1f} MB, "
            f"{s['layout'] or 'no'} layout"
        )
        lines.append(
            "  features: " + ", ".join(f"{k} ({v})" for k, v in sorted(s["features"].items()))
        )
        if "first_image_shape" in s:
            lines.append(
                "  first image: " + "x".join(map(str, s["first_image_shape"])) + " (HxWxC)"
            )
        hist, classes = s["class_histogram"], s.get("classes", [])
        named = [f"{classes[k] if 0 <= k < len(classes) else k}: {n}" for k, n in hist.items()]
        more = f", ... ({len(named) - 12} more)" if len(named) > 12 else ""
        lines.append(f"  labels ({len(hist)} distinct): " + ", ".join(named[:12]) + more)
        if "first_bad" in s:
            bad = s["first_bad"]
            lines.append(
                "  verify: every record and image ok"
                if bad is None
                else f"  verify: BAD, first at {bad['file']} record {bad['index']}"
            )
    return "\n".join(lines)


def first_bad_message(report: dict[str, dict]) -> str | None:
    """One line naming the first bad record (or shard) of a verified report, else None."""
    for summary in report.values():
        bad = summary.get("first_bad")
        if bad:
            where = bad["file"] if bad["index"] is None else f"{bad['file']} record {bad['index']}"
            error = bad["error"].replace("\n", " ")
            # The readers' errors already start with the file (and record): keep one copy.
            error = error if error.startswith(bad["file"]) else f"{where}: {error}"
            return f"first bad {'shard' if bad['index'] is None else 'record'}: {error}"
    return None
