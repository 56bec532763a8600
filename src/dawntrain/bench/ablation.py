"""Ablations of the `fast` recipe: each trick switched off, one at a time, against the preset.

Every row is a full training run (or N seeds of one) through `bench.accuracy`; the table puts
its test accuracy (with and without TTA) and wall time next to the preset's. The JSON is rewritten
after every row, so an interrupted ablation keeps the rows it finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dawntrain.analysis.flop_count import flops
from dawntrain.bench import accuracy
from dawntrain.config import Config, apply, resolve, validate
from dawntrain.engine.data_filter import proxy_model, proxy_passes
from dawntrain.files import atomic_write
from dawntrain.models import model_for

# Row name → the config changes that switch one trick off (or a function of the preset's config
# that returns them). TTA needs no run of its own: every row reports accuracy with and without it.
Changes = dict[str, Any] | Callable[[Config], dict[str, Any]]


def _optimizer_swapped(config: Config) -> dict[str, Any]:
    """Muon ↔ SGD: the keys where the `fast` and `fast-sgd` presets differ (lrs, schedule,
    lookahead), taken from the other one; the rest, --set values included, stays."""
    mine, other = ("fast", "fast-sgd") if config.optimizer == "muon" else ("fast-sgd", "fast")
    a, b = resolve(mine).to_dict(), resolve(other).to_dict()
    return {k: v for k, v in b.items() if a[k] != v and k != "preset"}


def _proxy_epoch_share(config: Config) -> float:
    """The proxy's FLOPs in an epoch (its proxy_passes, as run_flops counts them) as a share of a
    full unfiltered epoch's. At 32x32: the ratio of two networks of the same shape hardly moves
    with the side. 0 without a proxy."""
    if config.filter_by != "proxy":
        return 0.0
    shape = (3, 32, 32)
    proxy = flops(proxy_model(config, 10), shape) * proxy_passes(config)
    return proxy / (3 * flops(model_for(config, 10), shape))


def _plain_epochs(config: Config) -> int:
    """Epochs without data filtering at about a filtered config's FLOPs: an epoch with it costs
    filter_keep plus the proxy's share of one without (fast-budget: 10 filtered epochs for 8)."""
    return max(1, round(config.epochs * (config.filter_keep + _proxy_epoch_share(config))))


def _filtering_toggled(config: Config) -> dict[str, Any]:
    """Data filtering on or off at about the same FLOPs (_plain_epochs). Switched on, it is the
    preset's own filter where the preset has one, else the hardest 70% by a proxy."""
    if config.filter_keep:
        # filter_by back to its default too: a last-loss ranking needs a kept share.
        return {
            "filter_keep": 0.0,
            "filter_by": Config().filter_by,
            "epochs": _plain_epochs(config),
        }
    preset = resolve(config.preset)
    if preset.filter_keep:
        # Epochs scaled as the preset's own filtered run maps to its plain one, so that switching
        # twice comes back to the preset (10 -> 8 -> 10 for fast-budget, whatever the rounding).
        epochs = max(1, round(preset.epochs * config.epochs / _plain_epochs(preset)))
        return {"filter_keep": preset.filter_keep, "filter_by": preset.filter_by, "epochs": epochs}
    on = {"filter_keep": 0.7, "filter_by": "proxy"}  # fast-budget's first share
    cost = on["filter_keep"] + _proxy_epoch_share(apply(config, on, "ablation"))
    return {**on, "epochs": round(config.epochs / cost)}


ABLATIONS: dict[str, Changes] = {
    "preset": {},
    "no whitening": {"whiten": False},
    "no dirac init": {"dirac": False},
    "trained BN scale": {"frozen_bn_scale": False},
    "no bias lr scale": {"bias_lr_scale": 1.0},
    "no label smoothing": {"label_smoothing": 0.0},
    "lookahead toggled": lambda c: {"lookahead": not c.lookahead},
    "no alternating flip": {"alternate_flip": False},
    "pooling toggled": lambda c: {"ceil_pool": not c.ceil_pool},  # 16/8/4 maps ↔ 15/7/3
    "other optimizer": _optimizer_swapped,
    # Switched on, not off: the FLOP savings (docs/recipes.md), one at a time and together.
    # "budget": 0.258 PFLOP a run by `dawntrain summary`'s count with TTA on every image, 0.249
    # with the views for the 24% of test images below 0.6.
    "8 epochs": {"epochs": 8},  # airbench94_muon's length
    "progressive resizing": {"train_sizes": [24, 24, 28]},
    # Label smoothing 0.2 keeps the top probability below about 0.9, so thresholds near 1 take
    # the views for every image; `bench tta` on the 3 budget runs: 0.6 sends 24% of them through
    # the views, within 0.02 points of full TTA's accuracy on each (-0.01, +0.01, -0.02).
    "TTA where unsure": {"tta_below": 0.6},
    "budget": {
        "epochs": 8,
        "ceil_pool": False,
        "train_sizes": [24, 24, 28],
        "tta_below": 0.6,
        "eval_every": 0,  # validation only after the last epoch: it does not steer training
    },
    # hiverge's cifar10-speedrun changes to airbench94_muon, switched on one at a time and together
    # (measured against `fast-budget` before it took the first three: docs/benchmarks.md).
    "colour jitter": {"brightness": 0.14, "contrast": 0.13},
    "whitening bias 0.19 epochs": {"whiten_bias_epochs": 0.19},
    "SiLU": {"activation": "silu"},
    "3 Newton-Schulz iterations": {"muon_ns_steps": 3},
    "hiverge": {
        "brightness": 0.14,
        "contrast": 0.13,
        "whiten_bias_epochs": 0.19,
        "activation": "silu",
        "muon_ns_steps": 3,
    },
    # Measured against `fast-budget` at seed 0 and left off there (docs/recipes.md's table).
    "Muon norm every 8 steps": {"muon_norm_every": 8},  # hiverge's
    "whitening bias lr decay": {"whiten_bias_decay": True},  # hiverge's
    "clean last epoch": {"clean_last_epochs": 1},
    # airbench96_faster's data filtering (the model trains on the hardest share of each batch by
    # a 32/64/64 proxy), switched on at 70% or off, the epochs changed to keep the run's FLOPs.
    "data filtering toggled": _filtering_toggled,
    # airbench96's regularisers against a wide network's overfitting: 12-pixel Cutout with 4-pixel
    # crops (airbench94's 2); meant for `fast-wide`, whose crops are 4 pixels already.
    "cutout 12, 4-pixel crops": {"cutout": 12, "crop_padding": 4},
}


def run(
    config: Config,
    rows: list[str],
    runs: int,
    out_dir: Path,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    unknown = [r for r in rows if r not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; known: {', '.join(ABLATIONS)}")
    result: dict[str, Any] = {
        "preset": config.preset,
        "data": config.data,
        "runs": runs,
        "config": config.to_dict(),
        "rows": [],
    }
    for name in rows:
        changes = ABLATIONS[name]
        changes = changes(config) if callable(changes) else changes
        cfg = validate(apply(config, changes, f"ablation row '{name}'"))
        summary = accuracy.run(cfg, runs, out_dir / name.replace(" ", "-"))
        result["rows"].append(
            {
                "name": name,
                "changes": changes,
                "test_acc": summary["test_acc"]["mean"],
                "test_acc_tta": summary.get("test_acc_tta", {}).get("mean"),
                "wall_s": summary["wall_s"]["mean"],
                "flop_per_run": summary["flop_per_run"]["total"],
                "results": summary["results"],
            }
        )
        if on_row:
            on_row(result)
    return result


def format_table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    base = next((r for r in rows if r["name"] == "preset"), None)
    width = max([22, *(len(r["name"]) + 2 for r in rows)])
    lines = [
        f"{result['preset']} on {result['data']}, {result['runs']} run(s) per row",
        f"{'row':<{width}}{'test acc':>10}{'with TTA':>10}{'Δ TTA acc':>11}{'wall s':>8}{'PFLOP':>8}",
    ]
    for r in rows:
        tta = r["test_acc_tta"]
        delta = (
            f"{100 * (tta - base['test_acc_tta']):+.2f}"
            if base and tta is not None and base["test_acc_tta"] is not None
            else ""
        )
        lines.append(
            f"{r['name']:<{width}}{r['test_acc']:>10.4f}"
            + (f"{tta:>10.4f}" if tta is not None else f"{'':>10}")
            + f"{delta:>11}{r['wall_s']:>8.0f}"
            # Rows written before the FLOPs were kept have none.
            + (f"{r['flop_per_run'] / 1e15:>8.3f}" if r.get("flop_per_run") else "")
        )
    return "\n".join(lines)


def write(path: Path, result: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(result, indent=1).encode())
