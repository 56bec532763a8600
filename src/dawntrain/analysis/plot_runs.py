"""Figures of runs, one or several side by side: accuracy against training time, the curves of
several runs (seeds) with their mean, the training loss per step and the rate each parameter
group stepped with (the last two from RUN/steps.jsonl: train/step_records.py).

As in plots.py, each `figure_*` builds a matplotlib Figure from plain records (no pyplot), and
each `plot_*` reads run directories and saves one PNG, by default into the (first) run's directory.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dawntrain.analysis import plots
from dawntrain.analysis.plots import run_metrics, save
from dawntrain.config import load_toml
from dawntrain.errors import DataError
from dawntrain.train.step_records import FILE as STEPS_FILE
from dawntrain.train.step_records import read_steps

# Parameter groups (engine/optim.py) as a reader calls them.
GROUP_NAMES = {
    "weights": "weights",
    "norm": "BatchNorm",
    "whiten_bias": "whitening bias",
    "filters": "conv filters",
}


@dataclass
class RunData:
    """What the figures read of a run directory: its label, metrics.jsonl's epochs, summary.json's
    final metrics, steps.jsonl's records (None: the run wrote none) and config.toml's values."""

    label: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] | None = None
    config: dict[str, Any] = field(default_factory=dict)


def run_steps(run_dir: Path) -> list[dict[str, Any]]:
    """RUN/steps.jsonl's records; DataError, saying how to get them, where there are none."""
    path = Path(run_dir) / STEPS_FILE
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: steps.jsonl (the loss and each parameter group's lr every "
            "loss_every_steps steps, 5 by default) is written by runs trained since that option "
            "came, unless it is 0; train with --set loss_every_steps=N (N > 0) to record them"
        )
    records = read_steps(path)
    if not records:
        raise DataError(f"{path} is empty: the run stopped before its first recorded step")
    return records


def load_run(
    run_dir: Path, label: str | None = None, metrics: bool = True, steps: bool = False
) -> RunData:
    """A run directory's records; `metrics`, `steps`: required (DataError where missing), else
    read where there are some."""
    run_dir = Path(run_dir)
    summary, config = run_dir / "summary.json", run_dir / "config.toml"
    return RunData(
        label=label or run_dir.resolve().name,
        metrics=run_metrics(run_dir) if metrics else where_present(run_metrics, run_dir) or [],
        final=json.loads(summary.read_text()).get("final", {}) if summary.is_file() else {},
        steps=run_steps(run_dir) if steps else where_present(run_steps, run_dir),
        config=load_toml(config) if config.is_file() else {},
    )


def where_present(read, run_dir: Path):
    """read(run_dir), or None where the run has no such records."""
    try:
        return read(run_dir)
    except DataError:
        return None


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name; a name that two runs share gets its parent's name in front."""
    paths = [Path(d).resolve() for d in run_dirs]
    counts = Counter(p.name for p in paths)
    return [f"{p.parent.name}/{p.name}" if counts[p.name] > 1 else p.name for p in paths]


def load_runs(run_dirs: list[Path], metrics: bool = True, steps: bool = False) -> list[RunData]:
    return [load_run(d, label, metrics, steps) for d, label in zip(run_dirs, run_labels(run_dirs))]


def color(i: int) -> str:
    return f"C{i % 10}"


def series(metrics: list[dict[str, Any]], key: str, x: list | None = None) -> tuple[list, list]:
    """(x, value) of the epochs that have `key`; x: the epoch, or the given x of each epoch."""
    x = [m["epoch"] for m in metrics] if x is None else list(x)
    pairs = [(t, m[key]) for t, m in zip(x, metrics) if m.get(key) is not None]
    return [t for t, _ in pairs], [v for _, v in pairs]


# ------------------------------------------------------------------------ accuracy and time


def seconds_at_epochs(run: RunData) -> np.ndarray:
    """The run's training time at each epoch's end, validation included and data loading not:
    metrics.jsonl's elapsed_s (summed over resumes), else the running sum of epoch_s."""
    for key, cumulative in (("elapsed_s", True), ("epoch_s", False)):
        if run.metrics and all(m.get(key) is not None for m in run.metrics):
            values = np.array([m[key] for m in run.metrics], dtype=float)
            return values if cumulative else np.cumsum(values)
    raise DataError(
        f"{run.label}: metrics.jsonl has no elapsed_s or epoch_s in every epoch, so there is no "
        "time to plot against; a log written by `dawntrain train` has both"
    )


def figure_time(runs: list[RunData]) -> Figure:
    """Validation accuracy (and the EMA's) at each validated epoch against the run's cumulative
    training time, one colour a run; the final test accuracy (and with TTA) at the last epoch's
    time."""
    times = [seconds_at_epochs(run) for run in runs]
    minutes = max(t[-1] for t in times) > 600
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for i, (run, t) in enumerate(zip(runs, times)):
        t = t / 60 if minutes else t
        for key, style, what in (("val_acc", "o-", "val"), ("ema_val_acc", "s--", "EMA val")):
            x, acc = series(run.metrics, key, t)
            if acc:
                label = f"{run.label}: {what} (last {acc[-1]:.4f})"
                ax.plot(x, acc, style, ms=4, color=color(i), label=label)
        for key, marker, what in (("test_acc", "*", "test"), ("test_acc_tta", "D", "test, TTA")):
            if run.final.get(key) is not None:
                label = f"{run.label}: {what} {run.final[key]:.4f}"
                ax.plot([t[-1]], [run.final[key]], marker, ms=11 if marker == "*" else 7,
                        color=color(i), mec="black", mew=0.6, ls="none", label=label)  # fmt: skip
    ax.set_xlabel(
        f"training time, {'minutes' if minutes else 's'} (cumulative; validation included, "
        "data loading and the final test not)"
    )
    ax.set_ylabel("accuracy")
    ax.set_xlim(left=0)
    ax.set_title("accuracy against training time")
    ax.grid(alpha=0.3)
    if len(runs) == 1:
        ax.legend(fontsize=8, loc="best")
    else:  # beside the axes: several runs' entries would cover their lines
        fig.legend(fontsize=8, loc="outside right upper")
        fig.set_figwidth(fig.get_figwidth() + 3)
    return fig


def plot_time(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Accuracy against time of the runs, overlaid; default RUN/time.png (the first RUN)."""
    return save(figure_time(load_runs(run_dirs)), out or Path(run_dirs[0]) / "time.png")


# ----------------------------------------------------------------------- curves of runs


def preset_groups(runs: list[RunData]) -> dict[str, list[RunData]]:
    """Runs of one preset, where at least two share it (their mean is drawn)."""
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        if run.config.get("preset"):
            groups.setdefault(run.config["preset"], []).append(run)
    return {preset: group for preset, group in groups.items() if len(group) >= 2}


def mean_series(runs: list[RunData], key: str) -> tuple[list, list]:
    """The mean of `key` over the runs at the epochs every one of them has it."""
    by_run = [dict(zip(*series(run.metrics, key))) for run in runs]
    epochs = sorted(set.intersection(*(set(values) for values in by_run)))
    return epochs, [float(np.mean([values[e] for values in by_run])) for e in epochs]


def figure_curves_of_runs(runs: list[RunData]) -> Figure:
    """Loss, accuracy (train solid, val dashed) and lr per epoch, one colour a run, and the mean
    of the runs of each preset that two or more share (black, bold)."""
    groups = preset_groups(runs)
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    thin = 1.0 if groups else 1.5
    for i, run in enumerate(runs):
        for ax, what in zip(axes, ("loss", "acc")):
            for split, style in (("train", "-"), ("val", "--")):
                xs, ys = series(run.metrics, f"{split}_{what}")
                # A log with gaps (the original DavidNet's gives train acc at epochs 1 and 24
                # only) gets points: a line would draw values nobody measured.
                gaps = len(xs) > 1 and any(b - a > 1 for a, b in zip(xs, xs[1:]))
                ax.plot(xs, ys, "o" if gaps else style, ms=4, lw=thin, color=color(i))
        axes[2].plot(*series(run.metrics, "lr"), "-", lw=thin, color=color(i))
    means = ["black", "dimgray", "saddlebrown", "darkgreen"]
    for j, group in enumerate(groups.values()):
        for ax, what in zip(axes, ("loss", "acc")):
            for split, style in (("train", "-"), ("val", "--")):
                # Under the runs, so that runs close to their mean still show.
                mean = mean_series(group, f"{split}_{what}")
                ax.plot(*mean, style, lw=3, alpha=0.5, color=means[j % 4], zorder=1)
    for ax, title in zip(axes, ("loss", "accuracy", "lr (schedule value at the end of the epoch)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=color(i), lw=1.5, label=run.label) for i, run in enumerate(runs)
    ]
    handles += [
        Line2D(
            [], [], color=means[j % 4], lw=3, alpha=0.5, label=f"mean of {len(group)} {preset} runs"
        )
        for j, (preset, group) in enumerate(groups.items())
    ]
    handles += [
        Line2D([], [], color="gray", ls=s, label=n) for s, n in (("-", "train"), ("--", "val"))
    ]
    axes[1].legend(handles=handles, fontsize=8, loc="lower right")
    return fig


def plot_curves(run_dirs: list[Path], out: Path | None = None) -> Path:
    """One run: plots.plot_curves; several: overlaid, with the mean of each shared preset.
    Default RUN/curves.png (the first RUN)."""
    if len(run_dirs) == 1:
        return plots.plot_curves(run_dirs[0], out)
    return save(figure_curves_of_runs(load_runs(run_dirs)), out or Path(run_dirs[0]) / "curves.png")


# ---------------------------------------------------------------------- steps and rates


def epoch_ends(records: list[dict[str, Any]]) -> dict[int, int]:
    """Epoch → its last step: every epoch's last step is recorded (train/step_records.py)."""
    ends: dict[int, int] = {}
    for r in records:
        ends[r["epoch"]] = max(ends.get(r["epoch"], 0), r["step"])
    return ends


def mark_epochs(ax, records: list[dict[str, Any]]) -> None:
    """Dotted lines between epochs, and the epochs' numbers along the top."""
    ends = epoch_ends(records)
    # An epoch starts where the one before ended; the first recorded one, as long as it lasted.
    starts = {e: ends.get(e - 1, ends[e] * (e - 1) / e) for e in ends}
    for e in sorted(ends)[:-1]:
        ax.axvline(ends[e], color="gray", ls=":", lw=0.9)
    top = ax.secondary_xaxis("top")
    shown = sorted(ends)[:: max(1, len(ends) // 20)]  # at most about 20 numbers
    top.set_xticks([(starts[e] + ends[e]) / 2 for e in shown], [str(e) for e in shown])
    top.tick_params(length=0, labelsize=8)
    top.set_xlabel("epoch", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of the `window` values around each (fewer at the ends)."""
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones(len(values)), kernel, "same")


def record_spacing(records: list[dict[str, Any]]) -> int:
    steps = np.diff([r["step"] for r in records])
    return int(np.median(steps)) if len(steps) else 1


def figure_steps(runs: list[RunData]) -> Figure:
    """Training loss of each record (the mean since the previous record) against the step, light,
    with its moving mean, bold, one colour a run; epoch boundaries of the first run dotted."""
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax = fig.subplots()
    kept = [[r for r in run.steps if r.get("loss") is not None] for run in runs]  # None: skipped
    window = 2 * (max(len(k) for k in kept) // 50) + 1  # odd, so the mean is centred
    for i, (run, records) in enumerate(zip(runs, kept)):
        x, loss = np.array([r["step"] for r in records]), np.array([r["loss"] for r in records])
        if window > 1:
            ax.plot(x, loss, "-", lw=0.8, alpha=0.35, color=color(i))
        ax.plot(x, moving_mean(loss, window), "-", lw=1.8, color=color(i), label=run.label)
    mark_epochs(ax, runs[0].steps)
    every = record_spacing(runs[0].steps)
    what = f"the mean since the previous record, every {every} steps" if every > 1 else "every step"
    smooth = f"light: each record; bold: a moving mean of {window}" if window > 1 else ""
    title = f"training loss ({what}){'; ' + smooth if smooth else ''}"
    ax.set_title(f"{runs[0].label}: {title}" if len(runs) == 1 else title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss per example")
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_steps(run_dirs: list[Path], out: Path | None = None) -> Path:
    """The loss per step of the runs, overlaid; default RUN/steps.png (the first RUN)."""
    runs = load_runs(run_dirs, metrics=False, steps=True)
    return save(figure_steps(runs), out or Path(run_dirs[0]) / "steps.png")


def group_lines(run: RunData) -> dict[str, np.ndarray]:
    """Legend label → lr at each record, one line for groups whose rates are the same all along."""
    names = list(dict.fromkeys(name for r in run.steps for name in r["lr"]))
    rates = {n: np.array([r["lr"].get(n, np.nan) for r in run.steps], dtype=float) for n in names}
    muon = run.config.get("optimizer") == "muon"
    lines: dict[tuple, list[str]] = {}
    for name, values in rates.items():
        lines.setdefault(tuple(np.nan_to_num(values, nan=-1.0)), []).append(name)
    out = {}
    for same in lines.values():
        kind = "Muon" if muon and same == ["filters"] else "SGD"
        # Beside Muon's conv filters, `weights` holds the rest: the head, any other weights.
        named = [
            ("other weights" if muon and n == "weights" else GROUP_NAMES.get(n, n)) for n in same
        ]
        out[f"{', '.join(named)} ({kind})"] = rates[same[0]]
    return out


def figure_rates(run: RunData) -> Figure:
    """The lr each parameter group stepped with at each recorded step, as the optimizer held it;
    a log axis where the groups' rates differ by orders of magnitude (zeros then not drawn)."""
    x = np.array([r["step"] for r in run.steps])
    lines = group_lines(run)
    positive = np.concatenate([v[v > 0] for v in lines.values()])
    log = len(positive) > 0 and positive.max() / positive.min() > 30
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax = fig.subplots()
    for i, (label, values) in enumerate(lines.items()):
        moving = np.flatnonzero(values > 0)
        if len(moving) and moving[-1] + 1 < len(values):  # a group frozen from some step on
            label += f"; 0 from step {x[moving[-1] + 1]}"
        # A line style each: a group that shares another's rates for a while stays visible.
        ax.plot(x, np.where(values > 0, values, np.nan) if log else values, lw=1.6,
                ls=("-", "--", "-.", ":")[i % 4], color=color(i), label=label)  # fmt: skip
    if log:
        ax.set_yscale("log")
    mark_epochs(ax, run.steps)
    convention = run.config.get("convention", "")
    unit = {"original": " (original convention: lr / batch)", "per_example": " (per example)"}
    ax.set_ylabel(f"optimizer lr{unit.get(convention, '')}")
    ax.set_xlabel("step")
    ax.set_title(f"{run.label}: the lr each parameter group stepped with", fontsize=10)
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize=8)
    return fig


def plot_rates(run_dir: Path, out: Path | None = None) -> Path:
    """The rates of a run's parameter groups per step; default RUN/rates.png."""
    run = load_run(run_dir, metrics=False, steps=True)
    return save(figure_rates(run), out or Path(run_dir) / "rates.png")
