"""Charts of the benchmark JSON files that `dawntrain bench ...` writes (benchmarks/results/).

The kind of a file is read from its content (bench/*.py write them): throughput (images/s per
variant), ablation (accuracy per row), accuracy (per-seed results), conv (library against
matmul convolution times), data (conversion and decoding rates), profile (a step's
operator time by kind and phase) and tta (accuracy and test-time views per image against the
tta_below threshold). Every file but an accuracy
one gets a panel of its own; accuracy files share one panel, a column each, so that runs of
different presets or dates compare.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from dawntrain.analysis.plots import save
from dawntrain.errors import DataError

KINDS = ("throughput", "ablation", "accuracy", "conv", "data", "profile", "tta")
PHASE_COLORS = {
    "forward": "tab:blue", "backward": "tab:orange", "optimizer": "tab:green",
    "batching and augmentation": "tab:purple", "other": "tab:gray",
}  # fmt: skip
PRECISION_COLORS = {"fp32": "tab:blue", "bf16": "tab:orange", "fp16": "tab:purple"}
PLAIN, TTA = "tab:blue", "tab:orange"


def bench_kind(result: Any) -> str | None:
    """Which benchmark wrote `result` (one of KINDS), or None."""
    if not isinstance(result, dict):
        return None
    if isinstance(result.get("datasets"), dict):
        return "data"
    if isinstance(result.get("results"), list) and "test_acc" in result:
        return "accuracy"
    parts = result.get("parts")
    if isinstance(parts, list) and parts and isinstance(parts[0], dict) and "phase" in parts[0]:
        return "profile"
    rows = result.get("rows")
    if not isinstance(rows, list):
        return None
    first = rows[0] if rows and isinstance(rows[0], dict) else {}
    if "images_per_s" in first or (not rows and "peak_gflops" in result):
        return "throughput"
    if "library_ms" in first:
        return "conv"
    if "changes" in first or (not rows and "runs" in result):
        return "ablation"
    if "tta_below" in first:
        return "tta"
    return None


def load_bench(path: Path) -> tuple[str, dict[str, Any]]:
    """(kind, the parsed result) of a benchmark JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass benchmark JSON files (benchmarks/results/)")
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not JSON ({e}); pass a file `dawntrain bench` wrote") from e
    kind = bench_kind(result)
    if kind is None:
        raise DataError(
            f"{path} is no benchmark result this chart knows; supported kinds: "
            f"{', '.join(KINDS)} (the JSON of `dawntrain bench throughput|ablation|accuracy|"
            "conv|data|profile|tta`)"
        )
    return kind, result


def _label(path: Path, kind: str) -> str:
    """The file's name without its kind prefix: accuracy-fast-20261201-193504 → fast
    20261201-193504."""
    stem = Path(path).stem
    return stem[len(kind) + 1 :] if stem.startswith(kind + "-") else stem


# ------------------------------------------------------------------------------------ panels


def _legend_below(ax: Axes, columns: int = 3, gap: float = 40) -> None:
    # Under the axes, never on the data (a bar's end, a point in a corner), and a fixed
    # distance below, clear of the tick labels and the x label however short the axes are.
    below = offset_copy(ax.transAxes, fig=ax.figure, y=-gap, units="points")
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=columns,
        fontsize=8,
    )  # fmt: skip


def _no_rows(ax: Axes, what: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, f"{what}: no rows", ha="center", va="center", transform=ax.transAxes)


def draw_throughput(ax: Axes, result: dict[str, Any], label: str) -> None:
    """Bars of images/s per variant, coloured by precision, each with its ratio to the first
    (reference) row."""
    rows = result["rows"]
    title = f"throughput: {result.get('preset', '?')}, batch {result.get('batch_size')}"
    if not rows:
        return _no_rows(ax, title)
    ips = [r["images_per_s"] for r in rows]
    colors = [PRECISION_COLORS.get(r.get("precision"), "tab:gray") for r in rows]
    ax.barh(range(len(rows)), ips, color=colors)
    # The precision in the row's name, not a legend: a legend would cover some bar's label.
    ax.set_yticks(range(len(rows)), [f"{r['name']} · {r.get('precision', '?')}" for r in rows])
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        ratio = r.get("ratio", r["images_per_s"] / ips[0])
        ax.text(r["images_per_s"], i, f" {r['images_per_s']:.0f}  ×{ratio:.2f}", va="center")
    ax.set_xlim(0, max(ips) * 1.3)
    ax.set_xlabel("training images/s (× the reference row, the first)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(f"{title}\n{result.get('device', '')}, torch {result.get('torch', '?')}; {label}")


def _per_seed(row: dict[str, Any], key: str) -> list[float]:
    return [r[key] for r in row.get("results", []) if r.get(key) is not None]


def draw_ablation(ax: Axes, result: dict[str, Any], label: str) -> None:
    """Test accuracy per row, without and with TTA: the mean over seeds, with ±1 standard
    deviation bars where a row ran more than one seed; the preset row as dashed lines."""
    rows = result["rows"]
    runs = result.get("runs", "?")
    title = f"ablation: {result.get('preset', '?')}, {runs} run(s) per row; {label}"
    if not rows:
        return _no_rows(ax, title)
    y = np.arange(len(rows))
    for key, color, offset, what in (
        ("test_acc", PLAIN, -0.12, "test acc"),
        ("test_acc_tta", TTA, 0.12, "with TTA"),
    ):
        means = [r.get(key) for r in rows]
        spread = [statistics.stdev(s) if len(s := _per_seed(r, key)) > 1 else 0.0 for r in rows]
        has = [i for i, m in enumerate(means) if m is not None]
        ax.errorbar(
            [means[i] for i in has], y[has] + offset, xerr=[spread[i] for i in has], fmt="o",
            color=color, capsize=3, label=what,
        )  # fmt: skip
        base = next((r.get(key) for r in rows if r["name"] == "preset"), None)
        if base is not None:
            ax.axvline(base, color=color, ls="--", lw=1)
    ax.set_yticks(y, [r["name"] for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top, each row one unit high
    ax.set_xlabel("test accuracy (mean over seeds; bars ±1 std where seeds > 1)")
    _legend_below(ax)
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(
        title + ("; dashed: the preset row" if any(r["name"] == "preset" for r in rows) else "")
    )


def _column(result: dict[str, Any], label: str) -> str:
    """An accuracy file's column: preset, then the rest of its name (the date), then seeds."""
    preset = str(result.get("preset", ""))
    rest = label[len(preset) + 1 :] if preset and label.startswith(preset + "-") else label
    return f"{preset or '?'}\n{rest}\n{len(result['results'])} seed(s)"


def draw_accuracy(ax: Axes, results: list[tuple[dict[str, Any], str]]) -> None:
    """One column per file: each seed's test accuracy (and with TTA), the mean as a bar."""
    for x, (result, _) in enumerate(results):
        for key, color, offset in (("test_acc", PLAIN, -0.12), ("test_acc_tta", TTA, 0.12)):
            values = [r[key] for r in result["results"] if r.get(key) is not None]
            if not values:
                continue
            ax.plot([x + offset] * len(values), values, "o", color=color, alpha=0.7, ms=5)
            mean = float(np.mean(values))
            ax.plot([x + offset - 0.1, x + offset + 0.1], [mean, mean], color=color, lw=2.5)
            ax.text(x + offset + 0.11, mean, f"{mean:.4f}", va="center", fontsize=7)
    ax.plot([], [], "o", color=PLAIN, label="test acc (a seed)")
    ax.plot([], [], "o", color=TTA, label="with TTA (a seed)")
    ax.plot([], [], "-", color="black", lw=2.5, label="mean over seeds")
    targets = {r.get("target") for r, _ in results} - {None}
    for target in targets:
        ax.axhline(target, color="gray", ls=":", lw=1)
    ax.set_xticks(range(len(results)), [_column(r, label) for r, label in results], fontsize=8)
    ax.set_xlim(-0.6, len(results) - 0.3)
    ax.set_ylabel("test accuracy")
    _legend_below(ax, gap=50)  # below three lines of tick labels
    ax.grid(alpha=0.3, axis="y")
    dotted = "; dotted: the target" + ("s" if len(targets) > 1 else "") if targets else ""
    ax.set_title("accuracy runs" + dotted)


def _conv_label(row: dict[str, Any]) -> str:
    c_in, c_out = row["channels"], row.get("c_out", row["channels"])
    channels = f"c{c_in}" if c_in == c_out else f"c{c_in}>{c_out}"
    layer = f"{row['layer']} " if row.get("layer") else ""
    return f"{layer}b{row['batch']} {channels} {row['side']}x{row['side']}"


def draw_conv(ax: Axes, result: dict[str, Any], label: str) -> None:
    """Time per shape of the library convolution and the matmul form, with the speed-up."""
    rows = result["rows"]
    title = (
        f"conv: the library's against the matmul form\n{result.get('device', '')}, "
        f"{result.get('precision', '')}; {label}"
    )
    if not rows:
        return _no_rows(ax, title)
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["library_ms"] for r in rows], height=0.4, label="library conv")
    ax.barh(y + 0.2, [r["matmul_ms"] for r in rows], height=0.4, label="matmul form")
    for i, r in enumerate(rows):
        ax.text(max(r["library_ms"], r["matmul_ms"]), i, f" ×{r['speedup']:.2f}", va="center")
    ax.set_yticks(y, [_conv_label(r) for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(r["library_ms"], r["matmul_ms"]) for r in rows) * 1.25)
    ax.set_xlabel("ms per forward + backward (×: library time / matmul time)")
    _legend_below(ax)
    ax.set_title(title)


DATA_RATES = (
    ("convert_img_per_s", "convert to records"),
    ("read_verify_rec_per_s", "read + verify records"),
    ("records_decode_img_per_s", "decode records"),
    ("folder_decode_img_per_s", "decode the image folder"),
)


def draw_data(ax: Axes, result: dict[str, Any], label: str) -> None:
    """Per data set, images (records) per second of each stage, on a log axis."""
    sets = list(result["datasets"].items())
    machine = result.get("machine", {})
    title = f"data: {machine.get('cpu', '')}, {result.get('workers', '?')} workers; {label}"
    if not sets:
        return _no_rows(ax, title)
    height = 0.8 / len(sets)
    for j, (name, d) in enumerate(sets):
        rates = [d.get(key) or 0 for key, _ in DATA_RATES]
        y = np.arange(len(DATA_RATES)) + (j - (len(sets) - 1) / 2) * height
        ax.barh(y, rates, height=height, label=f"{name} ({d.get('images', '?')} images)")
        for yi, rate in zip(y, rates):
            ax.text(rate, yi, f" {rate:,.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(DATA_RATES)), [what for _, what in DATA_RATES])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(d.get(k) or 1 for _, d in sets for k, _ in DATA_RATES) * 4)
    ax.set_xlabel("images (records) per second, log scale")
    _legend_below(ax)
    ax.set_title(title)


def draw_profile(ax: Axes, result: dict[str, Any], label: str) -> None:
    """ms per step of each kind of operator, a bar each, split by the phase it ran in."""
    by_kind: dict[str, dict[str, float]] = {}
    for r in result["parts"]:
        by_kind.setdefault(r["kind"], {})[r["phase"]] = r["ms_per_step"]
    kinds = sorted(by_kind, key=lambda k: -sum(by_kind[k].values()))
    phases = [p for p in PHASE_COLORS if any(p in by_kind[k] for k in kinds)]
    left = np.zeros(len(kinds))
    for phase in phases:
        ms = np.array([by_kind[k].get(phase, 0.0) for k in kinds])
        ax.barh(range(len(kinds)), ms, left=left, color=PHASE_COLORS[phase], label=phase)
        left += ms
    step = result["ms_per_step"]
    for i, total in enumerate(left):
        ax.text(total, i, f" {total:.0f} ms ({total / step:.0%})", va="center", fontsize=8)
    ax.set_yticks(range(len(kinds)), kinds)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.35)
    ax.set_xlabel(f"ms of operator time per step (the step: {step:.0f} ms)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(
        f"profile: {result.get('preset', '?')}, batch {result.get('batch_size')}, "
        f"{result.get('precision', '?')}\n{result.get('device', '')}\n{label}",
        fontsize=10,
    )
    _legend_below(ax)


def draw_tta(ax: Axes, result: dict[str, Any], label: str) -> None:
    """Accuracy against tta_below, beside plain and full TTA's, with the views each costs."""
    rows = result["rows"]
    title = f"tta: {result.get('checkpoint', '')}, level {result.get('tta_level', '?')}; {label}"
    if not rows:
        return _no_rows(ax, title)
    below = [r["tta_below"] for r in rows]
    ax.plot(below, [100 * r["acc"] for r in rows], "o-", color=TTA, label="tta_below = x")
    for key, name, color in (("plain_acc", "plain", PLAIN), ("tta_acc", "TTA on every image", "k")):
        if result.get(key) is not None:
            ax.axhline(100 * result[key], color=color, ls=":", label=name)
    for r in rows:
        ax.annotate(
            f"{r['views_per_image']:.2f}", (r["tta_below"], 100 * r["acc"]),
            textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7,
        )  # fmt: skip
    ax.set_xlabel("tta_below (labels: forward passes per test image)")
    ax.set_ylabel("test accuracy, %")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    ax.set_title(title)


DRAW: dict[str, Callable[[Axes, dict[str, Any], str], None]] = {
    "throughput": draw_throughput,
    "ablation": draw_ablation,
    "conv": draw_conv,
    "data": draw_data,
    "profile": draw_profile,
    "tta": draw_tta,
}


def _height(kind: str, result: dict[str, Any]) -> float:
    if kind == "profile":
        return 1.6 + 0.42 * len({r["kind"] for r in result.get("parts") or []})
    if kind == "tta":
        return 4.5
    if kind == "data":
        rows = len(DATA_RATES) * len(result.get("datasets") or {})
    else:
        rows = len(result.get("rows") or [])
    return 1.6 + 0.42 * max(rows, 3)


def figure_bench(files: list[tuple[Path, str, dict[str, Any]]]) -> Figure:
    """One panel per (path, kind, result); accuracy results share one panel."""
    accuracy = [(r, _label(p, k)) for p, k, r in files if k == "accuracy"]
    panels: list[tuple[float, str, Callable[[Axes], None]]] = []
    for path, kind, result in files:
        if kind != "accuracy":
            label = _label(path, kind)
            draw = lambda ax, k=kind, r=result, l=label: DRAW[k](ax, r, l)  # noqa: E731
            panels.append((_height(kind, result), str(path), draw))
    if accuracy:
        names = ", ".join(str(p) for p, k, _ in files if k == "accuracy")
        panels.append((4.5, names, lambda ax: draw_accuracy(ax, accuracy)))
    columns = 1 if len(panels) == 1 else 2
    rows = -(-len(panels) // columns)
    height = max(h for h, _, _ in panels)
    fig = Figure(figsize=(7.5 * columns, height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, (_, name, draw) in zip(axes, panels):
        try:
            draw(ax)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise DataError(
                f"{name} lacks a field its chart needs ({type(e).__name__}: {e}); chart files "
                "that `dawntrain bench` wrote"
            ) from e
    for ax in axes[len(panels) :]:
        ax.axis("off")
    return fig


def plot_bench(paths: list[Path], out: Path | None = None) -> Path:
    """Chart benchmark JSON files; default output: the first file with .png for .json."""
    if not paths:
        raise DataError("plot bench: pass at least one benchmark JSON file")
    files = [(Path(p), *load_bench(Path(p))) for p in paths]
    return save(figure_bench(files), out or files[0][0].with_suffix(".png"))
