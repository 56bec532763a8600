"""One setup for every command: `build(config, dataset)` makes a `Run` (the data splits on the
device, the normalizer, the model with DDP/compile, the optimizer exactly as training uses it,
the scaler, the schedule, lookahead, the EMA of the weights), and `Run.step` is the training step. fit(), the lr probe,
the sample plots and the throughput bench all build through here; eval and predict load a
checkpoint's model through `model_on_device`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import dawntrain
from dawntrain import seeds
from dawntrain.config import Config
from dawntrain.data import ImageDataset, checked
from dawntrain.data.batches import (
    Normalizer,
    batch_positions,
    channel_stats,
    color_jitter,
    cutout,
    cutout_plan,
    epoch_order,
    epoch_plan,
    jitter_plan,
    resized,
    steps_per_epoch,
    train_batches,
    train_side,
)
from dawntrain.engine import data_filter, muon
from dawntrain.engine.ema import ModelEMA
from dawntrain.engine.evaluate import evaluate
from dawntrain.engine.lookahead import Lookahead
from dawntrain.engine.nonfinite import SkipNonFinite
from dawntrain.engine.optim import fade_group, freeze_group, make_optimizer, set_lr, step_lr
from dawntrain.engine.schedules import Staircase, one_cycle
from dawntrain.engine.self_distill import PastPredictions
from dawntrain.engine.step import StepStats, loss_fn, train_step
from dawntrain.errors import DawntrainError
from dawntrain.models import input_size, model_for
from dawntrain.runtime import distributed
from dawntrain.runtime.device import memory_format, resolve_precision


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


def run_data(config: Config, source: str | ImageDataset | None = None) -> ImageDataset:
    """The data a run of `config` trains and is evaluated on: `source` (default config.data)
    loaded and checked; a loaded source must have the model's input size unless config.resize,
    which resizes it; an ImageDataset passed in code is used at its size, labels checked."""
    what = f"the {config.preset} preset (model {config.model})"
    return checked(
        config.data if source is None else source,
        side=input_size(config),
        resize=config.resize,
        what=what,
        workers=config.workers or None,
    )


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
    order = torch.randperm(len(x), generator=seeds.generator(config.seed, 0, seeds.VAL_SPLIT))
    val, train = np.sort(order[:k].numpy()), np.sort(order[k:].numpy())
    return Splits(
        x[train], y[train], x[val], y[val], dataset.test_images, dataset.test_labels,
        dataset.class_names,
    )  # fmt: skip


def make_schedule(config: Config) -> Callable[[float], float]:
    """lr as a function of the (fractional) epoch, in the config's lr convention."""
    if config.lr_schedule == "staircase":
        return Staircase(config.lr, config.lr_milestones, config.lr_factor)
    warmup = None if config.warmup_epochs < 0 else config.warmup_epochs
    return one_cycle(config.lr, config.epochs, warmup, config.lr_start, config.lr_final)


def shaped_by_epochs(config: Config) -> list[str]:
    """What in a run of `config` depends on config.epochs from its first step on (empty:
    nothing), so that resuming it with other epochs would not continue the same run."""
    shaped = []
    if config.lr_schedule == "one_cycle":
        shaped.append("its one_cycle lr schedule is shaped by the epochs (it ends at the last one)")
    if config.lookahead:
        shaped.append("lookahead's averaging grows with the fraction of the epochs done")
    return shaped


def make_normalizer(config: Config, train_images: np.ndarray) -> Normalizer:
    if config.normalize == "samplewise":
        return Normalizer(None, None, samplewise=True)
    return Normalizer(*channel_stats(train_images))


def global_batch(config: Config, world_size: int) -> int:
    return config.batch_size * (world_size if config.batch_scope == "per_rank" else 1)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array)).to(device)


def model_on_device(config: Config, num_classes: int, device: torch.device) -> nn.Module:
    """The config's model on the device in the config's memory layout (not yet initialised
    from data: see Run)."""
    fmt = memory_format(config.channels_last)
    return model_for(config, num_classes).to(device=device, memory_format=fmt)


@dataclass
class Run:
    """Everything a training step needs, built once; `forward` is the model as the step calls
    it (DDP and/or compiled), `model` the bare module."""

    config: Config
    world: distributed.World
    precision: str
    splits: Splits
    normalizer: Normalizer
    model: nn.Module
    forward: Callable
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Callable[[float], float]
    lookahead: Lookahead | None
    skipper: SkipNonFinite | None
    batch: int  # the global batch
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    # The loss the step minimises; tests wrap it to inject non-finite losses.
    loss: Callable = field(default=loss_fn)
    ema: ModelEMA | None = None  # config.ema: an average of the weights, evaluated beside them
    # config.filter_keep: what picks the share of each batch the model trains on (config.filter_by).
    filter: data_filter.BatchFilter | None = None
    # config.self_distill: each image's last predictions, mixed into its target.
    distill: PastPredictions | None = None

    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def num_classes(self) -> int:
        return len(self.splits.class_names)

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return steps_per_epoch(len(self.train_y), self.batch, self.world.size)

    def batches(
        self, epoch: int, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (uint8 augmented images, labels) of each step of `epoch` from start_step."""
        c = self.config
        pad = 0 if self.clean(epoch) else c.crop_padding
        plan = epoch_plan(
            len(self.train_y), c.seed, epoch, pad, c.flip, self.device, c.alternate_flip
        )
        augment = pad > 0 or c.flip
        return train_batches(
            self.train_x, self.train_y, plan, self.batch, pad, augment, start_step,
            self.world.rank, self.world.size,
        )  # fmt: skip

    def clean(self, epoch: int) -> bool:
        """Whether 0-based `epoch` is one of config.clean_last_epochs: no crop, jitter or Cutout."""
        return epoch >= self.config.epochs - self.config.clean_last_epochs

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def freeze_when_due(self, epochs_done: float) -> None:
        """Freeze the whitening bias once `epochs_done` (fractional: steps / steps an epoch)
        reaches config.whiten_bias_epochs; before that, with config.whiten_bias_decay, scale its
        lr down linearly to 0 there. The step asks before each update, so a resumed run (whose
        restored parameters still require gradients) freezes before its first one."""
        c = self.config
        if 0 < c.whiten_bias_epochs <= epochs_done:
            freeze_group(self.optimizer, "whiten_bias", drop_grads=not self.world.active)
            if self.filter is not None:
                self.filter.freeze_whiten_bias(drop_grads=not self.world.active)
        elif c.whiten_bias_decay:
            factor = 1 - epochs_done / c.whiten_bias_epochs
            fade_group(self.optimizer, "whiten_bias", factor)
            if self.filter is not None:
                self.filter.fade_whiten_bias(factor)

    def train_side(self, epoch: int) -> int:
        """The side of the images the model trains on in 0-based `epoch` (config.train_sizes;
        the data's own side after them). train_x is NHWC."""
        return train_side(self.config.train_sizes, epoch, self.train_x.shape[1])

    def inputs(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """This rank's uint8 batch of (epoch, step) as the model trains on it: normalized, colour
        jittered (config.brightness, contrast), cut out (config.cutout), resized
        (config.train_sizes)."""
        c = self.config
        x = self.normalizer(x, c.channels_last)
        n = len(self.train_y)
        pos = batch_positions(n, self.batch, step, self.world.rank, self.world.size)
        clean = self.clean(epoch)
        if (c.brightness or c.contrast) and not clean:
            shift, scale = jitter_plan(n, c.seed, epoch, c.brightness, c.contrast)
            x = color_jitter(x, shift[pos].to(x.device), scale[pos].to(x.device))
        if c.cutout and not clean:
            top, left = cutout_plan(n, c.seed, epoch, c.cutout, x.shape[-1])
            x = cutout(x, top[pos], left[pos], c.cutout)
        if c.train_sizes:
            x = resized(x, self.train_side(epoch))
        return x

    def dataset_index(self, epoch: int, step: int) -> torch.Tensor:
        """The training-set position of each image of this rank's batch at (epoch, step)."""
        n = len(self.train_y)
        pos = batch_positions(n, self.batch, step, self.world.rank, self.world.size)
        return epoch_order(n, self.config.seed, epoch)[pos].to(self.device)

    def step(
        self, stats: StepStats, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int
    ) -> None:
        """One optimizer step on a uint8 batch at (epoch, step), added to `stats`."""
        c, steps = self.config, self.steps
        global_step = epoch * steps + step
        torch.manual_seed(seeds.step_seed(c.seed, epoch, step, self.world.rank))
        self.freeze_when_due(global_step / steps)
        lr = step_lr(c.convention, self.schedule(global_step / steps), self.batch)
        set_lr(self.optimizer, lr)
        if self.skipper is not None:
            self.skipper.save()
        x = self.inputs(x, epoch, step)
        progress = global_step / (steps * c.epochs)
        if self.filter is not None or self.distill is not None:
            index = self.dataset_index(epoch, step)
        if self.filter is not None:
            keep = self.filter.pick(x, y, lr, global_step, progress, index)
            x, y = x[keep].contiguous(memory_format=memory_format(c.channels_last)), y[keep]
            index = index[keep]
        target = y if self.distill is None else self.distill.targets(index, y, progress)
        loss, logits = train_step(
            self.model, self.forward, self.optimizer, self.scaler, x, target, self.precision,
            c.label_smoothing, grad_scale=self.world.size, loss=self.loss,
        )  # fmt: skip
        if self.filter is not None:
            self.filter.observe(index, logits, y)
        if self.distill is not None:
            self.distill.observe(index, logits)
        with torch.no_grad():
            bad = ~torch.isfinite(loss)
            if self.skipper is not None:
                if self.world.active:  # every rank skips when any rank's loss is not finite
                    bad = distributed.all_reduce_(bad.float(), distributed.MAX) > 0
                self.skipper.undo_if(bad)
        if self.lookahead is not None:
            self.lookahead.step(global_step + 1, steps * c.epochs)
        if self.ema is not None:  # the weights as the step left them: undone, pulled by lookahead
            self.ema.step(global_step + 1)
        stats.add(loss, logits, y, bad, global_step)

    def evaluate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        tta_level: int = 0,
        ema: bool = False,
        with_plain: bool = False,
        probabilities: bool = False,
    ) -> dict:
        """Loss and accuracies over all ranks, each evaluating its shard; `ema`: of the EMA of
        the weights instead of the weights; `with_plain`, `probabilities` (this rank's shard's):
        engine.evaluate's."""
        shard = slice(self.world.rank, None, self.world.size)
        c = self.config
        return evaluate(
            self.ema.module if ema else self.model, images[shard], labels[shard], self.normalizer, c.eval_batch_size,
            self.precision, c.channels_last, tta_level=tta_level, tta_below=c.tta_below,
            with_plain=with_plain, probabilities=probabilities,
        )  # fmt: skip

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The final test images: the data set's test split, else the validation images."""
        if self.splits.test_images is None:
            return self.val_x, self.val_y
        return to_device(self.splits.test_images, self.device), to_device(
            self.splits.test_labels, self.device
        ).long()

    def state_dict(self) -> dict[str, Any]:
        """The run's weights and optimizer state, plus what inference needs to use the model;
        `ema`, where the run keeps one, the averaged weights as a state dict of the model."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else {},
            "config": self.config.to_dict(),
            "normalizer": self.normalizer.state(),
            "class_names": list(self.splits.class_names),
            "image_size": list(self.splits.train_images.shape[1:3]),
            "version": dawntrain.__version__,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.filter is not None:
            state["filter"] = self.filter.state_dict()
        if self.distill is not None:
            state["distill"] = self.distill.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state["lookahead"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.filter is not None:
            self.filter.load_state_dict(state["filter"])
        if self.distill is not None:
            self.distill.load_state_dict(state["distill"])


def build(
    config: Config,
    dataset,
    world: distributed.World | None = None,
) -> Run:
    """The run `config` describes on `dataset` (an ImageDataset, already checked) for this
    process of `world` (None: one process on config.device). The model's initial weights come
    from torch's global generator: seed it first (fit() seeds it with config.seed)."""
    world = world or distributed.World.single(config.device)
    device = world.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    splits = make_splits(config, dataset)
    batch = global_batch(config, world.size)
    if batch > len(splits.train_labels):
        raise DawntrainError(
            f"batch_size {batch} is larger than the training set "
            f"({len(splits.train_labels)} images); lower it with --batch-size"
        )
    if batch < world.size:
        raise DawntrainError(f"a global batch of {batch} cannot feed {world.size} ranks")
    normalizer = make_normalizer(config, splits.train_images)
    train_x, train_y = (
        to_device(splits.train_images, device),
        to_device(splits.train_labels, device),
    )
    val_x, val_y = to_device(splits.val_images, device), to_device(splits.val_labels, device)
    model = model_for(config, len(splits.class_names))
    if config.sync_bn and world.active:
        model = distributed.convert_sync_batchnorm(model, device)
    model = model.to(device=device, memory_format=memory_format(config.channels_last))
    whitening_images = None
    if hasattr(model, "init_from_data") or config.filter_keep:
        # Whitening filters from (up to) 5,000 training images, identically on every resume.
        pick = torch.randperm(
            len(train_y), generator=seeds.generator(config.seed, 0, seeds.WHITEN_SUBSET)
        )
        whitening_images = normalizer(train_x[pick[:5000]], config.channels_last)
    if hasattr(model, "init_from_data"):
        model.init_from_data(whitening_images)
    precision = resolve_precision(config.precision, device)
    ns = muon.ns_dtype(config.muon_precision, device.type)
    optimizer = make_optimizer(model, config, batch, ns)
    # Built after the model, so that its initial weights do not depend on the filter.
    hard_filter = data_filter.build(
        config, len(splits.class_names), whitening_images, world, batch, precision, ns,
        len(train_y),
    )  # fmt: skip
    forward = distributed.data_parallel(model, world)
    if config.compile:
        forward = torch.compile(forward)
    # Copied after DDP's construction, which broadcasts rank 0's weights into every rank's model.
    ema = ModelEMA(model, config.ema, config.ema_every, config.ema_warmup) if config.ema else None
    distill = None
    if config.self_distill:
        distill = PastPredictions(
            config.self_distill, len(train_y), len(splits.class_names), world, batch
        )
    return Run(
        config=config,
        world=world,
        precision=precision,
        splits=splits,
        normalizer=normalizer,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        schedule=make_schedule(config),
        lookahead=Lookahead(model) if config.lookahead else None,
        skipper=SkipNonFinite(model, optimizer) if config.on_nonfinite == "skip-step" else None,
        batch=batch,
        train_x=train_x,
        train_y=train_y.long(),
        val_x=val_x,
        val_y=val_y.long(),
        ema=ema,
        filter=hard_filter,
        distill=distill,
    )
