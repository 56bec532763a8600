"""Wider test-time views for the images the model is unsure of, scored on saved runs (so each
variant is paired with level 2 on the same weights).

    python views.py DATA RUN[,RUN...] [VARIANT,...]   # writes tta-views.json in the working folder

Each variant replaces engine.evaluate.tta_logits for the run's own evaluation path (tta_below
0.6, as the preset): the plain view and its mirror weighted `w`, the translations (dy, dx),
reflect-padded, each with its mirror, weighted 1 - w. "level2" is the preset's own views and
reproduces each run's summary (test_acc_tta) to the digit."""

import json
import sys

import torch.nn.functional as F

import dawntrain.engine.evaluate as ev
from dawntrain.infer.evaluate import test_set
from dawntrain.infer.model import load_model

DIAG2 = [(-1, -1), (1, 1)]
DIAG4 = DIAG2 + [(-1, 1), (1, -1)]
AXIS4 = [(-1, 0), (1, 0), (0, -1), (0, 1)]
VARIANTS = {
    "level2": (DIAG2, 0.5),
    "diag4": (DIAG4, 0.5),
    "all8": (DIAG4 + AXIS4, 0.5),
    "all8_w1/3": (DIAG4 + AXIS4, 1 / 3),
    "axis4": (AXIS4, 0.5),
    "diag2px": (DIAG4 + [(-2, -2), (2, 2), (-2, 2), (2, -2)], 0.5),
}


def views(shifts, w):
    def tta(model, x, level, plain=None):
        logits = model(x) if plain is None else plain
        base = 0.5 * logits + 0.5 * model(x.flip(-1))
        h, wd = x.shape[-2:]
        p = max(max(abs(a), abs(b)) for a, b in shifts)
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        shifted = [padded[..., p + dy : p + dy + h, p + dx : p + dx + wd] for dy, dx in shifts]
        translated = sum(0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted) / len(shifted)
        return w * base + (1 - w) * translated

    return tta


data = sys.argv[1]
names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VARIANTS)
out = {}
for run in sys.argv[2].split(","):
    trained = load_model(run, "cpu")
    images, labels, _, _ = test_set(trained, data)
    out[run] = {}
    for name in names:
        ev.tta_logits = views(*VARIANTS[name])
        r = trained.evaluate(images, labels, 2, tta_below=0.6)
        acc = {k: v for k, v in r.items() if isinstance(v, float)}
        out[run][name] = acc
        print(run, name, json.dumps(acc), flush=True)
with open("tta-views.json", "w") as f:
    json.dump(out, f, indent=1)
