"""`dawntrain eval`: a checkpoint on a data source's test set, as the run evaluated it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dawntrain.engine.build import run_data
from dawntrain.errors import DataError
from dawntrain.infer.model import load_model


def evaluate_checkpoint(
    path: Path,
    data: str | None = None,
    device: str = "auto",
    tta_level: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Loss, top-1 and top-5 accuracy of a checkpoint on the test set of `data` (default: the
    run's own source, checked and resized as the run's data was), in the run's precision.
    `tta_level` None: the run's own level; where that is above 0 the result has the plain
    figures and, under "tta", those with test-time augmentation (summary.json's test_acc and
    test_acc_tta)."""
    trained = load_model(path, device)
    config = trained.config
    dataset = run_data(config, data)
    if dataset.test_images is None:
        raise DataError(f"data source {data or config.data} has no test set to evaluate on")
    if list(dataset.class_names) != trained.class_names:
        raise DataError(
            f"{path} was trained on {len(trained.class_names)} classes "
            f"({', '.join(trained.class_names[:5])}{', ...' if len(trained.class_names) > 5 else ''}), "
            f"the data has {len(dataset.class_names)} ({', '.join(dataset.class_names[:5])}"
            f"{', ...' if len(dataset.class_names) > 5 else ''}); evaluate on data with the "
            "checkpoint's classes"
        )
    level = config.tta_level if tta_level is None else tta_level
    images, labels = dataset.test_images, dataset.test_labels
    result = trained.evaluate(images, labels, batch_size=batch_size)
    out = {**result, "split": "test", "source": getattr(dataset, "source", data or config.data)}
    if level:
        out["tta"] = {
            **trained.evaluate(images, labels, level, batch_size=batch_size),
            "level": level,
        }
    return out
