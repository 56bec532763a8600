"""Figures of a run's test-set predictions: calibration, the most-confused class pairs, and the
most confident mistakes.

Each `figure_*` takes `run_predictions`' arrays (RUN/predictions.npz) and returns a matplotlib
Figure (no pyplot); each `plot_*` evaluates or reads the cache and saves a PNG. `report_figures`
gives the report its sections from the same functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dawntrain.analysis.plots import confusion_matrix, figure_grid, save
from dawntrain.errors import ConfigError

# Guo et al. (2017), "On Calibration of Modern Neural Networks", report ECE over 15 bins.
ECE_BINS = 15
RIGHT, WRONG = "tab:green", "tab:red"


def short_names(class_names) -> list[str]:
    # Tiny ImageNet's class names run long ("goldfish, Carassius auratus"): keep the head.
    return [str(c).split(",")[0][:20] for c in class_names]


# ------------------------------------------------------------------------------ calibration


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Equal-width confidence bins (lo, hi], the first one closed at 0: edges, count, accuracy
    and mean confidence per bin (NaN where a bin is empty)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # side="left": a confidence equal to an edge belongs to the bin that edge closes.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, correct, minlength=bins) / count
        mean_confidence = np.bincount(which, confidence, minlength=bins) / count
    return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": mean_confidence}


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE = Σ_b (n_b / n) |accuracy_b − mean confidence_b| over equal-width bins."""
    b = calibration_bins(confidence, correct, bins)
    filled = b["count"] > 0
    gaps = np.abs(b["accuracy"][filled] - b["confidence"][filled])
    return float((b["count"][filled] * gaps).sum() / max(int(b["count"].sum()), 1))


def figure_calibration(predictions: dict[str, np.ndarray], title: str = "") -> Figure:
    """Left: the reliability diagram (accuracy per confidence bin against the diagonal, the
    count over each bar); right: the confidence histogram of right and wrong predictions."""
    confidence = np.asarray(predictions["confidence"], dtype=np.float64)
    correct = predictions["predictions"] == predictions["labels"]
    b = calibration_bins(confidence, correct)
    ece = expected_calibration_error(confidence, correct)
    edges, width = b["edges"], 1.0 / ECE_BINS
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    reliability, histogram = fig.subplots(1, 2)
    filled = b["count"] > 0
    reliability.bar(
        edges[:-1][filled], b["accuracy"][filled], width=width, align="edge",
        color="tab:blue", edgecolor="white", label="accuracy in the bin",
    )  # fmt: skip
    reliability.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    reliability.plot(
        b["confidence"][filled], b["accuracy"][filled], "o", ms=3, color="black",
        label="(mean confidence, accuracy)",
    )  # fmt: skip
    for lo, acc, n in zip(edges[:-1][filled], b["accuracy"][filled], b["count"][filled]):
        reliability.text(lo + width / 2, min(acc, 1.0) + 0.015, str(n), ha="center", fontsize=7)
    reliability.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence (top-class probability)")
    reliability.set_ylabel("accuracy")
    reliability.set_title(f"reliability: ECE {ece:.4f} ({ECE_BINS} bins; count above each bar)")
    reliability.legend(loc="upper left", fontsize=8)
    # The reliability diagram's bins ((lo, hi], not np.histogram's [lo, hi)), right and wrong
    # side by side (not stacked): both heights read off the axis directly.
    for kind, color, offset in ((True, RIGHT, 0.0), (False, WRONG, width / 2)):
        n = calibration_bins(confidence[correct == kind], correct[correct == kind])["count"]
        label = f"{'right' if kind else 'wrong'} ({n.sum()})"
        histogram.bar(
            edges[:-1] + offset, n, width=width / 2, align="edge", color=color, label=label
        )
    histogram.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="images")
    histogram.set_title("confidence of right and wrong predictions")
    histogram.legend(loc="best", fontsize=8)  # where it covers the fewest bars
    for ax in (reliability, histogram):
        ax.grid(alpha=0.3)
    tta = int(predictions["tta_level"])
    fig.suptitle(
        (title + ": " if title else "")
        + f"calibration on {len(confidence)} test images"
        + (f", TTA level {tta}" if tta else "")
    )
    return fig


# --------------------------------------------------------------------------- confused pairs


def confused_pairs(
    labels: np.ndarray, predictions: np.ndarray, classes: int, top: int
) -> list[tuple[int, int, int]]:
    """The `top` (true, predicted, count) pairs off the diagonal with the highest counts, in
    (count high to low, true, predicted) order; pairs never confused are left out."""
    counts = confusion_matrix(np.asarray(labels), np.asarray(predictions), classes)
    np.fill_diagonal(counts, 0)
    true, pred = np.nonzero(counts)
    order = sorted(zip(-counts[true, pred], true, pred))[:top]
    return [(int(t), int(p), int(-n)) for n, t, p in order]


def figure_confused_pairs(
    predictions: dict[str, np.ndarray], top: int = 15, title: str = ""
) -> Figure:
    """Horizontal bars: how many test images of class a were predicted as b, the top pairs,
    with the share of a's images each is."""
    names = short_names(predictions["class_names"])
    labels = predictions["labels"]
    pairs = confused_pairs(labels, predictions["predictions"], len(names), top)
    per_class = np.bincount(labels, minlength=len(names))
    fig = Figure(figsize=(8, 1.2 + 0.32 * max(len(pairs), 3)), layout="constrained")
    ax = fig.subplots()
    wrong = int((predictions["labels"] != predictions["predictions"]).sum())
    if not pairs:
        ax.axis("off")
        ax.text(0.5, 0.5, "no test image was misclassified", ha="center", va="center")
    else:
        counts = [n for _, _, n in pairs]
        ax.barh(range(len(pairs)), counts, color="tab:red")
        ax.set_yticks(range(len(pairs)), [f"{names[t]} → {names[p]}" for t, p, _ in pairs])
        ax.invert_yaxis()
        for i, (t, _, n) in enumerate(pairs):
            share = n / max(per_class[t], 1)
            ax.text(n, i, f" {n} ({share:.0%} of {names[t]})", va="center", fontsize=8)
        ax.set_xlim(0, max(counts) * 1.35)
        ax.set_xlabel("test images (true → predicted)")
        ax.grid(alpha=0.3, axis="x")
    shown = sum(n for _, _, n in pairs)
    fig.suptitle(
        (title + ": " if title else "")
        + f"most-confused pairs: the top {len(pairs)} hold {shown} of {wrong} mistakes"
    )
    return fig


# ----------------------------------------------------------------------------------- mistakes


def figure_mistakes(predictions: dict[str, np.ndarray], n: int = 16, title: str = "") -> Figure:
    """The `n` most confident wrong test images (predictions.npz keeps MISTAKES_KEPT), most
    confident first, each titled "pred X 0.99 / true Y"."""
    kept = predictions["mistake_index"]
    wrong = int((predictions["labels"] != predictions["predictions"]).sum())
    if n < 1:
        raise ConfigError(f"plot mistakes: --n must be at least 1, got {n}")
    if n > len(kept) < wrong:
        raise ConfigError(
            f"plot mistakes: --n {n}, but predictions.npz keeps only the {len(kept)} most "
            f"confident of the {wrong} mistakes; ask for at most {len(kept)}"
        )
    names = short_names(predictions["class_names"])
    index = kept[:n]
    pred, true = predictions["predictions"][index], predictions["labels"][index]
    conf = predictions["confidence"][index]
    titles = [f"pred {names[p]} {c:.2f}\ntrue {names[t]}" for p, t, c in zip(pred, true, conf)]
    heading = (
        (title + ": " if title else "")
        + f"the {len(index)} most confident of {wrong} mistakes (predicted class, its probability"
        + "; true class)"
    )
    if len(index):
        return figure_grid(
            predictions["mistake_images"][:n], titles, [WRONG] * len(index), suptitle=heading
        )
    fig = Figure(figsize=(6, 1.5), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, "no test image was misclassified", ha="center", va="center")
    fig.suptitle(heading)
    return fig


# ---------------------------------------------------------------------------- saved, reported


def _predictions(run_dir: Path, data, device: str) -> dict[str, np.ndarray]:
    from dawntrain.infer.predict import run_predictions

    return run_predictions(Path(run_dir), data, device)


def plot_calibration(
    run_dir: Path, out: Path | None = None, data=None, device: str = "auto"
) -> tuple[Path, float]:
    """RUN's test predictions as calibration.png (default inside RUN); returns the path and the
    expected calibration error (ECE_BINS bins)."""
    run_dir = Path(run_dir)
    p = _predictions(run_dir, data, device)
    ece = expected_calibration_error(p["confidence"], p["predictions"] == p["labels"])
    return save(figure_calibration(p, title=run_dir.name), out or run_dir / "calibration.png"), ece


def plot_confused_pairs(
    run_dir: Path, out: Path | None = None, data=None, device: str = "auto", top: int = 15
) -> Path:
    """The `top` most-confused class pairs as confused-pairs.png (default inside RUN)."""
    if top < 1:
        raise ConfigError(f"plot confused-pairs: --top must be at least 1, got {top}")
    run_dir = Path(run_dir)
    fig = figure_confused_pairs(_predictions(run_dir, data, device), top, title=run_dir.name)
    return save(fig, out or run_dir / "confused-pairs.png")


def plot_mistakes(
    run_dir: Path, out: Path | None = None, data=None, device: str = "auto", n: int = 16
) -> Path:
    """The `n` most confident mistakes as mistakes.png (default inside RUN)."""
    run_dir = Path(run_dir)
    fig = figure_mistakes(_predictions(run_dir, data, device), n, title=run_dir.name)
    return save(fig, out or run_dir / "mistakes.png")


def report_figures(predictions: dict[str, np.ndarray]) -> list[tuple[str, str, Figure]]:
    """(heading, one-line caption, figure) of each predictions section of the report."""
    correct = predictions["predictions"] == predictions["labels"]
    ece = expected_calibration_error(predictions["confidence"], correct)
    confidence = float(np.mean(predictions["confidence"]))
    classes = len(predictions["class_names"])
    pairs = confused_pairs(predictions["labels"], predictions["predictions"], classes, 15)
    return [
        (
            "Calibration",
            f"Expected calibration error {ece:.4f} ({ECE_BINS} bins): mean confidence "
            f"{confidence:.4f} against accuracy {correct.mean():.4f}; a bar under the diagonal "
            "is a bin of overconfident predictions, one over it of underconfident ones.",
            figure_calibration(predictions),
        ),
        (
            "Most-confused pairs",
            "Test images of the class on the left that were predicted as the class on the "
            f"right: the {len(pairs)} largest counts off the confusion matrix's diagonal.",
            figure_confused_pairs(predictions),
        ),
        (
            "Most confident mistakes",
            "The wrong test predictions the model was surest of, most confident first: the "
            "predicted class and its probability, then the true class.",
            figure_mistakes(predictions, min(16, len(predictions["mistake_index"])) or 1),
        ),
    ]
