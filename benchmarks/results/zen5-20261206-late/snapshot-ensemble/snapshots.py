"""The last epoch's weights averaged at test time with an earlier epoch's (a snapshot ensemble of
one run: the second model costs its own test passes, about 0.006 PFLOP on fast-budget), against
the run's own prediction, paired on the same runs.

    python snapshots.py DATA RUN[,RUN...]

Each model's probabilities come from the run's evaluation path, plain and with its TTA views on
every image; the ensemble takes the views where its plain top probability is under the run's
tta_below, as a run does."""

import json
import sys
from pathlib import Path

import numpy as np

from dawntrain.infer.evaluate import test_set
from dawntrain.infer.model import load_model

EARLIER = (9, 8, 6)
WEIGHTS = (0.5, 0.7)  # the last epoch's share


def probabilities(trained, images):
    """(plain, with the TTA views on every image) probabilities of `trained` on `images`."""
    plain = trained.evaluate(images, None, 0, probabilities=True)["probabilities"]
    level = trained.config.tta_level
    views = trained.evaluate(images, None, level, probabilities=True, tta_below=1.0)
    return plain, views["probabilities"]


def accuracy(plain, views, labels, below) -> float:
    pred = np.where(plain.max(1) < below, views.argmax(1), plain.argmax(1))
    return float((pred == labels).mean())


data, out = sys.argv[1], {}
for run in map(Path, sys.argv[2].split(",")):
    last = load_model(run, "cpu")
    images, labels, _, _ = test_set(last, data)  # the same for every epoch of the run
    labels, below = np.asarray(labels), last.config.tta_below
    last_plain, last_views = probabilities(last, images)
    row = {"own": accuracy(last_plain, last_views, labels, below)}
    for e in EARLIER:
        earlier = load_model(run / "checkpoints" / f"epoch_{e:02d}.pt", "cpu")
        plain, views = probabilities(earlier, images)
        for w in WEIGHTS:
            mixed = [w * a + (1 - w) * b for a, b in ((last_plain, plain), (last_views, views))]
            row[f"epoch {e}, last at {w}"] = accuracy(*mixed, labels, below)
    out[str(run)] = row
    print(run, json.dumps(row), flush=True)
with open("snapshots.json", "w") as f:
    json.dump(out, f, indent=1)
