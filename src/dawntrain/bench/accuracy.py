"""Accuracy over seeds: N full training runs of a preset, summarized.

Data preparation (decode, cache) is timed once, separately from the runs' own wall time, which
starts with the data already decoded, as a second run of the tool would. Where the cache already
held the decoded source, the summary says so (`data_from_cache`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from dawntrain.analysis.callbacks import for_config
from dawntrain.analysis.flop_count import run_flops
from dawntrain.config import Config
from dawntrain.data import default_cache_dir
from dawntrain.engine.build import run_data
from dawntrain.models import model_for
from dawntrain.train.loop import fit


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def run(config: Config, runs: int, out_dir: Path, target: float | None = None) -> dict[str, Any]:
    cache = default_cache_dir() / "arrays"
    before = set(cache.iterdir()) if cache.is_dir() else set()
    t = time.perf_counter()
    dataset = run_data(config)  # as fit() would load it: checked, resized if configured
    data_s = time.perf_counter() - t
    # A warm cache answers in milliseconds: say so rather than report the decode as free.
    cached = cache.is_dir() and not set(cache.iterdir()) - before
    results = []
    for i in range(runs):
        cfg = dataclasses.replace(
            config, seed=config.seed + i, out=str(out_dir / f"seed{config.seed + i}"), quiet=True
        )
        t = time.perf_counter()
        final = fit(cfg, dataset=dataset, callbacks=for_config(cfg))
        wall = time.perf_counter() - t
        history = [
            json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
        ]
        reached = next(
            (m["epoch"] for m in history if target and (m.get("val_acc") or 0) >= target), None
        )
        results.append(
            {
                "seed": cfg.seed,
                "test_acc": final.get("test_acc", final.get("val_acc")),
                "test_acc_tta": final.get("test_acc_tta"),
                "test_tta_fraction": final.get("test_tta_fraction"),
                "ema_test_tta_fraction": final.get("ema_test_tta_fraction"),
                "wall_s": round(wall, 1),
                "first_epoch_at_target": reached,
            }
        )
        print(
            f"seed {cfg.seed}: test acc {results[-1]['test_acc']:.4f}"
            + (
                f", with TTA {results[-1]['test_acc_tta']:.4f}"
                if results[-1]["test_acc_tta"]
                else ""
            )
            + f", {wall:.0f} s",
            flush=True,
        )
    summary = {
        "preset": config.preset,
        "data": config.data,
        "runs": runs,
        "flop_per_run": _run_flops(config, dataset, results),
        "data_preparation_s": round(data_s, 1),
        "data_from_cache": cached,
        "test_acc": _stats([r["test_acc"] for r in results]),
        "wall_s": _stats([r["wall_s"] for r in results]),
        "target": target,
        "results": results,
        "config": config.to_dict(),
    }
    if all(r["test_acc_tta"] is not None for r in results):
        summary["test_acc_tta"] = _stats([r["test_acc_tta"] for r in results])
    return summary


def _run_flops(config: Config, dataset, results: list[dict[str, Any]]) -> dict[str, int]:
    """run_flops of the config's model on this data, split as fit() splits it; with TTA only
    where unsure (tta_below), at the runs' mean measured share of images that took it (the
    EMA's own share for its test)."""
    n_train, side = len(dataset.train_labels), dataset.train_images.shape[1]
    n_val = config.val_from_train or len(dataset.test_labels)
    n_test = len(dataset.test_labels) if config.val_from_train else None
    model = model_for(config, len(dataset.class_names))

    def mean_share(key: str) -> float | None:
        shares = [r[key] for r in results if r.get(key) is not None]
        return sum(shares) / len(shares) if shares else None

    share = mean_share("test_tta_fraction")
    share = 1.0 if share is None else share
    n_train -= config.val_from_train
    return run_flops(
        model,
        config,
        (3, side, side),
        n_train,
        n_val,
        n_test,
        share,
        ema_tta_fraction=mean_share("ema_test_tta_fraction"),
    )


def format_summary(s: dict[str, Any]) -> str:
    def line(name: str, st: dict[str, float], fmt: str = "{:.4f}") -> str:
        return f"{name:<16}" + "  ".join(f"{k} {fmt.format(v)}" for k, v in st.items())

    prep = f"data preparation {s['data_preparation_s']} s, once"
    if s.get("data_from_cache"):
        prep += "; decoded earlier, read from the cache: remove its entry to time the decode"
    lines = [f"{s['preset']} on {s['data']}, {s['runs']} runs ({prep})"]
    if "flop_per_run" in s:
        pflop = s["flop_per_run"]["total"] / 1e15
        lines.append(f"{'PFLOP/run':<16}{pflop:.3f} (public convention: docs/benchmarks.md)")
    lines.append(line("test acc", s["test_acc"]))
    if "test_acc_tta" in s:
        lines.append(line("test acc (TTA)", s["test_acc_tta"]))
    lines.append(line("wall s/run", s["wall_s"], "{:.0f}"))
    if s["target"]:
        lines.append(
            f"first epoch at {s['target']}: {[r['first_epoch_at_target'] for r in s['results']]}"
        )
    return "\n".join(lines)
