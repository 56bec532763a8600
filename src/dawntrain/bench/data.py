"""Record files against image folders: conversion time and size, and decode-everything speed.

For each data set (the CIFAR-10 JPEG tarball, the Tiny ImageNet subset): convert it to shards
(time, and the shards' total size against the source tarball's), then time reading every record
with its CRC checked (no decoding), reading and decoding every record (records.load_record_split)
and decoding the image folder itself (dawntrain.data.load into a throwaway cache, which includes writing
that cache; for Tiny ImageNet every split of its listing, decoded). Every step uses `workers`
processes.
Each is timed once: a data set is read and decoded as a whole, which takes seconds.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import PIL

from dawntrain.data import load
from dawntrain.data.codec.tfrecord import read_records
from dawntrain.data.convert import convert
from dawntrain.data.readers import tiny_imagenet
from dawntrain.data.readers.records import load_record_split, record_splits
from dawntrain.errors import DataError

SHARED_DATA = Path("../shared/data")
CIFAR_JPEG = SHARED_DATA / "cifar10-jpeg.tar.gz"
TINY_SUBSET = SHARED_DATA / "tiny-imagenet-200-subset20.tar.gz"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "crc32c": google_crc32c.implementation,
        "platform": platform.platform(),
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _decode_records(paths_by_split: dict[str, list[Path]], workers: int) -> int:
    return sum(len(load_record_split(p, workers=workers)[1]) for p in paths_by_split.values())


def _decode_folder(kind: str, source: Path, cache_dir: Path, workers: int) -> int:
    if kind == "tiny":
        listing = tiny_imagenet.list_tiny_imagenet(source)
        splits = ("train", "val", "test")
        return sum(len(listing.decode(s, workers=workers, progress=False)) for s in splits)
    d = load(source, cache_dir=cache_dir, progress=False, workers=workers)
    return len(d.train_labels) + len(d.test_labels)


def bench_one(kind: str, source: Path, work_dir: Path, workers: int = 2) -> dict[str, Any]:
    """Convert `source` under work_dir and time the reads; kind is 'cifar' or 'tiny'."""
    out = work_dir / f"{kind}-records"
    manifest, convert_s = _timed(lambda: convert(source, out, workers=workers, progress=False))
    splits, _ = record_splits(out)
    paths = [p for ps in splits.values() for p in ps]
    records, read_s = _timed(lambda: sum(1 for _ in read_records(paths, verify=True)))
    decoded, decode_s = _timed(lambda: _decode_records(splits, workers))
    folder, folder_s = _timed(lambda: _decode_folder(kind, source, work_dir / "cache", workers))
    if not records == decoded == folder:
        raise DataError(f"{source}: {records} records, {decoded} decoded, {folder} in the folder")
    return {
        "source": str(source),
        "images": records,
        "splits": {
            s: sum(x["records"] for x in shards) for s, shards in manifest["splits"].items()
        },
        "shards": len(paths),
        "compression": manifest["compression"],
        "source_bytes": source.stat().st_size,
        "shard_bytes": sum(p.stat().st_size for p in paths),
        "convert_s": convert_s,
        "read_verify_s": read_s,
        "records_decode_s": decode_s,
        "folder_decode_s": folder_s,
        "convert_img_per_s": records / convert_s,
        "read_verify_rec_per_s": records / read_s,
        "records_decode_img_per_s": records / decode_s,
        "folder_decode_img_per_s": records / folder_s,
    }


def run(
    cifar: Path | None = None,
    tiny: Path | None = None,
    workers: int = 2,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Benchmark the given data sets (default: the ../shared/data ones that exist)."""
    if cifar is None and tiny is None:
        cifar = CIFAR_JPEG if CIFAR_JPEG.is_file() else None
        tiny = TINY_SUBSET if TINY_SUBSET.is_file() else None
    todo = {k: Path(p) for k, p in (("cifar", cifar), ("tiny", tiny)) if p is not None}
    if not todo:
        raise DataError(
            f"no data to benchmark: {CIFAR_JPEG} and {TINY_SUBSET} are absent; pass --cifar "
            "PATH (an image folder or its archive) and/or --tiny PATH (a Tiny ImageNet layout)"
        )
    for path in todo.values():
        if not path.exists():
            raise DataError(f"{path}: not found; pass an existing path")
    with tempfile.TemporaryDirectory(prefix="dawntrain-bench-data-", dir=work_dir) as tmp:
        results = {kind: bench_one(kind, path, Path(tmp), workers) for kind, path in todo.items()}
    return {"machine": machine(), "workers": workers, "datasets": results}


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"{'data set':<10} {'images':>7} {'shards':>6} {'source MB':>9} {'shards MB':>9} "
        f"{'convert s':>9} {'convert img/s':>13} {'read+CRC rec/s':>14} "
        f"{'records decode img/s':>20} {'folder decode img/s':>19}"
    )
    lines = [head, "-" * len(head)]
    for kind, r in result["datasets"].items():
        lines.append(
            f"{kind:<10} {r['images']:>7} {r['shards']:>6} {r['source_bytes'] / 1e6:>9.1f} "
            f"{r['shard_bytes'] / 1e6:>9.1f} {r['convert_s']:>9.1f} "
            f"{r['convert_img_per_s']:>13,.0f} {r['read_verify_rec_per_s']:>14,.0f} "
            f"{r['records_decode_img_per_s']:>20,.0f} {r['folder_decode_img_per_s']:>19,.0f}"
        )
    m = result["machine"]
    lines.append(f"{m['cpu']}, {m['cores']} cores, {result['workers']} workers")
    return "\n".join(lines)
