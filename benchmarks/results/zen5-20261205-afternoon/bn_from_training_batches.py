"""BatchNorm statistics averaged over the last epoch's training batches, paired on trained runs.

The night's precise-BN test (test_time_ideas.py beside the night's results) recomputed the
statistics from clean training images and lost 0.27 with TTA: the weights fit the statistics of
the augmented, filtered batches. This one keeps that distribution and only removes the noise of
the momentum-0.4 running average (about the last 2.5 batches): the statistics are reset and
averaged over K batches of the last epoch as the run builds them (crops, flips, colour jitter,
and, where `filtered`, the proxy's hardest share), with the trained weights. The same weights are
scored through the run's own evaluation path before and after (the plain figure and the views
where unsure, as the preset does).

    python benchmarks/results/zen5-20261205-afternoon/bn_from_training_batches.py DATA RUN [RUN ...]

DATA: the CIFAR-10 source the runs trained on; RUN: a `dawntrain train` run directory. Prints
one JSON line per run (test accuracy in %).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch
from torch import nn

from dawntrain.engine.build import Run, build, run_data
from dawntrain.infer.model import load_model
from dawntrain.runtime.device import autocast


def scores(run: Run) -> list[float]:
    images, labels = run.test_set()
    out = run.evaluate(images, labels, run.config.tta_level, with_plain=True)
    return [round(out["plain"]["acc"] * 100, 2), round(out["acc"] * 100, 2)]


def averaged_over_batches(run: Run, batches: int, filtered: bool) -> None:
    """The model's BatchNorm statistics reset and averaged over the last epoch's first
    `batches` training batches as the model saw them (its hardest share where `filtered`)."""
    for m in run.model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    epoch = run.config.epochs - 1
    run.model.train()
    with torch.no_grad():
        for step, (x, y) in enumerate(run.batches(epoch)):
            if step == batches:
                break
            x = run.inputs(x, epoch, step)
            if filtered:
                x = x[run.filter.pick(x, y, lr=0.0, global_step=1)]  # step 1: the proxy only scores
            with autocast(run.device, run.precision):
                run.model(x)
    run.model.eval()


def main(source: str, runs: list[str]) -> None:
    data = None
    for path in runs:
        tm = load_model(path, device="cpu")
        config = replace(tm.config, device="cpu")
        data = data or run_data(config, source)
        run = build(config, data)
        run.load_state_dict(tm.state)
        trained = {k: v.clone() for k, v in run.model.state_dict().items()}
        result = {"run": path, "as trained [plain, views where unsure]": scores(run)}
        for batches, filtered in ((10, True), (49, True), (49, False)):
            run.model.load_state_dict(trained)
            averaged_over_batches(run, batches, filtered)
            name = f"BN over {batches} batches{', kept share' if filtered else ', every image'}"
            result[name] = scores(run)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
