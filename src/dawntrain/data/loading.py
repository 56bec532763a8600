"""The two ways in: `load` reads any source with the reader that claims it; `checked` is the
data a run trains on, loaded (or given) and checked before any work is done."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from dawntrain.data.dataset import ImageDataset, check_labels, sized
from dawntrain.data.readers import reader_for
from dawntrain.data.readers.options import ReadOptions
from dawntrain.errors import DataError


def load(
    source: str | os.PathLike = "cifar10",
    *,
    progress: bool = True,
    side: int | None = None,
    resize: bool = False,
    verify: bool = False,
    workers: int | None = None,
    cache_dir: Path | None = None,
) -> ImageDataset:
    """Any source the tool reads (see dawntrain.data.readers), as uint8 NHWC train/test arrays
    with class names, decoded once and then memory-mapped from the cache.

    resize: images of another size are resized (bilinear) instead of refused; to side x side
    where given, decoding straight to it (record shards and CIFAR-10's batch files keep their
    stored size: resize those arrays after loading, as `checked` does). verify: check a record
    directory's shards against its manifest's sha256s first. workers: decoding processes.
    cache_dir: where arrays are cached and archives looked for (default default_cache_dir())."""
    source = str(source)
    options = ReadOptions(progress, side, resize, verify, workers, cache_dir)
    return reader_for(source).read(source, options)


def checked(
    source: str | os.PathLike | ImageDataset,
    *,
    side: int | None,
    resize: bool,
    what: str,
    workers: int | None = None,
) -> ImageDataset:
    """The run's data: a source name/path is loaded (verifying a record manifest's sha256s),
    its labels checked against its class list, and its images must be side x side unless
    `resize` (then resized, decoding straight to the side where the reader can); an ImageDataset
    passed in code (or any object with its fields) is label-checked and used at its size.
    `what` names the expectation in the size error, e.g. "the fast preset (model fast)".
    side None: any size. workers: decoding processes (None: the reader's default)."""
    if not isinstance(source, str | os.PathLike):
        check_labels(source, getattr(source, "source", None) or "the data set passed in")
        return source
    try:
        dataset = load(
            source, resize=resize, side=side if resize else None, verify=True, workers=workers
        )
    except OSError as e:  # a file the readers did not expect to fail, e.g. a broken link
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DataError(
            f"{e.filename or source}: cannot read it ({e.strerror or e}); fix the file "
            "or remove it from the data set"
        ) from e
    where = dataset.source or str(source)
    check_labels(dataset, where)
    return sized(dataset, side, resize, what, where)
