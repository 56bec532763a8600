"""The one evaluation path: loss, top-1 and top-5 accuracy, optionally the class probabilities,
with the run's test-time views (TTA) and precision. Validation in fit(), the final test, `eval`,
`predict`, the confusion plot and the report all call `evaluate`, so they cannot disagree.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dawntrain import seeds
from dawntrain.data.batches import Normalizer, eval_batches
from dawntrain.runtime import distributed
from dawntrain.runtime.device import autocast

TOP_K = 5


def tta_logits(
    model: nn.Module, x: torch.Tensor, level: int, plain: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits averaged over test-time views: level 1 adds the mirror image, level 2 also
    one-pixel translations (up-left and down-right, reflect-padded) of both. `plain`: the
    model's logits of x itself, where they are computed already."""
    logits = model(x) if plain is None else plain
    if level >= 1:
        logits = 0.5 * logits + 0.5 * model(x.flip(-1))
    if level >= 2:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
        translated = sum(0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted) / 2
        logits = 0.5 * logits + 0.5 * translated
    return logits


def tta_where_unsure(
    model: nn.Module,
    x: torch.Tensor,
    level: int,
    below: float,
    plain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, unsure): the plain logits (`plain`, where computed already), replaced by
    tta_logits for the images whose plain top-class probability is below `below` (the `unsure`
    mask); only those pay for the views."""
    logits = model(x) if plain is None else plain
    unsure = F.softmax(logits.float(), dim=1).amax(1) < below
    if unsure.any():
        logits = logits.clone()
        logits[unsure] = tta_logits(model, x[unsure], level, logits[unsure]).to(logits.dtype)
    return logits, unsure


def _scores(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A batch's (loss sum, top-1 correct, top-5 correct), float64."""
    k = min(TOP_K, logits.shape[1])
    return torch.stack(
        [
            F.cross_entropy(logits.float(), y, reduction="sum").double(),
            (logits.argmax(1) == y).sum().double(),
            (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum().double(),
        ]
    )


def _means(sums: list[float], n: float) -> dict[str, float]:
    loss, top1, top5 = sums
    return {"loss": loss / n, "acc": top1 / n, "top5": top5 / n}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    normalizer: Normalizer,
    batch_size: int,
    precision: str,
    channels_last: bool = True,
    tta_level: int = 0,
    probabilities: bool = False,
    all_ranks: bool = True,
    tta_below: float = 1.0,
    with_plain: bool = False,
) -> dict[str, Any]:
    """Mean loss, accuracy (top-1) and top-5 accuracy of uint8 NHWC `images`, with running
    BatchNorm statistics. Under torch.distributed each rank passes its shard and gets the totals
    (`all_ranks`); one rank alone (the report) passes all_ranks=False. `labels` None: only the
    probabilities. `probabilities`: also the softmax (N, classes) float32 as numpy, and the
    predicted classes. `tta_below` < 1 (config.tta_below): the views only where the plain
    prediction is less sure than that; "tta_fraction" says for what share of the images.
    `with_plain` (with a TTA level): also the figures without TTA, under "plain", from the
    same pass (TTA's first view is the plain image: a second pass would recompute it)."""
    was_training = model.training
    model.eval()
    device = images.device
    if labels is None:
        labels = torch.full((len(images),), -1, dtype=torch.long, device=device)
    with_plain = with_plain and bool(tta_level)
    sums = torch.zeros(2 if with_plain else 1, 3, device=device, dtype=torch.float64)
    with_views = torch.zeros((), device=device, dtype=torch.int64)
    selective = bool(tta_level) and tta_below < 1.0
    scored = bool(len(labels)) and int(labels.min()) >= 0
    probs = []
    for x, y in eval_batches(images, labels, batch_size):
        with autocast(device, precision):
            x = normalizer(x, channels_last)
            plain = model(x)
            if selective:
                logits, unsure = tta_where_unsure(model, x, tta_level, tta_below, plain)
                with_views += unsure.sum()
            else:
                logits = tta_logits(model, x, tta_level, plain)
        if probabilities:
            probs.append(F.softmax(logits.float(), dim=1).cpu())
        if scored:
            sums[0] += _scores(logits, y)
            if with_plain:
                sums[1] += _scores(plain, y)
    model.train(was_training)
    out: dict[str, Any] = {}
    if scored or all_ranks:
        counts = torch.stack([torch.tensor(len(labels), device=device), with_views]).double()
        totals = torch.cat([sums.flatten(), counts])
        if all_ranks:
            totals = distributed.all_reduce_(totals)
        *figures, n, views = totals.tolist()
        n = max(1, n)
        out = {**_means(figures[:3], n), "examples": int(n)}
        if tta_level:
            out["tta_fraction"] = views / n if selective else 1.0
        if with_plain:
            out["plain"] = _means(figures[3:], n)
    if probabilities:
        p = torch.cat(probs).numpy() if probs else np.zeros((0, 0), dtype=np.float32)
        out.update(probabilities=p, predictions=p.argmax(1) if len(p) else np.array([], np.int64))
    return out


@torch.no_grad()
def sanity_check(model, images, labels, normalizer, precision, num_classes, channels_last) -> str:
    """The line `untrained_check` says (its `message`)."""
    return untrained_check(
        model, images, labels, normalizer, precision, num_classes, channels_last
    )["message"]


def untrained_check(
    model, images, labels, normalizer, precision, num_classes, channels_last
) -> dict[str, Any]:
    """Evaluate the untrained model on a few batches: its accuracy should be about chance.
    Returns accuracy, loss, the chance figures, images, far_from_chance and the message line.

    BatchNorm uses batch statistics (its running averages are still the init's 0 and 1, which
    would blow activations up through the residual sums); the model's state is restored after.
    """
    # A random subset: test sets are often sorted by class, and the first 512 may hold 5 classes.
    pick = torch.randperm(len(labels), generator=seeds.generator(0, 0, seeds.SANITY_SUBSET))[:512]
    pick = pick.to(labels.device)
    saved, was_training = copy.deepcopy(model.state_dict()), model.training
    # eval() first, then BN back to train(): eval() on a parent reaches every child, so setting
    # modules one by one in modules() order would leave the BN layers in eval mode after all.
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(pick), 256):
        x, y = images[pick[i : i + 256]], labels[pick[i : i + 256]]
        with autocast(images.device, precision):
            logits = model(normalizer(x, channels_last))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.load_state_dict(saved)
    model.train(was_training)
    n = max(1, len(pick))
    acc, loss = correct / n, loss_sum / n
    chance = 1.0 / num_classes
    message = (
        f"sanity check: untrained accuracy expected ≈ {chance:.4f} (1/{num_classes}), got "
        f"{acc:.4f}; loss expected ≈ {math.log(num_classes):.3f}, got {loss:.3f}"
    )
    # Far off chance before training means labels, data or model are broken (or the set is tiny).
    far = abs(acc - chance) > max(0.1, 3 * math.sqrt(chance * (1 - chance) / n))
    warn = far or loss > 3 * math.log(num_classes)
    if warn:
        message = "WARNING: " + message + " — far from chance: check labels, preprocessing and init"
    return {
        "accuracy": acc,
        "loss": loss,
        "chance_accuracy": chance,
        "chance_loss": math.log(num_classes),
        "images": len(pick),
        "far_from_chance": bool(warn),
        "message": message,
    }
