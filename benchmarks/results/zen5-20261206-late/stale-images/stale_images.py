"""Which training images the own-loss ranking stops training on, and whether the model still
knows them: from a run's per-epoch checkpoints (`--set keep_checkpoints=10` keeps all ten of
fast-budget's) and, given the data, the final model's accuracy on the training images.

    python stale_images.py RUN [DATA]

An image's stored loss (filter_by = last_loss_ratio: its loss over its step's mean) changes
only when the model trains on it, so an image whose value at epoch e equals its value at the
end was not trained on after epoch e."""

import sys
from pathlib import Path

import numpy as np

from dawntrain.engine.build import run_data
from dawntrain.infer.model import load_model
from dawntrain.train import checkpoint

run = Path(sys.argv[1])
saved = sorted((run / "checkpoints").glob("epoch_*.pt"))
table = {
    int(p.stem.split("_")[1]): checkpoint.load(p)["filter"]["last_loss"].float() for p in saved
}
last_epoch = max(table)
final = table[last_epoch]
print(f"{run}: epochs {min(table)}-{last_epoch} saved")
print("epoch  share not trained on again after it")
for e in sorted(table):
    if e < last_epoch:
        print(f"{e:>5}  {(table[e] == final).float().mean().item():.4f}")
if len(sys.argv) > 2:
    trained = load_model(run, "cpu")
    data = run_data(trained.config, sys.argv[2])
    x, y = data.train_images, np.asarray(data.train_labels)
    probs = trained.evaluate(x, y, 0, probabilities=True)["probabilities"]
    right = probs.argmax(1) == y
    print(f"final model on the training images (plain view): {right.mean():.4f}")
    print(
        "epoch  accuracy on those not trained on after it  on the rest  their share of each class"
    )
    for e in sorted(table):
        if e < last_epoch:
            stale = (table[e] == final).numpy()
            share = np.bincount(y[stale], minlength=len(data.class_names)) / np.bincount(y)
            classes = ", ".join(f"{n} {s:.0%}" for n, s in zip(data.class_names, share))
            print(f"{e:>5}  {right[stale].mean():>43.4f}  {right[~stale].mean():>11.4f}  {classes}")
