"""fit(): the one training loop every preset runs.

Per step there is no host synchronisation: loss and correct counts accumulate on the device and
are read once per epoch. Data lives on the device as uint8; batches are augmented there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import dawntrain
from dawntrain.config import Config
from dawntrain.data.batches import (
    Normalizer,
    channel_stats,
    epoch_plan,
    eval_batches,
    generator,
    steps_per_epoch,
    train_batches,
)
from dawntrain.engine.lookahead import Lookahead
from dawntrain.engine.nonfinite import SkipNonFinite
from dawntrain.engine.optim import freeze_group, make_optimizer, set_lr, step_lr
from dawntrain.engine.schedules import Staircase, one_cycle
from dawntrain.errors import CheckpointError, DawntrainError
from dawntrain.models import model_for
from dawntrain.runtime import distributed
from dawntrain.runtime.device import (
    autocast,
    describe,
    resolve_precision,
    synchronize,
)
from dawntrain.runtime.malloc import freed_memory_kept
from dawntrain.train import checkpoint, guard, lock, signals
from dawntrain.train.log import MetricsLog

MAX = distributed.dist.ReduceOp.MAX
# Config keys that may differ between a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = {
    "out",
    "device",
    "quiet",
    "epochs",
    "checkpoint_every_steps",
    "data",
    "compile",
    "keep_checkpoints",
    "sanity_check",
    "on_nonfinite",
    "eval_batch_size",
    "dist_timeout_s",
}


class NonFiniteLoss(DawntrainError):
    """The loss became NaN or Inf."""


@dataclass
class Splits:
    """uint8 NHWC images and int64 labels for training, per-epoch validation and the final test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: list[str]


def make_splits(config: Config, dataset) -> Splits:
    """Hold out `val_from_train` training images (a fixed-seed choice) or validate on the test set."""
    x, y = dataset.train_images, dataset.train_labels
    k = config.val_from_train
    if k == 0:
        return Splits(
            x, y, dataset.test_images, dataset.test_labels, None, None, dataset.class_names
        )
    if k >= len(x):
        raise DawntrainError(f"val_from_train={k} leaves no training images (the set has {len(x)})")
    order = torch.randperm(len(x), generator=generator(config.seed, 0, 7)).numpy()
    val, train = np.sort(order[:k]), np.sort(order[k:])
    return Splits(
        x[train],
        y[train],
        x[val],
        y[val],
        dataset.test_images,
        dataset.test_labels,
        dataset.class_names,
    )


def make_schedule(config: Config):
    if config.lr_schedule == "staircase":
        return Staircase(config.lr, config.lr_milestones, config.lr_factor)
    warmup = None if config.warmup_epochs < 0 else config.warmup_epochs
    return one_cycle(config.lr, config.epochs, warmup, config.lr_start, config.lr_final)


def make_normalizer(config: Config, train_images: np.ndarray) -> Normalizer:
    if config.normalize == "samplewise":
        return Normalizer(None, None, samplewise=True)
    return Normalizer(*channel_stats(train_images))


def loss_fn(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, smoothing: float):
    """Cross-entropy summed over the batch (the original's convention) plus any model penalty."""
    loss = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=smoothing)
    if hasattr(model, "l2_penalty"):
        # A Keras-style penalty is added to the mean loss; the summed loss carries it B times.
        loss = loss + len(labels) * model.l2_penalty()
    return loss


def train_step(
    model: nn.Module,
    forward,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    label_smoothing: float = 0.0,
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a normalized batch; returns the (summed) loss and the logits.

    `grad_scale` = world size under DDP, whose mean over ranks then becomes the gradient of the
    loss summed over the global batch, exactly as one process with that batch computes it."""
    with autocast(x.device, precision):
        logits = forward(x)
    loss = loss_fn(model, logits, y, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * grad_scale if grad_scale != 1.0 else loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """Logits averaged over test-time views: level 1 adds the mirror image, level 2 also
    one-pixel translations (up-left and down-right, reflect-padded) of both."""
    logits = model(x)
    if level >= 1:
        logits = 0.5 * logits + 0.5 * model(x.flip(-1))
    if level >= 2:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
        translated = sum(0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted) / 2
        logits = 0.5 * logits + 0.5 * translated
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalizer: Normalizer,
    batch_size: int,
    precision: str,
    channels_last: bool = True,
    return_predictions: bool = False,
    tta_level: int = 0,
) -> dict[str, Any]:
    """Mean loss and accuracy with running BatchNorm statistics, in the run's precision."""
    was_training = model.training
    model.eval()
    device = images.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    predictions = []
    for x, y in eval_batches(images, labels, batch_size):
        with autocast(device, precision):
            logits = tta_logits(model, normalizer(x, channels_last), tta_level)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        if return_predictions:
            predictions.append(pred)
    model.train(was_training)
    totals = distributed.all_reduce_(
        torch.stack([loss_sum, correct.double(), torch.tensor(len(labels), device=device).double()])
    ).tolist()
    n = max(1, totals[2])
    out = {"loss": totals[0] / n, "acc": totals[1] / n}
    if return_predictions:
        out["predictions"] = torch.cat(predictions).cpu().numpy() if predictions else np.array([])
    return out


@torch.no_grad()
def sanity_check(model, images, labels, normalizer, precision, num_classes, channels_last) -> str:
    """Evaluate the untrained model on a few batches: its accuracy should be about chance.

    BatchNorm uses batch statistics (its running averages are still the init's 0 and 1, which
    would blow activations up through the residual sums); the model's state is restored after.
    """
    # A random subset: test sets are often sorted by class, and the first 512 may hold 5 classes.
    pick = torch.randperm(len(labels), generator=generator(0, 0, 5))[:512].to(labels.device)
    saved, was_training = copy.deepcopy(model.state_dict()), model.training
    # eval() first, then BN back to train(): eval() on a parent reaches every child, so setting
    # modules one by one in modules() order would leave the BN layers in eval mode after all.
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(pick), 256):
        x, y = images[pick[i : i + 256]], labels[pick[i : i + 256]]
        with autocast(images.device, precision):
            logits = model(normalizer(x, channels_last))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.load_state_dict(saved)
    model.train(was_training)
    n = max(1, len(pick))
    acc, loss = correct / n, loss_sum / n
    chance = 1.0 / num_classes
    message = (
        f"sanity check: untrained accuracy expected ≈ {chance:.4f} (1/{num_classes}), got "
        f"{acc:.4f}; loss expected ≈ {math.log(num_classes):.3f}, got {loss:.3f}"
    )
    # Far off chance before training means labels, data or model are broken (or the set is tiny).
    far = abs(acc - chance) > max(0.1, 3 * math.sqrt(chance * (1 - chance) / n))
    if far or loss > 3 * math.log(num_classes):
        message = "WARNING: " + message + " — far from chance: check labels, preprocessing and init"
    return message


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


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of torch's global generator for one step (dropout masks draw from it)."""
    return int(np.random.SeedSequence([seed, epoch, step, rank, 11]).generate_state(1)[0])


def fit(
    config: Config,
    resume: str | None = None,
    dataset=None,
    stream=None,
) -> dict[str, Any]:
    """Train as `config` says, writing the run directory; returns the final metrics.

    Under torchrun every rank calls this; rank 0 alone prints and writes files.
    """
    world = distributed.setup(config.device, config.dist_timeout_s)
    try:
        # `cleanup` releases the run lock and restores signal handlers however _fit ends.
        with contextlib.ExitStack() as cleanup:
            return _fit(config, world, resume, dataset, stream or sys.stdout, cleanup)
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


def _fit(config: Config, world, resume, dataset, stream, cleanup) -> dict[str, Any]:
    say = (
        (lambda *a: print(*a, file=stream, flush=True))
        if world.is_main and not config.quiet
        else (lambda *a: None)
    )
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = world.device
    precision = resolve_precision(config.precision, device)
    cleanup.enter_context(freed_memory_kept(config.keep_freed_memory, device.type == "cpu"))
    out = Path(config.out) if config.out else default_out(config)
    out = Path(distributed.broadcast_object(str(out)))  # one timestamped name for every rank
    ckpt_dir = out / "checkpoints"
    cleanup.enter_context(lock.run_lock(out, world))  # one run at a time writes `out`

    dataset = guard.checked_dataset(config, dataset)
    splits = make_splits(config, dataset)
    num_classes = len(splits.class_names)
    batch = config.batch_size * (world.size if config.batch_scope == "per_rank" else 1)
    if batch > len(splits.train_labels):
        raise DawntrainError(
            f"batch_size {batch} is larger than the training set "
            f"({len(splits.train_labels)} images); lower it with --batch-size"
        )
    if batch < world.size:
        raise DawntrainError(f"a global batch of {batch} cannot feed {world.size} ranks")
    normalizer = make_normalizer(config, splits.train_images)
    to_dev = lambda a: torch.as_tensor(np.ascontiguousarray(a)).to(device)  # noqa: E731
    train_x, train_y = to_dev(splits.train_images), to_dev(splits.train_labels).long()
    val_x, val_y = to_dev(splits.val_images), to_dev(splits.val_labels).long()
    n_train = len(train_y)
    data_s = time.perf_counter() - t_start

    model = model_for(config, num_classes)
    if config.sync_bn and world.active:
        model = distributed.convert_sync_batchnorm(model, device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    if hasattr(model, "init_from_data"):
        # Whitening filters from (up to) 5,000 training images, identically on every resume.
        subset = train_x[torch.randperm(n_train, generator=generator(config.seed, 0, 3))[:5000]]
        model.init_from_data(normalizer(subset, config.channels_last))
    optimizer = make_optimizer(model, config, batch)
    lookahead = Lookahead(model) if config.lookahead else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    schedule = make_schedule(config)
    forward = model
    if world.active:
        ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        forward = torch.compile(forward)

    steps = steps_per_epoch(n_train, batch, world.size)
    start_epoch, start_step, elapsed, history = 0, 0, 0.0, []
    partial = None
    if resume:
        state = checkpoint.load(checkpoint.resolve_resume(resume, out), map_location=device)
        # Keys added since the checkpoint was written count as their defaults.
        saved = {**Config().to_dict(), **state["config"]}
        differs = checkpoint.config_differences(saved, config.to_dict(), RESUMABLE_CHANGES)
        if differs:
            raise CheckpointError(
                f"the checkpoint belongs to another config ({'; '.join(differs)}); resume "
                "with its own config: `dawntrain train --resume RUN` and no other config option"
            )
        if state["step_in_epoch"] and state.get("world_size", 1) != world.size:
            raise CheckpointError(
                f"this checkpoint is from inside an epoch at world size {state.get('world_size', 1)}; "
                f"resume it with that many processes, or from an epoch checkpoint at any size"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if lookahead is not None:
            lookahead.load_state_dict(state["lookahead"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        elapsed, history = state["elapsed_s"], json.loads(state["history"])
        partial = state.get("partial") if world.size == 1 else None
        if partial is not None and len(partial) == 4:  # written before the skipped-step count
            partial = torch.cat([partial[:3], partial.new_zeros(1), partial[3:]])
        say(f"resuming from epoch {start_epoch} step {start_step} of {out}")

    log = MetricsLog(None, quiet=True)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.toml", config.to_toml())
        metrics_path = out / "metrics.jsonl"
        # Rewrite the log from the checkpoint, so epochs run after it (lost in a crash) vanish.
        write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))
        log = MetricsLog(metrics_path, quiet=config.quiet, stream=stream)
    # analysis imports the loop's helpers, so it is imported here, not at the top.
    from dawntrain.analysis.probe import probe_during_training
    from dawntrain.analysis.report import TensorBoardLogger, write_report

    tb = TensorBoardLogger(out, config) if config.tensorboard and world.is_main else None
    env = {**environment(device, precision), "world_size": world.size}
    say(
        f"{config.preset}: {n_train} training images, {len(val_y)} validation, "
        f"{num_classes} classes, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{env['device']}, {precision}" + (f", {world.size} ranks" if world.active else "")
    )
    shard = slice(world.rank, None, world.size)
    if config.sanity_check and not resume:
        say(
            sanity_check(
                model, val_x, val_y, normalizer, precision, num_classes, config.channels_last
            )
        )

    def save(epoch: int, step_in_epoch: int, sums: torch.Tensor | None, name: str | None) -> None:
        if world.is_main:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "lookahead": lookahead.state_dict() if lookahead is not None else {},
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "world_size": world.size,
                "elapsed_s": elapsed,
                "history": json.dumps(history),
                "config": config.to_dict(),
                "normalizer": normalizer.state(),
                "class_names": list(splits.class_names),
                "image_size": list(splits.train_images.shape[1:3]),
                "version": dawntrain.__version__,
            }
            if sums is not None:
                state["partial"] = sums.detach().cpu()
            checkpoint.save(ckpt_dir / "last.pt", state)
            if name:
                checkpoint.save(ckpt_dir / name, state)
                glob = config.checkpoint_name.split("{")[0] + "*.pt"
                checkpoint.prune(ckpt_dir, glob, config.keep_checkpoints)
        # No rank runs ahead of a checkpoint that it might have to resume from.
        distributed.barrier()

    def eval_on(images: torch.Tensor, labels: torch.Tensor, tta_level: int = 0) -> dict:
        return evaluate(
            model,
            images[shard],
            labels[shard],
            normalizer,
            config.eval_batch_size,
            precision,
            config.channels_last,
            tta_level=tta_level,
        )

    aug = config.crop_padding > 0 or config.flip
    total_steps = steps * config.epochs
    skipper = SkipNonFinite(model, optimizer) if config.on_nonfinite == "skip-step" else None
    stop = cleanup.enter_context(signals.StopSignals(world))  # Ctrl-C: finish the step, save, exit
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        model.train()
        t0 = time.perf_counter()
        plan = epoch_plan(
            n_train,
            config.seed,
            epoch,
            config.crop_padding,
            config.flip,
            device,
            config.alternate_flip,
        )
        if 0 < config.whiten_bias_epochs <= epoch:
            freeze_group(optimizer, "whiten_bias")
        # loss sum, correct, examples (of finite steps), non-finite steps, the first one (-1: none)
        sums = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0], device=device, dtype=torch.float64)
        if partial is not None:
            sums, partial = partial.to(device), None
        bar = tqdm(
            total=steps,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            leave=False,
            file=sys.stderr,
            disable=config.quiet or not world.is_main or not sys.stderr.isatty(),
        )
        batches = train_batches(
            train_x,
            train_y,
            plan,
            batch,
            config.crop_padding,
            aug,
            start_step,
            world.rank,
            world.size,
        )
        for step, (x, y) in enumerate(batches, start=start_step):
            global_step = epoch * steps + step
            torch.manual_seed(step_seed(config.seed, epoch, step, world.rank))
            set_lr(optimizer, step_lr(config.convention, schedule(global_step / steps), batch))
            if skipper is not None:
                skipper.save()
            loss, logits = train_step(
                model,
                forward,
                optimizer,
                scaler,
                normalizer(x, config.channels_last),
                y,
                precision,
                config.label_smoothing,
                grad_scale=world.size,
            )
            with torch.no_grad():
                bad = ~torch.isfinite(loss)
                if skipper is not None:
                    if world.active:  # every rank skips when any rank's loss is not finite
                        bad = distributed.all_reduce_(bad.float(), MAX) > 0
                    skipper.undo_if(bad)
            if lookahead is not None:
                lookahead.step(global_step + 1, total_steps)
            with torch.no_grad():
                sums[4] = torch.where(bad & (sums[4] < 0), float(global_step), sums[4])
                sums[3] += bad
                sums[0] += torch.where(bad, 0.0, loss.detach())
                sums[1] += (~bad) * (logits.argmax(1) == y).sum()
                sums[2] += (~bad) * len(y)
            bar.update()
            every = config.checkpoint_every_steps
            at_checkpoint = bool(every) and (step + 1) % every == 0
            stopping = stop.should_stop(at_checkpoint)
            if (at_checkpoint or stopping) and step + 1 < steps:
                if config.on_nonfinite == "stop":
                    check_finite(sums, steps)
                save(epoch, step + 1, sums if world.size == 1 else None, None)
                if stopping:
                    bar.close()
                    raise stop.interrupted(out, epoch, step + 1, steps)
        bar.close()
        start_step = 0
        distributed.all_reduce_(sums[:3])
        distributed.all_reduce_(sums[3:], op=MAX)
        check_finite(sums, steps, config.on_nonfinite)
        synchronize(device)
        train_s = time.perf_counter() - t0
        last = epoch + 1 == config.epochs
        if last or (config.eval_every and (epoch + 1) % config.eval_every == 0):
            val = eval_on(val_x, val_y)
        else:  # on a CPU a validation pass costs several percent of a short recipe's epoch
            val = {"loss": None, "acc": None}
        elapsed += time.perf_counter() - t0
        loss_sum, correct, count, skipped, _ = sums.tolist()
        metrics = {
            "epoch": epoch + 1,
            "lr": round(schedule(epoch + 1), 6),
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "train_s": round(train_s, 3),
            "epoch_s": round(time.perf_counter() - t0, 3),
            "elapsed_s": round(elapsed, 3),
        }
        if skipper is not None:
            metrics["skipped_steps"] = int(skipped)
        if config.probe_every and (epoch + 1) % config.probe_every == 0 and world.is_main:
            # A fixed, unaugmented batch, so the curvature curve compares epoch to epoch.
            metrics.update(
                probe_during_training(
                    model,
                    lambda z, t: loss_fn(model, z, t, config.label_smoothing),
                    normalizer(train_x[:batch], config.channels_last),
                    train_y[:batch],
                    config.convention,
                )
            )
        history.append(metrics)
        log.write(metrics)
        if tb is not None:
            tb.log(metrics)
        save(epoch + 1, 0, None, config.checkpoint_name.format(epoch=epoch + 1))
        if stop.should_stop(True) and epoch + 1 < config.epochs:
            raise stop.interrupted(out, epoch + 1, 0, steps)
    stop.restore()
    if tb is not None:
        tb.close()

    final = dict(history[-1]) if history else {}
    if lookahead is not None:
        lookahead.finish()
    test_x, test_y = val_x, val_y
    if splits.test_images is not None:
        test_x, test_y = to_dev(splits.test_images), to_dev(splits.test_labels).long()
    if lookahead is not None or splits.test_images is not None or config.tta_level:
        # The final weights differ from the last epoch's (EMA) or the test set is new: evaluate.
        test = eval_on(test_x, test_y)
        final.update(test_loss=test["loss"], test_acc=test["acc"])
        line = f"test loss {test['loss']:.4f}  test acc {test['acc']:.4f}"
        if config.tta_level:
            tta = eval_on(test_x, test_y, config.tta_level)
            final.update(test_loss_tta=tta["loss"], test_acc_tta=tta["acc"])
            line += f"  with TTA (level {config.tta_level}) {tta['acc']:.4f}"
        say(line)
        if lookahead is not None:
            save(config.epochs, 0, None, None)  # last.pt holds the weights that were evaluated
    summary = {
        "final": final,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "data_s": round(data_s, 3),
        "train_wall_s": round(time.perf_counter() - t_run, 3),
        "train_images": n_train,
        "epochs": config.epochs,
        "environment": env,
    }
    if world.is_main:
        checkpoint.atomic_write(
            out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode())
        )
        if config.report:
            try:
                write_report(out, data=dataset, device=str(device))
            except Exception as e:  # a figure that fails must not fail a finished run
                warnings.warn(f"could not write {out / 'report.html'}: {e}", stacklevel=1)
    say(f"run written to {out}")
    return {**final, "out": str(out)}


def write_atomic(path: Path, text: str) -> None:
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def check_finite(sums: torch.Tensor, steps: int, on_nonfinite: str = "stop") -> None:
    """Raise NonFiniteLoss for a non-finite loss (stop), or for an epoch of only skipped steps."""
    first_bad = int(sums[4].item())
    if first_bad < 0:
        return
    where = f"step {first_bad} (epoch {first_bad // steps + 1}, step {first_bad % steps + 1} of {steps})"
    if on_nonfinite == "stop":
        raise NonFiniteLoss(
            f"the loss became NaN or Inf at {where}; the last good checkpoint is kept. "
            "Lower the lr, check the data, or pass --on-nonfinite skip-step"
        )
    if sums[2].item() == 0:
        raise NonFiniteLoss(
            f"every step of epoch {first_bad // steps + 1} had a NaN or Inf loss and was skipped; "
            "the last good checkpoint is kept. Lower the lr or check the data"
        )
