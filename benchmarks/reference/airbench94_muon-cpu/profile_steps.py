"""Where airbench94_muon's time goes on a CPU, split as `dawntrain bench profile` splits a step.

Run it beside the patched airbench94_muon.py and its cifar10/ folder (README.md):

    THREADS=2 python profile_steps.py --steps 4 --out airbench94_muon-profile.json

It sets the allocator as the timed runs' MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ do,
through dawntrain's keep_freed_memory (which leaves a malloc set by those variables alone, and
with it reserve_heap), so run it without them.

It builds the loaders, network and optimizers as airbench94_muon's main() does, then times an
epoch's augmentation (its loader crops and flips the whole training set when an epoch starts),
`--steps` training steps unprofiled and then profiled (each on a heap made resident first, as
dawntrain's tool does, for the profiler's records would otherwise grow it into fresh pages),
the per-epoch validation and the final TTA evaluation. The profiled operators are sorted into
the same phases and kinds as dawntrain's (dawntrain.bench.profile).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import airbench94_muon as ab
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from dawntrain.bench.profile import BATCHES, STEP, split, totals
from dawntrain.runtime.malloc import keep_freed_memory, reserve_heap

# Just under glibc's 2 GiB trim threshold: a step at batch 2000 grows the heap by more than 1 GiB.
RESERVE = 1900 << 20


def setup(batch_size: int = 2000):
    """airbench94_muon's main() up to its training loop, on a fresh model."""
    bias_lr, head_lr, wd = 0.053, 0.67, 2e-6 * batch_size
    test_loader = ab.CifarLoader("cifar10", train=False, batch_size=2000)
    train_loader = ab.CifarLoader(
        "cifar10", train=True, batch_size=batch_size, aug=dict(flip=True, translate=2)
    )
    model = ab.CifarNet().to(memory_format=torch.channels_last)
    model.reset()
    filters = [p for p in model.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    groups = [
        dict(params=[model.whiten.bias], lr=bias_lr, weight_decay=wd / bias_lr),
        dict(params=norm_biases, lr=bias_lr, weight_decay=wd / bias_lr),
        dict(params=[model.head.weight], lr=head_lr, weight_decay=wd / head_lr),
    ]
    optimizers = [
        torch.optim.SGD(groups, momentum=0.85, nesterov=True, fused=True),
        ab.Muon(filters, lr=0.24, momentum=0.6, nesterov=True),
    ]
    model.init_whiten(train_loader.normalize(train_loader.images[:5000]))
    return model, optimizers, train_loader, test_loader


def step(model, optimizers, inputs, labels) -> None:
    """One of its training steps (lr schedule aside: the rates stay at their start)."""
    with torch.autocast("cpu", torch.bfloat16, enabled=ab.BF16):
        outputs = model(inputs, whiten_bias_grad=True)
    F.cross_entropy(outputs, labels, label_smoothing=0.2, reduction="sum").backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="airbench94_muon-profile.json")
    args = parser.parse_args()
    if not keep_freed_memory():
        parser.exit(
            2,
            "run without MALLOC_* variables (and off glibc nothing can be done): this "
            "script keeps freed memory itself, as the timed runs' variables do\n",
        )
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    model, optimizers, train_loader, test_loader = setup()

    start = time.perf_counter()
    batches = iter(train_loader)  # the first epoch: normalization, padding, flips and crops
    first = next(batches)
    augmentation_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step(model, optimizers, *first)

    def timed() -> float:
        seconds = 0.0
        for _ in range(args.steps):
            reserve_heap(RESERVE)
            start = time.perf_counter()
            with record_function(BATCHES):
                batch = next(batches)
            with record_function(STEP):
                step(model, optimizers, *batch)
            seconds += time.perf_counter() - start
        return seconds

    plain = timed()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = timed()
    seconds = split(prof.events())

    start = time.perf_counter()
    ab.evaluate(model, test_loader, tta_level=0)
    validation_s = time.perf_counter() - start
    start = time.perf_counter()
    ab.evaluate(model, test_loader, tta_level=2)
    tta_s = time.perf_counter() - start
    start = time.perf_counter()
    next(iter(train_loader))  # a later epoch: crops and the every-other-epoch flip only
    later_augmentation_s = time.perf_counter() - start

    parts = [
        {"phase": p, "kind": k, "ms_per_step": round(1e3 * s / args.steps, 3)}
        for (p, k), s in sorted(seconds.items(), key=lambda item: -item[1])
    ]
    result = {
        "recipe": "airbench94_muon (CPU patch)",
        "batch_size": train_loader.batch_size,
        "steps_per_epoch": len(train_loader),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ms_per_step": round(1e3 * wall / args.steps, 2),
        "unprofiled_ms_per_step": round(1e3 * plain / args.steps, 2),
        "first_epoch_augmentation_s": round(augmentation_s, 3),
        "later_epoch_augmentation_s": round(later_augmentation_s, 3),
        "validation_s": round(validation_s, 3),
        "tta_evaluation_s": round(tta_s, 3),
        "parts": parts,
    }
    print(
        f"{result['recipe']}, batch {result['batch_size']}, {result['steps_per_epoch']} steps an "
        f"epoch: {result['ms_per_step']:.1f} ms a step profiled, "
        f"{result['unprofiled_ms_per_step']:.1f} unprofiled; augmentation {augmentation_s:.2f} s "
        f"the first epoch, {later_augmentation_s:.2f} s a later one; validation "
        f"{validation_s:.2f} s, TTA evaluation {tta_s:.2f} s"
    )
    for key in ("phase", "kind"):
        largest = totals(result, key).items()
        print(f"by {key}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in largest))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
