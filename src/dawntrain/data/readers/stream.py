"""Streaming record shards too large to load at once: RecordStream, with the tf.data-style
interleave and shuffle buffer, per-reader shard ranges for distributed runs, and decoding in
worker processes. `records.load_record_split` is the decode-once counterpart."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

from dawntrain.data.codec.record import decode_record
from dawntrain.data.codec.tfrecord import read_records
from dawntrain.data.images import ordered_map, process_pool
from dawntrain.data.readers.records import chunked, located_records, split_shards
from dawntrain.errors import DataError
from dawntrain.files import PathLike


def _interleave(
    shards: list[tuple[Path, int, int | None]], cycle_length: int, verify: bool
) -> Iterator[tuple[bytes, str]]:
    """Records of `shards` [(path, first, stop)], one from each of `cycle_length` open shards in
    turn; an exhausted shard's slot goes to the next shard (as tf.data's interleave does)."""
    pending = deque(shards)

    def open_next() -> Iterator[tuple[bytes, str]]:
        path, first, stop = pending.popleft()
        return located_records(path, first, stop, verify)

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
        paths, manifest = split_shards(source, split)
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
            self._pool = process_pool(self.workers)
        chunks = chunked(self._located_records(), 64)
        decoded = ordered_map(_decode_pairs, chunks, self._pool, in_flight=2 * self.workers)
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
