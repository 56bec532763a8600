"""Record shards as a source: finding a source's shards by split (a converted directory with
its manifest.json, a directory of *.tfrecord* files, a glob, files), checking them against the
manifest, decoding a split once into arrays (`load_record_split`; RecordStream in stream.py
streams instead), training data from the train and test (else val) splits, and the summary
`dawntrain data inspect` prints.

A converted directory holds `<split>-00000-of-000NN.tfrecord[.gz|.zz]` files plus manifest.json:
{"layout", "compression", "splits": {split: [{"file", "records", "sha256"}]}, "classes"}, and
from `dawntrain data convert` also "source", "unlabelled" (splits without labels) and "notes".
The record layouts are described in codec/record.py; the writer is convert.py.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from dawntrain.data.cache import cached_arrays, default_cache_dir
from dawntrain.data.codec.record import (
    decode_record,
    record_features,
    record_label,
    record_layout,
)
from dawntrain.data.codec.tfrecord import SUFFIXES, read_records
from dawntrain.data.dataset import ImageDataset
from dawntrain.data.images import ordered_map, process_pool
from dawntrain.data.readers.options import DEFAULTS, ReadOptions
from dawntrain.errors import DataError, RecordError
from dawntrain.files import PathLike, file_sha256

MANIFEST = "manifest.json"
# Evaluation split of record data, first found wins; Tiny ImageNet's labelled split is "val".
TEST_SPLITS = ("test", "val", "validation")
# Part of the record cache key: bump it when decoding records changes.
CACHE_VERSION = 1
# Below this size of shard files a process pool costs more (interpreter start, imports) than it
# saves in decoding.
PARALLEL_MIN_BYTES = 8 << 20
CHUNK_RECORDS = 256  # records per task sent to a worker process
_SHARD_NAME = re.compile(r"(.+?)-\d+-of-\d+\.tfrecord")

RecordSource = PathLike | Iterable[PathLike]


def matches(source: str) -> bool:
    """A glob that matches files, a directory holding a manifest or *.tfrecord* files, or a
    .tfrecord* file."""
    if any(c in source for c in "*?["):
        return bool(globlib.glob(source))
    path = Path(source)
    if path.is_dir():
        return (path / MANIFEST).is_file() or any(path.glob("*.tfrecord*"))
    return ".tfrecord" in path.name


def shard_name(split: str, index: int, num_shards: int, compression: str = "gzip") -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord{SUFFIXES[compression]}"


def split_of(path: Path) -> str:
    """'train' for train-00000-of-00010.tfrecord.gz, else the name before '.tfrecord'."""
    match = _SHARD_NAME.match(path.name)
    return match.group(1) if match else path.name.split(".tfrecord")[0]


# ---------------------------------------------------------------------------------------------
# Manifests


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


def manifest_problems(
    directory: Path, manifest: dict, splits: Iterable[str] | None = None
) -> Iterator[tuple[Path, str]]:
    """(shard path, what is wrong) for each shard of `splits` (default all) that the manifest
    lists but that is missing or no longer has the recorded sha256."""
    for split in manifest["splits"] if splits is None else splits:
        for shard in manifest["splits"][split]:
            path = directory / shard["file"]
            if not path.is_file():
                yield path, f"listed in {MANIFEST} (split {split!r}) but missing"
            elif file_sha256(path) != shard["sha256"]:
                yield (
                    path,
                    (
                        f"sha256 differs from {MANIFEST}: the shard was modified or damaged after "
                        "it was written; re-write the shards"
                    ),
                )


def verify_manifest(directory: PathLike) -> dict:
    """Check every shard listed in the manifest exists and has its recorded sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for path, problem in manifest_problems(directory, manifest):
        raise RecordError(f"{path}: {problem}")
    return manifest


# ---------------------------------------------------------------------------------------------
# Finding shards


def _listed(source: RecordSource) -> list[Path]:
    """The record files a source names, a directory's manifest aside: its *.tfrecord* files,
    a glob's matches (sorted), one file, or a list of files (in its order)."""
    if isinstance(source, str | Path) and Path(source).is_dir():
        directory = Path(source)
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
    return paths


def record_splits(source: RecordSource) -> tuple[dict[str, list[Path]], dict | None]:
    """Shard paths by split, and the manifest if there is one, for a converted directory (its
    manifest), a directory of *.tfrecord* files, a glob, one file or a list of files. Without
    a manifest a file's split is its name up to '-00000-of-000NN' (else up to '.tfrecord'); a
    glob or list whose files all sit in one converted directory uses that directory's manifest."""
    if isinstance(source, str | Path) and (Path(source) / MANIFEST).is_file():
        directory = Path(source)
        manifest = read_manifest(directory)
        splits = {
            split: [directory / s["file"] for s in shards]
            for split, shards in manifest["splits"].items()
        }
        return splits, manifest
    paths = _listed(source)
    splits: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        splits[split_of(path)].append(path)
    parents = {p.parent for p in paths}
    if len(parents) == 1 and (parents.pop() / MANIFEST).is_file():
        manifest = read_manifest(paths[0].parent)
        listed = {s["file"] for ss in manifest["splits"].values() for s in ss}
        if all(p.name in listed for p in paths):
            return dict(splits), manifest
    return dict(splits), None


def split_shards(source: RecordSource, split: str | None = None) -> tuple[list[Path], dict | None]:
    """One split's shard paths, and a directory source's manifest (None for other sources, so
    a split given as files is read as its records say). Without `split`: a directory's only
    split, or every file a glob, a file or a list names, in their order. See record_splits."""
    splits, manifest = record_splits(source)
    is_dir = isinstance(source, str | Path) and Path(source).is_dir()
    if split is None and len(splits) > 1 and not is_dir:
        return _listed(source), None
    if split is None and len(splits) > 1:
        raise DataError(f"{source}: holds splits {sorted(splits)}; say which split to read")
    if split is not None and split not in splits:
        raise DataError(f"{source}: no split {split!r}; found {sorted(splits)}")
    paths = splits[split] if split is not None else next(iter(splits.values()))
    return paths, manifest if is_dir else None


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


def located_records(
    path: Path, first: int = 0, stop: int | None = None, verify: bool = True
) -> Iterator[tuple[bytes, str]]:
    """(record, "<file> record <index>") for records [first, stop) of one file."""
    for index, data in islice(enumerate(read_records(path, verify=verify)), first, stop):
        yield data, f"{path} record {index}"


def chunked(items: Iterator[tuple[bytes, str]], size: int) -> Iterator[tuple[list, list]]:
    while batch := list(islice(items, size)):
        yield [d for d, _ in batch], [w for _, w in batch]


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


def load_record_split(
    source: PathLike | Iterable[PathLike],
    split: str | None = None,
    workers: int = 2,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read and decode every record once: (uint8 NHWC images, int64 labels, class names).
    For data that fits in memory. The main process reads and checks the records; decoding runs
    in `workers` processes when the shards hold more than PARALLEL_MIN_BYTES."""
    paths, manifest = split_shards(source, split)
    size = sum(p.stat().st_size for p in paths if p.is_file())
    parallel = workers if size >= PARALLEL_MIN_BYTES else 1
    located = (item for path in paths for item in located_records(path, verify=verify))
    images, labels, texts = [], [], []
    with process_pool(parallel) or contextlib.nullcontext() as pool:
        decoded = ordered_map(
            _decode_chunk, chunked(located, CHUNK_RECORDS), pool, in_flight=2 * parallel
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


def read(source: str, options: ReadOptions = DEFAULTS) -> ImageDataset:
    """Record shards (a converted directory, a glob or files) as train + test arrays: the train
    split, and test (else val) as the test set, skipping splits the manifest marks unlabelled.
    Decoded once, then cached under a key made of each shard's sha256 (from the manifest), size
    and mtime, so a second load is a memory map and a re-written shard is decoded again.
    verify: first check a directory's shards against its manifest's sha256s. Images keep their
    stored size whatever side and resize say (resize them after loading)."""
    if options.verify and Path(source).is_dir() and (Path(source) / MANIFEST).is_file():
        verify_manifest(source)
    splits, manifest = record_splits(source)
    unlabelled = set((manifest or {}).get("unlabelled", []))
    test = next((s for s in TEST_SPLITS if s in splits and s not in unlabelled), None)
    if "train" not in splits or test is None:
        raise DataError(
            f"{source}: training needs a train split and a labelled test or val split, found "
            f"{sorted(splits)}; shard files name their split (train-00000-of-00010.tfrecord.gz) "
            "or a manifest.json lists them: write them with `dawntrain data convert`"
        )
    paths = splits["train"] + splits[test]
    listed = (
        {s["file"]: s["sha256"] for ss in manifest["splits"].values() for s in ss}
        if manifest
        else {}
    )
    classes = (manifest or {}).get("classes", [])
    key = hashlib.sha256(f"records {CACHE_VERSION} {test} {classes}\n".encode())
    for path in paths:
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(f"{path}: cannot read this shard ({e}); re-convert the source") from e
        key.update(
            f"{path.name}\0{listed.get(path.name, '')}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )
    split_workers = {} if options.workers is None else {"workers": options.workers}

    def build() -> dict[str, np.ndarray]:
        train_x, train_y, train_names = load_record_split(splits["train"], **split_workers)
        test_x, test_y, test_names = load_record_split(splits[test], **split_workers)
        names = list(classes) or train_names + test_names[len(train_names) :]
        for split, labels in (("train", train_y), (test, test_y)):
            if not 0 <= labels.min() <= labels.max() < len(names):
                raise DataError(
                    f"{source}: split {split} has labels in [{labels.min()}, {labels.max()}] for "
                    f"{len(names)} classes (-1 marks unlabelled images); train and evaluate on "
                    "labelled splits"
                )
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(
                f"{source}: train images are {train_x.shape[1:]}, {test} images "
                f"{test_x.shape[1:]}; both splits need one size"
            )
        return {
            "train_images": train_x,
            "train_labels": train_y,
            "test_images": test_x,
            "test_labels": test_y,
            "class_names": np.array(names),
        }

    cache_dir = options.cache() or default_cache_dir()
    arrays = cached_arrays(
        f"records-{key.hexdigest()[:24]}", build, cache_dir, meta={"source": source}
    )
    return ImageDataset.from_arrays(arrays, f"records {source} (train, {test})")


# ---------------------------------------------------------------------------------------------
# Inspecting


def inspect_records(
    paths: PathLike | Iterable[PathLike], verify: bool = False, split: str | None = None
) -> dict:
    """Summarize record files (or a directory's `split`): count, feature keys and kinds, layout,
    class histogram and first image shape. With verify, check every CRC and decode every image;
    the first failure is reported under "first_bad" ({file, index, error}) instead of raised."""
    paths, _ = split_shards(paths, split)
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
                    features = record_features(data, where)
                    layout = record_layout(features, where)
                    if summary["layout"] is None:
                        summary["layout"] = layout
                        summary["features"] = {k: _kind(v) for k, v in features.items()}
                    histogram[record_label(features, layout, where)] += 1
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


def _kind(values: list) -> str:
    if not values:
        return "empty"
    return {bytes: "bytes", int: "int64", float: "float"}[type(values[0])]


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
                summary["first_bad"] = next(
                    (
                        {"file": str(path), "index": None, "error": problem}
                        for path, problem in manifest_problems(directory, manifest, [name])
                    ),
                    None,
                )
        report[name] = summary
    return report


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
