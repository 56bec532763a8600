"""What every reader's `read(source, options)` is asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReadOptions:
    progress: bool = True  # progress bars (on a terminal) and download notes
    side: int | None = None  # decode straight to side x side where the reader can (with resize)
    resize: bool = False  # resize images of another size (bilinear) instead of refusing them
    verify: bool = False  # check record shards against their manifest's sha256s first
    workers: int | None = None  # decoding processes (None: the reader's default)
    cache_dir: Path | None = None  # where arrays are cached and archives looked for

    def cache(self) -> Path | None:
        return Path(self.cache_dir) if self.cache_dir is not None else None


DEFAULTS = ReadOptions()
