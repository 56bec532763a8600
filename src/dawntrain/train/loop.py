"""fit(): the one training loop every preset runs.

The engine builds the run and takes each step; the loop walks epochs and steps, validates,
checkpoints and stops cleanly on a signal. Everything optional is a callback (train/callbacks.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dawntrain
from dawntrain.config import Config, checkpoint_file_name
from dawntrain.engine.build import Run, build, run_data
from dawntrain.engine.step import StepStats
from dawntrain.errors import ConfigError, DawntrainError
from dawntrain.files import atomic_write
from dawntrain.runtime import distributed
from dawntrain.runtime.device import describe, synchronize
from dawntrain.runtime.malloc import freed_memory_kept
from dawntrain.train import best, checkpoint, init_from, lock, signals
from dawntrain.train.callbacks import Callback, Callbacks, LoopState, default_callbacks
from dawntrain.train.log import ConsoleLog


class NonFiniteLoss(DawntrainError):
    """The loss became NaN or Inf."""


def fit(
    config: Config,
    resume: str | None = None,
    dataset=None,
    stream=None,
    callbacks: list[Callback] = (),
) -> dict[str, Any]:
    """Train as `config` says, writing the run directory; returns the final metrics.

    `resume`: a checkpoint, a run directory, `last` (config.out's last.pt) or `auto`, which
    continues from config.out's last checkpoint when there is one and starts fresh when there is
    none, so that one command serves the first start and every restart (config.auto_resume does
    the same). `callbacks` run after the built-in ones (sanity check, checkpoints, progress,
    metrics log); the CLI adds dawntrain.analysis.callbacks.for_config(config) (probe,
    TensorBoard, report). Under torchrun every rank calls this; rank 0 alone prints and writes
    files."""
    if resume is None and config.auto_resume:
        resume = "auto"
    if resume == "auto" and not config.out:
        raise ConfigError(
            "automatic resume (--resume auto, auto_resume = true) needs a fixed run directory: "
            "pass --out RUN (or set out in the config); without it every start would write a "
            "new runs/<preset>-<timestamp> and never find the last checkpoint"
        )
    world = distributed.setup(config.device, config.dist_timeout_s)
    try:
        # `cleanup` releases the run lock and restores signal handlers however training ends.
        with contextlib.ExitStack() as cleanup:
            return _fit(config, world, resume, dataset, stream or sys.stdout, callbacks, cleanup)
    except (RuntimeError, OSError) as e:
        # A collective that fails because a peer died should end every rank with one clear line.
        if world.active and not isinstance(e, DawntrainError):
            raise distributed.RankLost(
                f"rank {world.rank} of {world.size}: another rank stopped or the connection "
                f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "the last checkpoint is intact, resume with --resume"
            ) from e
        raise
    finally:
        distributed.cleanup(world)


def _fit(config, world, resume, dataset, stream, extra, cleanup) -> dict[str, Any]:
    t_start = time.perf_counter()
    quiet = config.quiet or not world.is_main
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=stream, flush=True))
    torch.manual_seed(config.seed)  # the model's initial weights
    cleanup.enter_context(freed_memory_kept(config.keep_freed_memory, world.device.type == "cpu"))
    out = Path(config.out) if config.out else default_out(config)
    out = Path(distributed.broadcast_object(str(out)))  # one timestamped name for every rank
    if world.is_main:  # what the console shows, kept in RUN/console.log too (appended)
        stream = cleanup.enter_context(contextlib.closing(ConsoleLog(stream, out / "console.log")))
    cleanup.enter_context(lock.run_lock(out, world))  # one run at a time writes `out`
    dataset = run_data(config, dataset)
    data_s = time.perf_counter() - t_start

    run = build(config, dataset, world)
    state = LoopState(out=out, say=say, dataset=dataset, best=best.for_config(config))
    start_from(run, state, resume)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.toml", config.to_toml())
        # Rewrite the log from the checkpoint, so epochs run after it (lost in a crash) vanish.
        write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in state.history))
    callbacks = Callbacks([*default_callbacks(run, out, stream), *extra])
    cleanup.callback(callbacks, "close")
    env = {**environment(run.device, run.precision), "world_size": world.size}
    say(describe_run(run, env))
    callbacks("on_fit_start", run, state)

    # Ctrl-C, SIGTERM: finish the step, save, exit (ranks agree within config.stop_check_s).
    stop = cleanup.enter_context(signals.StopSignals(world, config.stop_check_s))
    t_run = time.perf_counter()
    for epoch in range(state.epoch, config.epochs):
        state.epoch_t0 = time.perf_counter()
        state.epoch, state.stats = epoch, state.stats or StepStats.zeros(run.device)
        run.start_epoch(epoch)
        callbacks("on_epoch_start", run, state)
        for x, y in run.batches(epoch, state.step):
            run.step(state.stats, x, y, epoch, state.step)
            state.step += 1
            callbacks("on_step_end", run, state)
            stopping = stop.after_step(state.checkpoint_due)
            if (state.checkpoint_due or stopping) and state.step < run.steps:
                save(run, state, partial=True)
                if stopping:
                    raise stop.interrupted(out, epoch, state.step, run.steps)
            state.checkpoint_due = False
        metrics = end_epoch(run, state)
        callbacks("on_epoch_metrics", run, state, metrics)
        state.history.append(metrics)
        callbacks("on_epoch_end", run, state, metrics)
        state.epoch, state.step, state.stats, state.epoch_time_s = epoch + 1, 0, None, 0.0
        name = checkpoint_file_name(config.checkpoint_name, metrics)
        save(run, state, name=name, is_best=state.best is not None and state.best.improves(metrics))
        if stop.should_stop(True) and epoch + 1 < config.epochs:
            raise stop.interrupted(out, epoch + 1, 0, run.steps)
    stop.restore()

    final = test(run, state)
    times = {"wall_s": time.perf_counter() - t_start, "data_s": data_s}
    summary = write_summary(
        run, state, final, env, {**times, "train_wall_s": time.perf_counter() - t_run}
    )
    callbacks("on_fit_end", run, state, summary)
    say(f"run written to {out}")
    return {**final, "out": str(out)}


def write_summary(
    run: Run, state: LoopState, final: dict[str, Any], env: dict[str, Any], times: dict[str, float]
) -> dict[str, Any]:
    """RUN/summary.json (on the main rank): the final metrics, the times, the environment,
    the resumes, the best epoch and the checkpoint the run started from, where there are."""
    summary = {
        "final": final,
        **{k: round(v, 3) for k, v in times.items()},
        "train_images": len(run.train_y),
        "epochs": run.config.epochs,
        "environment": env,
        "resumes": state.resumes,
    }
    if state.best is not None:
        summary["best"] = state.best.summary()
        state.say(state.best.line())
    if state.init_from is not None:
        summary["init_from"] = state.init_from
    if run.world.is_main:
        write_text(state.out / "summary.json", json.dumps(summary, indent=2))
    return summary


def start_from(run: Run, state: LoopState, resume: str | None) -> None:
    """Fresh, or from the checkpoint `resume` names; `auto`: the run directory's last one if
    there is one, else fresh."""
    if resume == "auto":
        # Rank 0 looks, so that every rank takes the same decision even on a lagging filesystem.
        found = checkpoint.find_last(state.out) if run.world.is_main else None
        found = distributed.broadcast_object(None if found is None else str(found))
        restart = restart_count()
        if found is None:
            state.say(
                f"auto resume: {restart_line(restart)}no checkpoint in {state.out}, starting fresh"
            )
        else:
            resume_into(run, state, Path(found), restart)
    elif resume:
        resume_into(run, state, checkpoint.resolve_resume(resume, state.out))
    if not state.resumed and run.config.init_from:
        state.init_from = init_from.load_weights(run, run.config.init_from, state.say)


def resume_into(run: Run, state: LoopState, path: Path, restart: int | None = None) -> None:
    """Load a checkpoint of the same config into the run and the loop's state. A checkpoint from
    inside an epoch resumes at any world size: the rest of the epoch's order is split over the
    ranks there are now; `restart` (auto resume): the launcher's restart count, if any."""
    saved = checkpoint.load(path, map_location=run.device)
    world = run.world
    checkpoint.check_resumable(saved, run.config, world.size)
    run.load_state_dict(saved)
    state.epoch, state.step = saved["epoch"], saved["step_in_epoch"]
    state.elapsed_s, state.history = saved["elapsed_s"], json.loads(saved["history"])
    state.epoch_time_s = saved.get("epoch_time_s", 0.0)
    state.resumes = json.loads(saved.get("resumes", "[]"))
    state.best = best.restored(run.config, saved.get("best"), state.say)
    state.init_from = json.loads(saved["init_from"]) if "init_from" in saved else None
    saved_size = saved.get("world_size", 1)
    if state.step:
        state.stats = resumed_stats(saved, world, run.device)
    state.resumed = True
    where = f"epoch {state.epoch} step {state.step}" if state.step else f"epoch {state.epoch}"
    sizes = f"written by {saved_size} rank(s), now {world.size}"
    if restart is None:
        state.say(f"resuming from {where} of {state.out} ({sizes})")
    else:
        state.say(f"auto resume: {restart_line(restart)}resuming from {path}, {where} ({sizes})")
    state.resumes.append(
        {
            "checkpoint": str(path),
            "epoch": state.epoch,
            "step_in_epoch": state.step,
            "world_size_saved": saved_size,
            "world_size": world.size,
            "restart_count": restart,
        }
    )


def resumed_stats(saved: dict[str, Any], world: distributed.World, device) -> StepStats:
    """The interrupted epoch's sums so far, for this rank: its own at the world size that wrote
    them (so the epoch's metrics come out bitwise the same), else the global sums on rank 0 and
    none on the others, so that the epoch's all_reduce still counts each step once. Checkpoints
    written before the global sums were gathered hold them only at one process."""
    rows = saved.get("partial_ranks")
    if rows is not None and len(rows) == world.size:
        return StepStats.from_checkpoint(rows[world.rank], device)
    partial = saved.get("partial")
    if partial is None:
        return StepStats.zeros(device)
    return StepStats.from_checkpoint(partial, device, counted=world.is_main)


def restart_count() -> int | None:
    """How many times the launcher restarted this job: torchrun's TORCHELASTIC_RESTART_COUNT,
    else Slurm's SLURM_RESTART_COUNT (requeues); None when started by neither."""
    for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def restart_line(restart: int | None) -> str:
    return "" if restart is None else f"restart {restart}, "


def save(
    run: Run,
    state: LoopState,
    partial: bool = False,
    name: str | None = None,
    is_best: bool = False,
) -> None:
    """RUN/checkpoints/last.pt (and `name`, pruned to the newest keep_checkpoints, and best.pt
    where `is_best`) on the main rank; inside an epoch (`partial`) with the epoch's sums so far,
    over all ranks and per rank. Every rank calls this: the sums are gathered, and a barrier
    follows the write."""
    blob_partial = {}
    if partial:
        rows = state.stats.gathered()
        total = StepStats.combine(rows)
        if run.config.on_nonfinite == "stop":
            check_finite(total, run.steps)  # on every rank alike: all of them stop
        blob_partial["partial"] = total.sums.detach().cpu()
        if run.world.active:
            blob_partial["partial_ranks"] = rows.detach().cpu()
    if run.world.is_main:
        blob = {
            **run.state_dict(),
            "epoch": state.epoch,
            "step_in_epoch": state.step if partial else 0,
            "world_size": run.world.size,
            "elapsed_s": state.elapsed_s,
            # Inside an epoch: its training time so far, so a resumed epoch's times are whole.
            "epoch_time_s": state.epoch_time_s + time.perf_counter() - state.epoch_t0
            if partial
            else 0.0,
            "history": json.dumps(state.history),
            "resumes": json.dumps(state.resumes),
            **blob_partial,
        }
        if state.best is not None:
            blob["best"] = state.best.to_json()
        if state.init_from is not None:
            blob["init_from"] = json.dumps(state.init_from)
        directory = state.out / "checkpoints"
        # best.pt before last.pt: a crash between them resumes from the previous last.pt, whose
        # record is no better than the best.pt on disk.
        if is_best:
            checkpoint.save(directory / best.FILE, blob)
        checkpoint.save(directory / "last.pt", blob)
        if name:
            checkpoint.save(directory / name, blob)
            pattern = run.config.checkpoint_name.split("{")[0] + "*.pt"
            checkpoint.prune(directory, pattern, run.config.keep_checkpoints)
    # No rank runs ahead of a checkpoint that it might have to resume from.
    distributed.barrier()


def end_epoch(run: Run, state: LoopState) -> dict[str, Any]:
    """The epoch's metrics: its sums over ranks, and validation when it is due. Its times
    include the part of the epoch run before a resume from inside it."""
    c, epoch = run.config, state.epoch
    state.stats.all_reduce()
    check_finite(state.stats, run.steps, c.on_nonfinite)
    synchronize(run.device)
    t0 = state.epoch_t0 - state.epoch_time_s
    train_s = time.perf_counter() - t0
    last = epoch + 1 == c.epochs
    due = last or (c.eval_every and (epoch + 1) % c.eval_every == 0)
    if last and final_test_on_val(run):
        # The final test would evaluate the validation images again: the last epoch takes its
        # figures from that pass's plain views, and its times include the test's TTA.
        state.test_metrics = final_test_metrics(run, state)
        val = {k: state.test_metrics[f"test_{k}"] for k in ("loss", "acc", "top5")}
        ema_val = {
            f"ema_val_{k}": state.test_metrics[f"ema_test_{k}"]
            for k in ("loss", "acc", "top5")
            if run.ema is not None
        }
    elif due:  # on a CPU a validation pass costs several percent of a short recipe's epoch
        val = run.evaluate(run.val_x, run.val_y)
        ema_val = ema_metrics(run, "val", run.val_x, run.val_y)
    else:
        val, ema_val = {"loss": None, "acc": None, "top5": None}, ema_metrics(run, "val")
    state.elapsed_s += time.perf_counter() - t0
    sums = state.stats.read()
    metrics = {
        "epoch": epoch + 1,
        "lr": round(run.schedule(epoch + 1), 6),
        "train_loss": sums["loss_sum"] / sums["examples"],
        "train_acc": sums["correct"] / sums["examples"],
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        "val_top5": val["top5"],
        **ema_val,
        "train_s": round(train_s, 3),
        "epoch_s": round(time.perf_counter() - t0, 3),
        "elapsed_s": round(state.elapsed_s, 3),
    }
    if c.train_sizes:
        metrics["train_side"] = run.train_side(epoch)
    if run.skipper is not None:
        metrics["skipped_steps"] = int(sums["nonfinite"])
    return metrics


def test(run: Run, state: LoopState) -> dict[str, Any]:
    """The final metrics: the last epoch's, plus the test set's (with TTA where configured) when
    the final weights differ from the last validated ones or the test set is new."""
    final = dict(state.history[-1]) if state.history else {}
    c = run.config
    if run.lookahead is not None:
        run.lookahead.finish()
    if run.lookahead is None and run.splits.test_images is None and not c.tta_level:
        return final
    metrics = state.test_metrics or final_test_metrics(run, state)
    final.update(metrics)
    for name in ("test", "ema_test") if run.ema is not None else ("test",):
        line = f"test loss {metrics[f'{name}_loss']:.4f}  test acc {metrics[f'{name}_acc']:.4f}"
        line += f"  top-5 {metrics[f'{name}_top5']:.4f}"
        if c.tta_level:
            line += f"  with TTA (level {c.tta_level}) {metrics[f'{name}_acc_tta']:.4f}"
        state.say(f"EMA weights: {line}" if name == "ema_test" else line)
    if run.lookahead is not None:
        save(run, state)  # last.pt holds the weights that were evaluated
    return final


def final_test_on_val(run: Run) -> bool:
    """Whether the final test evaluates the weights of the last epoch on its validation images
    (no test split, no lookahead to finish) with views that validation does not take (TTA)."""
    c = run.config
    return run.splits.test_images is None and run.lookahead is None and bool(c.tta_level)


def final_test_metrics(run: Run, state: LoopState) -> dict[str, Any]:
    """split_metrics of the test set, with TTA where configured, for the weights and their EMA."""
    x, y = run.test_set()
    out: dict[str, Any] = {}
    for ema in (False, True) if run.ema is not None else (False,):
        # The raw weights' probabilities are last.pt's on the test set: the report's predictions
        # take them instead of a second pass (one process holds them all; under DDP a shard).
        keep = not ema and not run.world.active
        metrics = split_metrics(run, "test", x, y, run.config.tta_level, ema, probabilities=keep)
        if keep:
            state.test_probabilities = metrics.pop("probabilities")
        out.update(metrics)
    return out


def split_metrics(
    run: Run,
    split: str,
    x: torch.Tensor,
    y: torch.Tensor,
    tta_level: int = 0,
    ema: bool = False,
    probabilities: bool = False,
) -> dict[str, Any]:
    """{split}_loss, {split}_acc and {split}_top5 of the weights (`ema`: of their EMA, named
    ema_{split}_...) on (x, y), then the same three with _tta for `tta_level`, from one pass;
    `probabilities`: also the pass's class probabilities (with TTA), under "probabilities"."""
    name = f"ema_{split}" if ema else split
    result = run.evaluate(x, y, tta_level, ema=ema, with_plain=True, probabilities=probabilities)
    passes = {"": result.get("plain", result)} | ({"_tta": result} if tta_level else {})
    out = {f"{name}_{k}{sfx}": r[k] for sfx, r in passes.items() for k in ("loss", "acc", "top5")}
    if tta_level and run.config.tta_below < 1.0:
        out[f"{name}_tta_fraction"] = result["tta_fraction"]
    if probabilities:
        out["probabilities"] = result["probabilities"]
    return out


def ema_metrics(run: Run, split: str, x=None, y=None) -> dict[str, Any]:
    """The EMA's split_metrics on (x, y); its names with None where x is None (not evaluated);
    {} for a run without EMA."""
    if run.ema is None:
        return {}
    if x is None:
        return dict.fromkeys((f"ema_{split}_loss", f"ema_{split}_acc", f"ema_{split}_top5"))
    return split_metrics(run, split, x, y, ema=True)


def check_finite(stats: StepStats, steps: int, on_nonfinite: str = "stop") -> None:
    """Raise NonFiniteLoss for a non-finite loss (stop), or for an epoch of only skipped steps."""
    first_bad = int(stats.sums[StepStats.FIRST_NONFINITE].item())
    if first_bad < 0:
        return
    where = f"step {first_bad} (epoch {first_bad // steps + 1}, step {first_bad % steps + 1} of {steps})"
    if on_nonfinite == "stop":
        raise NonFiniteLoss(
            f"the loss became NaN or Inf at {where}; the last good checkpoint is kept. "
            "Lower the lr, check the data, or pass --on-nonfinite skip-step"
        )
    if stats.sums[StepStats.EXAMPLES].item() == 0:
        raise NonFiniteLoss(
            f"every step of epoch {first_bad // steps + 1} had a NaN or Inf loss and was skipped; "
            "the last good checkpoint is kept. Lower the lr or check the data"
        )


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def default_out(config: Config) -> Path:
    return Path("runs") / f"{config.preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def environment(device: torch.device, precision: str) -> dict[str, Any]:
    return {
        "device": describe(device),
        "precision": precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "dawntrain": dawntrain.__version__,
        "platform": platform.platform(),
    }


def describe_run(run: Run, env: dict[str, Any]) -> str:
    params = sum(p.numel() for p in run.model.parameters())
    ranks = f", {run.world.size} ranks" if run.world.active else ""
    c = run.config
    side = f" at {c.filter_side}x{c.filter_side} at most" if c.filter_side else ""
    hardest = [c.filter_keep, *([c.filter_keep_end] if c.filter_keep_end else [])]
    share = " to ".join(f"{s - c.filter_random:.0%}" for s in hardest)
    share += f" after the {c.filter_skip:.0%} hardest, skipped," if c.filter_skip else ""
    share += f" and a random {c.filter_random:.0%} of the rest" if c.filter_random else ""
    n_full = c.filter_full_epochs
    full = f" after {n_full} epoch{'s' * (n_full > 1)} on every image" if n_full else ""
    ranker = (
        f"a {'/'.join(map(str, c.filter_widths))} proxy{side}"
        if c.filter_by == "proxy"
        else "its own loss when it last trained on each image"
    )
    kept = (
        f"\ndata filtering: the model trains{full} on the hardest {share} of each batch by "
        f"{ranker}; train_loss and train_acc count those images"
        if c.filter_keep
        else ""
    )
    return (
        f"{c.preset}: {len(run.train_y)} training images, {len(run.val_y)} validation, "
        f"{run.num_classes} classes, {params:,} parameters, {env['device']}, {run.precision}{ranks}"
        f"{kept}"
    )
