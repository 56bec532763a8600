"""Two test-time ideas for `fast-budget`, paired on trained runs (the same weights with and without).

1. BatchNorm statistics recalibrated after training: the running means and variances reset and
   recomputed (cumulative average) from clean training images, instead of the momentum-0.4
   running statistics of the last, filtered and augmented, training batches.
2. The data filter's proxy (the 32/64/64 FastNet saved beside the model in each checkpoint) as
   a second ensemble member: log-probabilities summed with weight w.

    python benchmarks/results/zen5-20261205-night/test_time_ideas.py DATA RUN [RUN ...]

DATA: the CIFAR-10 source the runs trained on; RUN: a `dawntrain train` run directory. Prints
one JSON line per run (test accuracy in %, plain and with the run's TTA views on every image).
"""

from __future__ import annotations

import json
import sys
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dawntrain.engine.build import run_data
from dawntrain.engine.data_filter import proxy_model
from dawntrain.engine.evaluate import tta_logits
from dawntrain.infer.model import TrainedModel, load_model
from dawntrain.runtime.device import autocast

CPU = torch.device("cpu")


def logits(tm: TrainedModel, net: nn.Module, images: np.ndarray, level: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 1000):
            with autocast(CPU, tm.precision):
                x = tm.normalizer(torch.as_tensor(images[i : i + 1000]), True)
                out.append(tta_logits(net, x, level).float())
    return torch.cat(out)


def accuracy(z: torch.Tensor, labels: torch.Tensor) -> float:
    return round((z.argmax(1) == labels).double().mean().item() * 100, 2)


def recalibrated(tm: TrainedModel, images: np.ndarray, n: int, flip: bool) -> TrainedModel:
    """tm with its BatchNorm statistics recomputed from n training images (a fixed draw),
    with their mirror images too where `flip`."""
    bns = [m for m in tm.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    pick = np.sort(torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n])
    tm.model.train()
    with torch.no_grad():
        for i in range(0, n, 1024):
            with autocast(CPU, tm.precision):
                x = tm.normalizer(torch.as_tensor(images[pick[i : i + 1024]]), True)
                tm.model(torch.cat([x, x.flip(-1)]) if flip else x)
    tm.model.eval()
    return tm


def main(source: str, runs: list[str]) -> None:
    data = None
    for run in runs:
        tm = load_model(run, device="cpu")
        data = data or run_data(tm.config, source)
        y = torch.as_tensor(data.test_labels).long()
        acc = partial(accuracy, labels=y)
        plain, views = (logits(tm, tm.model, data.test_images, level) for level in (0, 2))
        result = {"run": run, "plain": acc(plain), "tta": acc(views)}
        proxy = proxy_model(tm.config, len(tm.class_names)).to(memory_format=torch.channels_last)
        proxy.load_state_dict(tm.state["filter"]["model"])
        proxy_views = logits(tm, proxy.eval(), data.test_images, 2)
        result["proxy tta"] = acc(proxy_views)
        for w in (0.1, 0.2, 0.3):
            both = F.log_softmax(views, 1) + w * F.log_softmax(proxy_views, 1)
            result[f"tta + {w} proxy tta"] = acc(both)
        state = {k: v.clone() for k, v in tm.model.state_dict().items()}
        for n, flip in ((10000, False), (50000, False), (10000, True)):
            tm.model.load_state_dict(state)
            recalibrated(tm, data.train_images, n, flip)
            name = f"BN from {n}{' and mirrors' if flip else ''}"
            result[name] = [acc(logits(tm, tm.model, data.test_images, lv)) for lv in (0, 2)]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
