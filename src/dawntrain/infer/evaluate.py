"""`dawntrain eval`: a checkpoint on a data source's test set, as the run evaluated it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawntrain.engine.build import run_data
from dawntrain.errors import DataError
from dawntrain.infer.model import TrainedModel, class_list, load_model


def evaluate_checkpoint(
    path: Path,
    data: str | None = None,
    device: str = "auto",
    tta_level: int | None = None,
    batch_size: int | None = None,
    shared_classes: bool = False,
    weights: str = "raw",
    tta_below: float | None = None,
) -> dict[str, Any]:
    """Loss, top-1 and top-5 accuracy of a checkpoint on the test set of `data` (default: the
    run's own source, checked and resized as the run's data was), in the run's precision.
    `tta_level` None: the run's own level; where that is above 0 the result has the plain
    figures and, under "tta", those with test-time augmentation (summary.json's test_acc and
    test_acc_tta).

    Data whose class list differs from the checkpoint's is refused, naming both lists, unless
    `shared_classes`: then only the images of the classes both have (matched by name) are
    evaluated, their labels mapped to the checkpoint's indices; the result names those classes
    under "shared_classes". `weights`: "raw" (the trained weights) or "ema" (their EMA, where the
    run kept one: summary.json's ema_test_acc and ema_test_acc_tta); the result says which.
    `tta_below` None: the run's own; else TTA only where the plain top-class probability is
    below it (config.tta_below), the share of images it took under "tta"."""
    trained = load_model(path, device, weights)
    config = trained.config
    images, labels, source, shared = test_set(trained, data, shared_classes)
    level = config.tta_level if tta_level is None else tta_level
    # With TTA, the plain figures come from the same pass, as the run's final test took them.
    result = trained.evaluate(
        images, labels, level, batch_size=batch_size, tta_below=tta_below, with_plain=True
    )
    plain = {**result.pop("plain"), "examples": result["examples"]} if level else result
    out = {**plain, "split": "test", "source": source}
    out["weights"] = weights
    if shared is not None:
        out["shared_classes"] = shared
    if level:
        out["tta"] = {**result, "level": level}
    return out


def test_set(trained: TrainedModel, data: str | None = None, shared_classes: bool = False):
    """(images, labels, source name, shared class names or None): the test set of `data`
    (default: the run's own source), checked and resized as the run's data was; data of other
    classes is refused unless `shared_classes` (see evaluate_checkpoint)."""
    config = trained.config
    dataset = run_data(config, data)
    if dataset.test_images is None:
        raise DataError(f"data source {data or config.data} has no test set to evaluate on")
    images, labels = dataset.test_images, dataset.test_labels
    data_classes, own = list(dataset.class_names), trained.class_names
    shared = None
    if data_classes != own:
        if not shared_classes:
            hint = ", or pass --shared-classes to use the classes both have"
            trained.check_classes(data_classes, "the data", hint)
        images, labels, shared = _on_shared_classes(images, labels, data_classes, own)
    return images, labels, getattr(dataset, "source", data or config.data), shared


def _on_shared_classes(images, labels, data_classes: list[str], own: list[str]):
    """(images, labels in the checkpoint's indices, shared class names) of the test images
    whose class the checkpoint knows."""
    index = {name: i for i, name in enumerate(own)}
    shared = [name for name in data_classes if name in index]
    if not shared:
        raise DataError(
            f"the data's classes ({class_list(data_classes)}) and the checkpoint's ({class_list(own)}) "
            "have none in common"
        )
    to_own = np.array([index.get(name, -1) for name in data_classes])
    mapped = to_own[np.asarray(labels)]
    keep = mapped >= 0
    if not keep.any():
        raise DataError(f"the test set has no images of the shared classes ({class_list(shared)})")
    return images[keep], mapped[keep], shared
