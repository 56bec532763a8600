"""What a run tells its user: the per-epoch table on stdout and metrics.jsonl on disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = [
    ("epoch", "{:>5}", "{:>5d}"),
    ("lr", "{:>8}", "{:>8.4f}"),
    ("train_loss", "{:>10}", "{:>10.4f}"),
    ("train_acc", "{:>9}", "{:>9.4f}"),
    ("val_loss", "{:>8}", "{:>8.4f}"),
    ("val_acc", "{:>7}", "{:>7.4f}"),
    ("epoch_s", "{:>7}", "{:>7.1f}"),
    ("elapsed_s", "{:>9}", "{:>9.1f}"),
]


def header() -> str:
    return "  ".join(head.format(name) for name, head, _ in COLUMNS)


def row(metrics: dict[str, Any]) -> str:
    cells = []
    for name, head, cell in COLUMNS:
        value = metrics.get(name)
        cells.append(head.format("-") if value is None else cell.format(value))
    return "  ".join(cells)


class MetricsLog:
    """Appends one JSON object per epoch and prints the table row (unless quiet)."""

    def __init__(self, path: Path | None, quiet: bool = False, stream=None):
        self.path, self.quiet, self.stream = path, quiet, stream or sys.stdout
        self._printed_header = False

    def write(self, metrics: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if not self.quiet:
            if not self._printed_header:
                print(header(), file=self.stream)
                self._printed_header = True
            print(row(metrics), file=self.stream, flush=True)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
