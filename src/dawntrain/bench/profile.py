"""Where a training step's time goes: torch.profiler over the step fit() takes, each operator's
own time sorted into a phase (batching and augmentation, forward, backward, optimizer) and a kind
(convolution, matmul, BatchNorm, pooling, activation, copies and layout, elementwise, ...).

The step is throughput.py's: the preset's model, optimizer (Muon's Newton-Schulz runs inside the
optimizer phase) and augmentation on one batch of random images. Times are the operators' own
CPU time (self time: a parent's time is not counted again in its children's), so each phase and
kind adds up to the profiled wall time less the Python between operators, shown as "unattributed".
On a GPU the same split is of the host's time, which is not where the time goes: use the CUDA
profiler there.

The profiler's own records would split the freed blocks glibc reuses step after step
(runtime/malloc.py), and the profiled step would then fault fresh pages in and count the
zero-fills into them as copies (DavidNet 1.5x slower profiled, on Zen 4). So each step starts
with the heap's next pages made resident (reserve_heap, untimed), the same steps are timed
unprofiled first, and both times and page faults are reported: a profile is to be read only
where the two times agree.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dawntrain.bench.throughput import random_dataset
from dawntrain.config import Config
from dawntrain.engine.build import build
from dawntrain.engine.step import StepStats
from dawntrain.runtime.device import describe, resolve_device, synchronize
from dawntrain.runtime.malloc import freed_memory_kept, reserve_heap

BATCHES, STEP = "dawntrain.batches", "dawntrain.step"
# (kind, substrings of aten op names); the first match wins, so the order matters: a
# "convolution_backward" is a convolution, "native_batch_norm_backward" a BatchNorm. The
# convolutions models/conv.py runs as matmuls on small maps (matmul_conv) count as matmul.
KINDS = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "baddbmm")),
    ("batchnorm", ("batch_norm",)),
    ("pooling", ("pool",)),
    # relu_ runs as clamp_min_ (and would count as a reduction by its "min").
    ("activation", ("gelu", "relu", "silu", "threshold", "sigmoid", "tanh", "clamp_min")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "softmax")),
    ("copies and layout", (
        "copy_", "contiguous", "clone", "_to_copy", "aten::to", "cat", "stack", "pad", "flip",
        "index", "gather", "narrow", "slice", "permute", "reorder", "as_strided", "unfold", "im2col",
        "fill_", "zero_", "empty",
    )),
    ("reductions", ("sum", "mean", "norm", "max", "min", "argmax", "topk", "var", "std")),
    ("elementwise", (
        "add", "mul", "div", "sub", "lerp", "addcmul", "addcdiv", "sqrt", "pow", "neg", "exp",
        "where", "clamp", "sign", "bernoulli", "foreach", "eq", "ne", "lt", "gt", "isfinite",
    )),
)  # fmt: skip


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def phase_of(event) -> str:
    """The step phase an operator ran in, from the labels of the calls around it: torch labels
    optimizer steps "Optimizer.step#..." and autograd's work "autograd::engine::...", the bench
    labels the batches and the step."""
    phase = "other"
    parent = event.cpu_parent
    while parent is not None:
        name = parent.name
        if name.startswith("Optimizer.step") or name.startswith("Optimizer.zero_grad"):
            return "optimizer"
        if name.startswith("autograd::engine"):
            return "backward"
        if name == BATCHES:
            return "batching and augmentation"
        if name == STEP:
            phase = "forward"  # unless a label nearer the root said otherwise, as above
        parent = parent.cpu_parent
    return phase


def split(events) -> dict[tuple[str, str], float]:
    """Seconds of own time per (phase, kind) over the profiled operators (not the labels)."""
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.name in (BATCHES, STEP) or e.name.startswith(("Optimizer.", "autograd::engine")):
            continue
        if e.name.startswith("ProfilerStep") or e.device_type != torch.autograd.DeviceType.CPU:
            continue
        seconds[(phase_of(e), kind_of(e.name))] += e.self_cpu_time_total / 1e6
    return dict(seconds)


def run(config: Config, steps: int = 4, warmup: int = 2, image_size: int = 32) -> dict[str, Any]:
    """Profile `steps` training steps of `config` (after `warmup`, and after timing as many
    unprofiled) and split their time."""
    device = resolve_device(config.device)
    with freed_memory_kept(True, device.type == "cpu") as kept:
        return _run(config, device, steps, warmup, image_size, kept)


def _page_faults() -> int:
    try:
        import resource
    except ImportError:  # not Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _run(
    config: Config, device: torch.device, steps: int, warmup: int, image_size: int, kept: bool
) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = dataclasses.replace(config, device=str(device), val_from_train=0)
    run = build(cfg, random_dataset(cfg.batch_size, image_size))
    stats = StepStats.zeros(run.device)

    def one(i: int) -> None:
        epoch = i % cfg.epochs
        run.start_epoch(epoch)
        batches = iter(run.batches(epoch))
        while True:
            with record_function(BATCHES):
                batch = next(batches, None)
            if batch is None:
                break
            with record_function(STEP):
                run.step(stats, *batch, epoch, 0)

    def timed(first: int, reserve: bool) -> tuple[float, int]:
        """Seconds and page faults of `steps` steps from step `first`, each timed alone."""
        seconds, faults = 0.0, 0
        for i in range(first, first + steps):
            if reserve:
                reserve_heap()
            synchronize(device)
            faults -= _page_faults()
            start = time.perf_counter()
            one(i)
            synchronize(device)
            seconds += time.perf_counter() - start
            faults += _page_faults()
        return seconds, faults

    for i in range(warmup):
        one(i)
    # The unprofiled steps are those the profiled ones repeat (same epochs, same phases), on a
    # reserved heap too: as a long run's settled steps, which fault nothing in.
    plain, plain_faults = timed(warmup, reserve=kept)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, faults = timed(warmup, reserve=kept)
    seconds = split(prof.events())
    parts = [
        {"phase": p, "kind": k, "ms_per_step": round(1e3 * s / steps, 3), "share": s / wall}
        for (p, k), s in sorted(seconds.items(), key=lambda item: -item[1])
    ]
    attributed = sum(seconds.values())
    return {
        "preset": cfg.preset,
        "batch_size": cfg.batch_size,
        "precision": run.precision,
        "device": describe(device),
        "torch": torch.__version__,
        "steps": steps,
        "ms_per_step": round(1e3 * wall / steps, 2),
        "unprofiled_ms_per_step": round(1e3 * plain / steps, 2),
        "page_faults_per_step": round(faults / steps),
        "unprofiled_page_faults_per_step": round(plain_faults / steps),
        "heap_reserved": kept,
        "images_per_s": round(steps * cfg.batch_size / wall, 1),
        "unattributed_share": round(max(0.0, 1 - attributed / wall), 4),
        "parts": [{**r, "share": round(r["share"], 4)} for r in parts],
    }


def totals(result: dict[str, Any], key: str) -> dict[str, float]:
    """ms per step summed by `key` ("phase" or "kind"), largest first."""
    out: dict[str, float] = defaultdict(float)
    for r in result["parts"]:
        out[r[key]] += r["ms_per_step"]
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def format_table(result: dict[str, Any], top: int = 12) -> str:
    ms = result["ms_per_step"]
    plain = result["unprofiled_ms_per_step"]
    lines = [
        f"{result['preset']} batch {result['batch_size']} {result['precision']} on "
        f"{result['device']}, torch {result['torch']}: {ms:.1f} ms a step profiled, "
        f"{plain:.1f} unprofiled ({ms / plain:.2f}x); page faults a step "
        f"{result['page_faults_per_step']:,} profiled, {result['unprofiled_page_faults_per_step']:,} "
        "unprofiled",
    ]
    if ms > 1.1 * plain:
        lines.append(
            "  the profiled step is over 10% slower: read the shares with care (page faults "
            "count in whatever first writes fresh memory, mostly copies and fills)"
        )
    for key in ("phase", "kind"):
        lines.append(f"{'by ' + key:<28}{'ms/step':>9}{'share':>8}")
        for name, t in totals(result, key).items():
            lines.append(f"  {name:<26}{t:>9.1f}{t / ms:>8.0%}")
    lines.append(f"{'top (phase, kind)':<40}{'ms/step':>9}{'share':>8}")
    for r in result["parts"][:top]:
        lines.append(
            f"  {r['phase'] + ', ' + r['kind']:<38}{r['ms_per_step']:>9.1f}{r['share']:>8.0%}"
        )
    lines.append(
        f"  {'unattributed (Python, gaps)':<38}{'':>9}{result['unattributed_share']:>8.0%}"
    )
    return "\n".join(lines)
