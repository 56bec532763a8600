"""Which test-time augmentation threshold (config.tta_below) a trained run can afford: for each
threshold, the share of test images that take the views, the accuracy, and the forward passes
per image, from one plain and one full-TTA pass over the test set.

Taking the TTA prediction where the plain top-class probability is below a threshold and the
plain one elsewhere is what engine.evaluate.tta_where_unsure does batch by batch, so each row is
the accuracy a run with that tta_below would report (up to bf16 kernels that differ with the
batch's make-up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawntrain.analysis.flop_count import tta_views
from dawntrain.errors import ConfigError
from dawntrain.infer.evaluate import test_set
from dawntrain.infer.model import load_model

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def run(
    checkpoint: Path,
    data: str | None = None,
    level: int | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
    device: str = "auto",
    weights: str = "raw",
) -> dict[str, Any]:
    trained = load_model(checkpoint, device, weights)
    level = trained.config.tta_level if level is None else level
    if not level:
        raise ConfigError(f"{checkpoint}: the run has no TTA level; pass --tta 1 or --tta 2")
    images, labels, source, _ = test_set(trained, data)
    plain = trained.evaluate(images, None, 0, probabilities=True)["probabilities"]
    full = trained.evaluate(images, None, level, probabilities=True, tta_below=1.0)
    full = full["probabilities"]
    labels = np.asarray(labels)
    sure, plain_pred, full_pred = plain.max(1), plain.argmax(1), full.argmax(1)
    views = tta_views(level)
    rows = []
    for below in sorted(thresholds):
        unsure = sure < below
        pred = np.where(unsure, full_pred, plain_pred)
        share = float(unsure.mean())
        rows.append(
            {
                "tta_below": below,
                "tta_fraction": share,
                "acc": float((pred == labels).mean()),
                "views_per_image": 1 + share * (views - 1),
                # The predictions TTA changed among the images it was applied to.
                "changed": int((pred != plain_pred).sum()),
            }
        )
    return {
        "checkpoint": str(checkpoint),
        "source": source,
        "weights": weights,
        "tta_level": level,
        "images": len(labels),
        "plain_acc": float((plain_pred == labels).mean()),
        "tta_acc": float((full_pred == labels).mean()),
        # Where TTA changes a prediction at all: the most a threshold can keep of its gain.
        "changed_by_tta": int((full_pred != plain_pred).sum()),
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    views = tta_views(result["tta_level"])
    lines = [
        f"{result['checkpoint']} on {result['source']}, {result['images']} test images, "
        f"TTA level {result['tta_level']} ({views} views)",
        f"plain {result['plain_acc']:.4f}, TTA on every image {result['tta_acc']:.4f} "
        f"(TTA changes {result['changed_by_tta']} predictions)",
        f"{'tta_below':>10}{'share with views':>18}{'accuracy':>10}{'Δ vs all':>10}"
        f"{'passes/image':>14}{'changed':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['tta_below']:>10g}{100 * r['tta_fraction']:>17.1f}%{r['acc']:>10.4f}"
            f"{100 * (r['acc'] - result['tta_acc']):>+10.2f}{r['views_per_image']:>14.2f}"
            f"{r['changed']:>9}"
        )
    return "\n".join(lines)
