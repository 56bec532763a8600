"""RUN/report.html: one self-contained page per run; TensorBoard scalars for those who want them.

The page holds config, hardware, timings, the metrics table, the curves, the confusion matrix,
a grid of test predictions, calibration, the most-confused pairs, the most confident mistakes,
the model (sanity check, layer table, FLOPs) and its first layer's filters. Figures are inlined as base64 PNG data URIs and the style sheet
is inline: the file can be mailed or archived alone and opens offline.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from dawntrain.analysis.plot_model import model_report
from dawntrain.analysis.plot_predictions import report_figures
from dawntrain.analysis.plot_runs import (
    figure_rates,
    figure_steps,
    figure_time,
    load_run,
    run_steps,
)
from dawntrain.analysis.plots import (
    figure_confusion,
    figure_curves,
    figure_grid,
    png_bytes,
)
from dawntrain.errors import ConfigError, DataError, DawntrainError
from dawntrain.files import atomic_write
from dawntrain.train.log import read_metrics

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 8px 0; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { color: #a33; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        # Rates such as fast's 8.5e-4 keep their digits; 4 decimals would show 0.0008 or 0.0000.
        return f"{value:.4f}" if value == 0 or 1e-2 <= abs(value) < 1e4 else f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c, ''))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _pairs(d: dict[str, Any]) -> str:
    return _table([{"key": k, "value": v} for k, v in d.items()], ["key", "value"])


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def timings(summary: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall-clock totals from summary.json and per-epoch figures from metrics.jsonl."""
    out = {k: summary[k] for k in ("wall_s", "data_s", "train_wall_s") if k in summary}
    epoch_s = [m["epoch_s"] for m in metrics if "epoch_s" in m]
    train_s = [m["train_s"] for m in metrics if "train_s" in m]
    if epoch_s:
        out["epochs run"] = len(epoch_s)
        out["mean epoch_s"] = sum(epoch_s) / len(epoch_s)
    if train_s and summary.get("train_images"):
        # Training steps only (no evaluation): the throughput the engine reached.
        out["train images/s"] = round(summary["train_images"] * len(train_s) / sum(train_s), 1)
    return out


def training_pictures(run_dir: Path) -> list[str]:
    """Accuracy against time (metrics.jsonl), the loss per step and the rates per parameter
    group (steps.jsonl): each a heading, a one-line caption and the picture, or a note saying
    what is missing."""
    run = load_run(run_dir, metrics=False)
    parts = ["<h2>Accuracy against time</h2>"]
    try:
        picture = _img(png_bytes(figure_time([run])), "accuracy against time")
    except DataError as e:
        parts.append(_note(str(e) if run.metrics else "no epoch finished yet"))
    else:
        parts += [
            "<p>Validation accuracy after each validated epoch against the run's cumulative "
            "training time (validation included, data loading not); the star is the final test "
            "accuracy, the diamond with test-time augmentation.</p>",
            picture,
        ]
    try:
        run.steps = run_steps(run_dir)
    except DataError as e:
        return parts + [
            "<h2>Training loss per step</h2>",
            _note(str(e)),
            "<h2>Learning rates per group</h2>",
            _note("no steps.jsonl: the rates per step are recorded with the loss (see above)"),
        ]
    return parts + [
        "<h2>Training loss per step</h2>",
        "<p>The training loss at each recorded step (the mean over the steps since the record "
        "before it); over many records, light, with their moving mean in bold. Dotted lines "
        "separate the epochs.</p>",
        _img(png_bytes(figure_steps([run])), "training loss per step"),
        "<h2>Learning rates per group</h2>",
        "<p>The learning rate each parameter group's update used at each recorded step, as the "
        "optimizer held it; groups whose rates are the same all along share a line.</p>",
        _img(png_bytes(figure_rates(run)), "learning rates per group"),
    ]


def figure_predictions(predictions: dict[str, np.ndarray]):
    """Right (green) and wrong (red) test images: predicted class, its probability, truth."""
    # Tiny ImageNet's class names run long ("goldfish, Carassius auratus"): keep the head.
    names = [str(c).split(",")[0][:20] for c in predictions["class_names"]]
    index = predictions["grid_index"]
    pred, true = predictions["predictions"][index], predictions["labels"][index]
    conf = predictions["confidence"][index]
    titles = [
        f"{names[p]} {c:.2f}" + ("" if p == t else f"\n(true: {names[t]})")
        for p, t, c in zip(pred, true, conf)
    ]
    colors = ["tab:green" if p == t else "tab:red" for p, t in zip(pred, true)]
    return figure_grid(predictions["grid_images"], titles, colors)


def _figure(heading: str, caption: str, fig) -> list[str]:
    return [
        f"<h2>{html.escape(heading)}</h2>",
        f"<p>{html.escape(caption)}</p>",
        _img(png_bytes(fig), heading),
    ]


def predictions_sections(
    run_dir: Path, data=None, device: str = "auto", probabilities=None
) -> list[str]:
    """Confusion matrix, a grid of predictions, calibration, confused pairs and the most
    confident mistakes of last.pt on the test set (`probabilities`: infer.run_predictions');
    a note where there are no predictions."""
    from dawntrain.infer.predict import run_predictions

    parts = ["<h2>Test set: confusion matrix and predictions</h2>"]
    try:
        predictions = run_predictions(run_dir, data, device, probabilities)
    except DawntrainError as e:
        return parts + [_note(f"no test predictions: {e}")]
    parts += [
        f"<p>test set: {html.escape(str(predictions['source']))}</p>",
        _img(png_bytes(figure_confusion(predictions)), "confusion matrix"),
        "<p>Random right (green) and wrong (red) test images: predicted class and its "
        "probability; under a wrong one, the true class.</p>",
        _img(png_bytes(figure_predictions(predictions)), "test predictions"),
    ]
    for heading, caption, fig in report_figures(predictions):
        parts += _figure(heading, caption, fig)
    return parts


def model_sections(run_dir: Path, device: str = "auto") -> list[str]:
    """The Model section (the untrained model's sanity check, the layer table, FLOPs) and the
    first layer's filters; a note where last.pt cannot be read."""
    parts = ["<h2>Model</h2>"]
    try:
        model = model_report(run_dir, device)
    except DawntrainError as e:
        return parts + [_note(f"no model: {e}")]
    check = model["sanity_check"]
    if check is None:
        parts.append(_note("sanity check: not recorded (no sanity_check.json in the run)"))
    else:
        line = html.escape(check["message"])
        parts.append(
            f'<p class="note">{line}</p>' if check["far_from_chance"] else f"<p>{line}</p>"
        )
    parts += [
        "<p>Forward FLOPs per image (a multiply-add counts 2; analysis/flop_count.py):</p>",
        _pairs(model["flops"]),
        "<p>Layers in call order: output shape per image, parameters, FLOPs of convolutions "
        "and linear layers.</p>",
        f"<pre>{html.escape(model['summary'])}</pre>",
    ]
    return parts + _figure(model["filters_heading"], model["filters_caption"], model["filters"])


def render_report(run_dir: Path, data=None, device: str = "auto", probabilities=None) -> str:
    """The report page of a run directory, as HTML text; `probabilities`: last.pt's on the test
    set, where the caller has them (fit's final pass), so they are not computed again."""
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.toml", run_dir / "metrics.jsonl"
    summary_path = run_dir / "summary.json"
    if not config_path.is_file():
        raise DataError(f"{config_path} does not exist; pass a run directory")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else []
    final = summary.get("final", {})
    headline = ", ".join(
        f"{k} {final[k]:.4f}" for k in ("test_acc", "test_acc_tta", "val_acc") if k in final
    )
    parts = [
        f"<h1>{html.escape(run_dir.name)}</h1>",
        f"<p>{html.escape(headline or 'no final metrics yet (summary.json is missing)')}</p>",
        "<h2>Final metrics</h2>",
        _pairs(final) if final else _note("the run has not finished: no summary.json"),
        "<h2>Timings (seconds)</h2>",
        _pairs(timings(summary, metrics)) if summary or metrics else _note("no timings yet"),
        "<h2>Hardware and software</h2>",
        _pairs(summary["environment"]) if "environment" in summary else _note("not recorded"),
        "<h2>Training curves</h2>",
    ]
    if metrics:
        parts.append(_img(png_bytes(figure_curves(metrics)), "training curves"))
    else:
        parts.append(_note("no epoch finished yet"))
    parts += training_pictures(run_dir)
    parts += predictions_sections(run_dir, data, device, probabilities)
    parts += model_sections(run_dir, device)
    parts += [
        "<h2>Metrics per epoch</h2>",
        _table(metrics) if metrics else _note("no epoch finished yet"),
        "<h2>Config</h2>",
        f"<pre>{html.escape(config_path.read_text())}</pre>",
    ]
    title = html.escape(f"dawntrain report: {run_dir.name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_report(run_dir: Path, data=None, device: str = "auto", probabilities=None) -> Path:
    """Write RUN/report.html (evaluating last.pt on the test set unless predictions.npz or
    `probabilities` have it).

    `data`: the run's data set object or a source; None loads the run's own source."""
    out = Path(run_dir) / "report.html"
    atomic_write(out, render_report(run_dir, data, device, probabilities).encode("utf-8"))
    return out


class TensorBoardLogger:
    """Epoch metrics as TensorBoard scalars in RUN/tensorboard (`tensorboard --logdir RUN`).

    train_loss and val_loss become loss/train and loss/val, so TensorBoard groups them in one
    section; timings go under time/."""

    def __init__(self, run_dir: Path, config=None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the separate tensorboard package
            raise ConfigError(
                "tensorboard = true needs the tensorboard package: pip install tensorboard "
                "(or set tensorboard=false)"
            ) from e
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if config is not None:
            # TensorBoard renders text as Markdown: indent to keep the TOML verbatim.
            toml = config.to_toml() if hasattr(config, "to_toml") else str(config)
            self.writer.add_text("config", "\n".join("    " + ln for ln in toml.splitlines()))

    @staticmethod
    def tag(key: str) -> str:
        split, _, what = key.partition("_")
        if split in ("train", "val", "test") and what.split("_")[0] in ("loss", "acc"):
            return f"{what}/{split}"
        return f"time/{key}" if key.endswith("_s") else key

    def log(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(self.tag(key), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
