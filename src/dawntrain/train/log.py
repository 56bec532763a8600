"""What a run tells its user: the per-epoch table on stdout and metrics.jsonl on disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (metric, header, cell format). Rates keep 3 significant digits: fast's lr peaks at 8.5e-4.
# `lr` is the schedule's value in the run's convention; step_lr, muon_lr and bias_lr are what
# the optimizer's groups stepped with last (train/callbacks.py optimizer_rates).
COLUMNS = [
    ("epoch", "{:>5}", "{:>5d}"),
    ("train_side", "{:>4}", "{:>4d}"),
    ("lr", "{:>8}", "{:>8.3g}"),
    ("step_lr", "{:>8}", "{:>8.3g}"),
    ("muon_lr", "{:>8}", "{:>8.3g}"),
    ("bias_lr", "{:>8}", "{:>8.3g}"),
    ("train_loss", "{:>10}", "{:>10.4f}"),
    ("train_acc", "{:>9}", "{:>9.4f}"),
    ("val_loss", "{:>8}", "{:>8.4f}"),
    ("val_acc", "{:>7}", "{:>7.4f}"),
    ("ema_val_loss", "{:>12}", "{:>12.4f}"),
    ("ema_val_acc", "{:>11}", "{:>11.4f}"),
    ("images_per_s", "{:>6}", "{:>6.0f}"),
    ("epoch_s", "{:>7}", "{:>7.1f}"),
    ("elapsed_s", "{:>9}", "{:>9.1f}"),
]
HEADERS = {"images_per_s": "img/s", "train_side": "side"}
# Shown only where the run has them (a Muon run, a separate BatchNorm lr, the rates measured,
# progressive resizing's image side).
OPTIONAL = {"step_lr", "muon_lr", "bias_lr", "images_per_s", "train_side"}
# Shown where the run has them (an EMA of the weights), measured in this row or not ("-").
WHERE_PRESENT = {"ema_val_loss", "ema_val_acc"}


def columns_for(metrics: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    hidden = OPTIONAL | WHERE_PRESENT
    if metrics is None:
        return [c for c in COLUMNS if c[0] not in hidden]
    return [
        c
        for c in COLUMNS
        if c[0] not in hidden
        or metrics.get(c[0]) is not None
        or (c[0] in WHERE_PRESENT and c[0] in metrics)
    ]


def header(metrics: dict[str, Any] | None = None) -> str:
    return "  ".join(h.format(HEADERS.get(n, n)) for n, h, _ in columns_for(metrics))


def row(metrics: dict[str, Any], columns: list[tuple[str, str, str]] | None = None) -> str:
    cells = []
    for name, head, cell in columns or columns_for(metrics):
        value = metrics.get(name)
        cells.append(head.format("-") if value is None else cell.format(value))
    return "  ".join(cells)


class MetricsLog:
    """Appends one JSON object per epoch and prints the table row (unless quiet)."""

    def __init__(self, path: Path | None, quiet: bool = False, stream=None):
        self.path, self.quiet, self.stream = path, quiet, stream or sys.stdout
        self._columns = None

    def write(self, metrics: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if not self.quiet:
            if self._columns is None:
                self._columns = columns_for(metrics)
                print(header(metrics), file=self.stream)
            print(row(metrics, self._columns), file=self.stream, flush=True)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ConsoleLog:
    """A text stream that writes to `stream` and appends every line to `path` too (RUN/console.log:
    the data summary, the sanity check and the table, kept beside the run). The file is opened at
    the first write, so a process that prints nothing leaves none."""

    def __init__(self, stream, path: Path):
        self.stream, self.path, self._file = stream, Path(path), None

    def write(self, text: str) -> int:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 (closed by close())
        self._file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
