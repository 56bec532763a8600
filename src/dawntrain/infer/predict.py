"""Use a trained checkpoint: class probabilities for image files, and a run's test-set predictions.

`predict` reads any image Pillow opens, converts it to RGB and resizes it to the size the model
trained on, saying so in the result's notes. `run_predictions` evaluates RUN/checkpoints/last.pt on
the run's test set once and caches predictions, labels and confidences in RUN/predictions.npz,
which the confusion, calibration and mistakes plots and the report share.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dawntrain.data.images import IMAGE_EXTENSIONS, resize_image
from dawntrain.engine.build import run_data
from dawntrain.errors import CheckpointError, DataError
from dawntrain.files import atomic_write
from dawntrain.infer.model import input_size, load_model

PREDICTIONS_FILE = "predictions.npz"
# Test images kept in predictions.npz for the report's grid: this many right and as many wrong.
GRID_PER_KIND = 16
# The most confident wrong test images kept in predictions.npz, for the mistakes figure.
MISTAKES_KEPT = 32
# Part of the cache key: a cache written in an older layout (without the arrays added since)
# never matches and is recomputed.
CACHE_FORMAT = "v2"


# ------------------------------------------------------------------------------ image files


def image_paths(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly, plus every image file under each directory (sorted)."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise DataError(f"{item} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item} does not exist; pass image files or directories of them")
    return paths


def load_image(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """(uint8 HxWx3 RGB array of the given (height, width), notes on what was changed)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            notes = []
            if img.mode != "RGB":
                notes.append(f"converted from {img.mode} to RGB")
                img = img.convert("RGB")
            h, w = size
            if img.size != (w, h):
                notes.append(f"resized from {img.width}x{img.height} to {w}x{h} (aspect not kept)")
                img = resize_image(img, w, h)
            return np.asarray(img, dtype=np.uint8).copy(), notes
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} cannot be read as an image ({e}); pass image files") from e


def predict(
    checkpoint: Path,
    inputs: list[str | Path],
    top_k: int = 5,
    tta: bool = False,
    device: str = "auto",
    weights: str = "raw",
) -> list[dict[str, Any]]:
    """Top-k classes per image: [{"path", "notes", "predictions": [{"class", "index",
    "probability"}]}]. Computed in fp32; `tta` averages the run's test-time views (its
    `tta_level`, at least the mirror image); `weights`: "raw" or "ema" (load_model)."""
    trained = load_model(Path(checkpoint), device, weights)
    classes = trained.class_names
    paths = image_paths(inputs)
    size = input_size(trained.state)
    loaded = [load_image(p, size) for p in paths]
    level = max(1, trained.config.tta_level) if tta else 0
    images = np.stack([a for a, _ in loaded])
    probs = trained.evaluate(images, None, level, probabilities=True, precision="fp32")[
        "probabilities"
    ]
    k = max(1, min(top_k, len(classes)))
    results = []
    for path, (_, notes), p in zip(paths, loaded, probs):
        top = np.argsort(-p, kind="stable")[:k]
        results.append(
            {
                "path": str(path),
                "notes": notes,
                "predictions": [
                    {"class": classes[i], "index": int(i), "probability": float(p[i])} for i in top
                ],
            }
        )
    return results


def format_predictions(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(r["path"] + (f"  [{'; '.join(r['notes'])}]" if r["notes"] else ""))
        width = max(len(p["class"]) for p in r["predictions"])
        lines += [f"  {p['class']:<{width}}  {p['probability']:.4f}" for p in r["predictions"]]
    return "\n".join(lines)


def predictions_json(results: list[dict[str, Any]]) -> str:
    return json.dumps(results, indent=2)


# ------------------------------------------------------------------------- a run's test set


def _test_set(data, config) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(images, labels, class names, a name) of a source, a data set object, or the run's own."""
    if data is None or isinstance(data, (str, Path)):
        source = str(data or config.data)
        dataset = run_data(config, source)
    else:
        dataset, source = data, getattr(data, "source", "the given data set")
    if dataset.test_images is None:
        raise DataError(f"data source {source} has no test set to evaluate on")
    images = np.ascontiguousarray(dataset.test_images)
    return images, np.asarray(dataset.test_labels), list(dataset.class_names), source


def _data_hash(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(images.tobytes())
    h.update(labels.astype(np.int64).tobytes())
    return h.hexdigest()[:24]


def most_confident_mistakes(
    predictions: np.ndarray, labels: np.ndarray, confidence: np.ndarray, k: int
) -> np.ndarray:
    """Indices of the (up to) k wrong predictions of highest confidence, most confident first;
    equal confidences in index order, so the pick is the same on every call."""
    wrong = np.flatnonzero(predictions != labels)
    order = np.argsort(-confidence[wrong], kind="stable")
    return wrong[order[:k]].astype(np.int64)


def _cached(cache: Path, prefix: str) -> dict[str, np.ndarray] | None:
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            if "key" in f.files and str(f["key"]).startswith(prefix):
                return {k: f[k] for k in f.files}
    return None


def run_predictions(
    run_dir: Path, data=None, device: str = "auto", probabilities: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Test-set predictions of RUN/checkpoints/last.pt, cached in RUN/predictions.npz.

    The cache is keyed by the checkpoint file (size, mtime) and the test set's content: with
    `data` None any cache of this checkpoint is used (no data is loaded; its `source` says which
    test set it holds), otherwise only one of the same test set. Computed in the run's precision
    with its TTA level, so the accuracy is the run's final test accuracy. `data`: a source for
    `dawntrain.data.load`, an object with test_images/test_labels/class_names, or None for the
    run's own source. Returns arrays: predictions, labels, confidence (probability of the
    predicted class), true_probability (of the true class), class_names, tta_level, source,
    grid_index/grid_images: up to GRID_PER_KIND right and as many wrong test images, picked
    with a fixed seed, for the report, and mistake_index/mistake_images: the MISTAKES_KEPT most
    confident wrong ones, most confident first (most_confident_mistakes). `probabilities`:
    last.pt's on this test set, computed as above by the caller (fit's final test pass), taken
    instead of evaluating again where their shape fits."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt} does not exist; is {run_dir} a finished run directory?")
    cache = run_dir / PREDICTIONS_FILE
    stat = ckpt.stat()
    ckpt_key = f"{CACHE_FORMAT}:{stat.st_size}:{stat.st_mtime_ns}:"
    if data is None and (hit := _cached(cache, ckpt_key)) is not None:
        return hit
    trained = load_model(ckpt, device)
    config = trained.config
    images, labels, classes, source = _test_set(data, config)
    trained.check_classes(classes, f"the test set of {source}")
    key = ckpt_key + _data_hash(images, labels)
    if (hit := _cached(cache, key)) is not None:
        return hit

    probs = probabilities
    if probs is None or probs.shape != (len(labels), len(classes)):
        probs = trained.evaluate(images, labels, config.tta_level, probabilities=True)
        probs = probs["probabilities"]
    predictions, confidence = probs.argmax(1), probs.max(1).astype(np.float32)
    mistakes = most_confident_mistakes(predictions, labels, confidence, MISTAKES_KEPT)
    rng = np.random.default_rng(0)
    right, wrong = np.flatnonzero(predictions == labels), np.flatnonzero(predictions != labels)
    grid = np.concatenate(
        [np.sort(rng.permutation(ids)[:GRID_PER_KIND]) for ids in (right, wrong)]
    ).astype(np.int64)
    result = {
        "predictions": predictions.astype(np.int64),
        "labels": labels.astype(np.int64),
        "confidence": confidence,
        "true_probability": probs[np.arange(len(labels)), labels].astype(np.float32),
        "class_names": np.array(classes, dtype=str),
        "tta_level": np.array(config.tta_level),
        "source": np.array(str(source)),
        "grid_index": grid,
        "grid_images": images[grid],
        "mistake_index": mistakes,
        "mistake_images": images[mistakes],
        "key": np.array(key),
    }
    # Written whole or not at all: a report reading the cache never sees half a file.
    atomic_write(cache, lambda f: np.savez(f, **result))
    return result
