"""Use a trained checkpoint: class probabilities for image files, and a run's test-set predictions.

`predict` reads any image Pillow opens, converts it to RGB and resizes it to the size the model
trained on, saying so in the result's notes. `run_predictions` evaluates RUN/checkpoints/last.pt on
the run's test set once and caches predictions, labels and confidences in RUN/predictions.npz,
which the confusion plot and the report share.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dawntrain.data.batches import Normalizer, eval_batches
from dawntrain.errors import CheckpointError, DataError
from dawntrain.infer.evaluate import load_model
from dawntrain.runtime.device import autocast, resolve_precision
from dawntrain.train import guard
from dawntrain.train.loop import tta_logits

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PREDICTIONS_FILE = "predictions.npz"
# Test images kept in predictions.npz for the report's grid: this many right and as many wrong.
GRID_PER_KIND = 16


def input_size(state: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the images a checkpoint's model trained on: the checkpoint's
    `image_size` where the run stored it, else its config's `image_size`, else the model's own
    (the table guard.MODEL_IMAGE_SIZE holds: 64 for the Tiny ImageNet models, 32 for the rest)."""
    if "image_size" in state:
        h, w = state["image_size"]
        return int(h), int(w)
    config = state.get("config", {})
    side = config.get("image_size") or (
        64 if config.get("model") in ("davidnet64", "preact_resnet") else 32
    )
    return side, side


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    normalizer: Normalizer,
    batch_size: int = 1024,
    precision: str = "fp32",
    channels_last: bool = True,
    tta_level: int = 0,
) -> np.ndarray:
    """Softmax probabilities (N, classes) float32 of uint8 NHWC `images`, in eval mode.

    The same views and precision as `loop.evaluate`, but without its all-reduce, so one rank
    alone may call it (the report runs on rank 0 only)."""
    was_training = model.training
    model.eval()
    labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
    out = []
    for x, _ in eval_batches(images, labels, batch_size):
        with autocast(images.device, precision):
            logits = tta_logits(model, normalizer(x, channels_last), tta_level)
        out.append(F.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


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
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8).copy(), notes
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} cannot be read as an image ({e}); pass image files") from e


def predict(
    checkpoint: Path,
    inputs: list[str | Path],
    top_k: int = 5,
    tta: bool = False,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Top-k classes per image: [{"path", "notes", "predictions": [{"class", "index",
    "probability"}]}]. Computed in fp32; `tta` averages the run's test-time views (its
    `tta_level`, at least the mirror image)."""
    model, config, normalizer, state = load_model(Path(checkpoint), device)
    classes = list(state["class_names"])
    paths = image_paths(inputs)
    size = input_size(state)
    loaded = [load_image(p, size) for p in paths]
    dev = next(model.parameters()).device
    images = torch.as_tensor(np.stack([a for a, _ in loaded])).to(dev)
    level = max(1, config.tta_level) if tta else 0
    probs = predict_probabilities(
        model, images, normalizer, config.eval_batch_size, "fp32", config.channels_last, level
    )
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
        dataset = guard.checked_dataset(replace(config, data=source))
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


def _cached(cache: Path, prefix: str) -> dict[str, np.ndarray] | None:
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            if "key" in f.files and str(f["key"]).startswith(prefix):
                return {k: f[k] for k in f.files}
    return None


def run_predictions(run_dir: Path, data=None, device: str = "auto") -> dict[str, np.ndarray]:
    """Test-set predictions of RUN/checkpoints/last.pt, cached in RUN/predictions.npz.

    The cache is keyed by the checkpoint file (size, mtime) and the test set's content: with
    `data` None any cache of this checkpoint is used (no data is loaded; its `source` says which
    test set it holds), otherwise only one of the same test set. Computed in the run's precision
    with its TTA level, so the accuracy is the run's final test accuracy. `data`: a source for
    `dawntrain.data.load`, an object with test_images/test_labels/class_names, or None for the
    run's own source. Returns arrays: predictions, labels, confidence (probability of the
    predicted class), class_names, tta_level, source, and grid_index/grid_images: up to
    GRID_PER_KIND right and as many wrong test images, picked with a fixed seed, for the report."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt} does not exist; is {run_dir} a finished run directory?")
    cache = run_dir / PREDICTIONS_FILE
    stat = ckpt.stat()
    ckpt_key = f"{stat.st_size}:{stat.st_mtime_ns}:"
    if data is None and (hit := _cached(cache, ckpt_key)) is not None:
        return hit
    model, config, normalizer, state = load_model(ckpt, device)
    images, labels, classes, source = _test_set(data, config)
    if list(state["class_names"]) != classes:
        raise DataError(
            f"the test set of {source} has classes {classes[:4]}..., the run's model "
            f"{list(state['class_names'])[:4]}...; pass the data the run trained on"
        )
    key = ckpt_key + _data_hash(images, labels)
    if (hit := _cached(cache, key)) is not None:
        return hit

    dev = next(model.parameters()).device
    probs = predict_probabilities(
        model,
        torch.as_tensor(images).to(dev),
        normalizer,
        config.eval_batch_size,
        resolve_precision(config.precision, dev),
        config.channels_last,
        config.tta_level,
    )
    predictions = probs.argmax(1)
    rng = np.random.default_rng(0)
    right, wrong = np.flatnonzero(predictions == labels), np.flatnonzero(predictions != labels)
    grid = np.concatenate(
        [np.sort(rng.permutation(ids)[:GRID_PER_KIND]) for ids in (right, wrong)]
    ).astype(np.int64)
    result = {
        "predictions": predictions.astype(np.int64),
        "labels": labels.astype(np.int64),
        "confidence": probs.max(1).astype(np.float32),
        "class_names": np.array(classes, dtype=str),
        "tta_level": np.array(config.tta_level),
        "source": np.array(str(source)),
        "grid_index": grid,
        "grid_images": images[grid],
        "key": np.array(key),
    }
    # Written beside and renamed over: a report reading the cache never sees half a file.
    tmp = cache.with_name(f".{cache.name}.tmp.npz")
    np.savez(tmp, **result)
    tmp.replace(cache)
    return result
