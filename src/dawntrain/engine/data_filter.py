"""Data filtering: the model trains on the hardest share of each batch, as ranked by a small proxy
network (airbench96_faster) or by the model's own last loss on each image (`filter_by`).

The proxy, a narrow FastNet, scores every training batch in a forward pass; the model then trains
only on the `filter_keep` share with the highest proxy loss (a share moving linearly to
`filter_keep_end` over the run, where that is set). The proxy learns alongside: every
`filter_train_every` steps it trains on its own hardest share, at the model's lr. A step then
costs the model about filter_keep of a full one and the proxy a tenth of that, so the same FLOPs
buy more epochs (airbench96_faster: 45 epochs of half batches for 96%).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dawntrain.data.batches import resized
from dawntrain.engine.optim import fade_group, freeze_group, make_optimizer, set_lr
from dawntrain.models import FastNet
from dawntrain.runtime import distributed
from dawntrain.runtime.device import autocast, memory_format


def in_full_epochs(config, progress: float) -> bool:
    """Whether `progress` (the training done, 0 to 1) falls in the first config.filter_full_epochs
    epochs, in which every image trains."""
    # 1e-9: an epoch's first step can land a rounding error under its epoch number.
    return progress * config.epochs < config.filter_full_epochs - 1e-9


def kept_share(config, progress: float) -> float:
    """The share of a batch the model trains on at `progress` (the training done, 0 to 1): all of
    it in_full_epochs, else config.filter_keep, moving linearly to config.filter_keep_end where
    that is set."""
    if in_full_epochs(config, progress):
        return 1.0
    end = config.filter_keep_end or config.filter_keep
    return config.filter_keep + (end - config.filter_keep) * progress


def kept_count(config, n: int, progress: float = 0.0) -> int:
    """How many of a batch of n the model trains on at `progress` (kept_share, at least one)."""
    return min(n, max(1, round(kept_share(config, progress) * n)))


def ranked_keep(
    config, score: torch.Tensor, progress: float, y: torch.Tensor | None = None
) -> torch.Tensor:
    """Sorted positions of the share of a batch to train on, by `score` (higher: harder): every
    position in_full_epochs; after them the kept share at `progress` below the config.filter_skip
    share of the very hardest, which neither trains; its last config.filter_random share drawn at
    random from the images the rest leaves (from the generator the step seeded). With
    config.filter_per_class, the hardest of each class by the labels `y`, each class keeping
    about the same share."""
    n, c = len(score), config
    if in_full_epochs(c, progress):
        return torch.arange(n, device=score.device)
    if c.filter_per_class:
        return per_class_keep(score, y, kept_count(c, n, progress))
    skip = round(c.filter_skip * n)
    count = min(kept_count(c, n, progress), n - skip)
    drawn = min(round(c.filter_random * n), count)
    ranked = score.topk(skip + count - drawn, sorted=bool(skip)).indices
    keep = ranked[skip:]
    if drawn:
        left = torch.ones(n, dtype=torch.bool, device=score.device)
        left[ranked] = False
        rest = left.nonzero().squeeze(1)
        keep = torch.cat([keep, rest[torch.randperm(len(rest), device=score.device)[:drawn]]])
    return keep.sort().values


def per_class_keep(score: torch.Tensor, y: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted positions of the `count` images to keep, the hardest by `score` within each class of
    `y`, each class keeping the same share of its images (up to rounding): each image is placed by
    its rank in its class over the class's size, and the `count` lowest places are kept."""
    hardest_first = score.argsort(descending=True, stable=True)
    grouped = hardest_first[y[hardest_first].argsort(stable=True)]  # by class, hardest first
    sizes = torch.bincount(y)
    starts = sizes.cumsum(0) - sizes
    rank = torch.empty_like(grouped)
    rank[grouped] = torch.arange(len(y), device=y.device) - starts[y[grouped]]
    place = (rank + 0.5) / sizes[y]
    return place.argsort(stable=True)[:count].sort().values


def proxy_model(config, num_classes: int) -> FastNet:
    """The proxy a config describes: FastNet at config.filter_widths with the model's activation,
    pooling and whitening eps (its whitening, dirac init and frozen BatchNorm scale always on)."""
    return FastNet(
        widths=tuple(config.filter_widths),
        num_classes=num_classes,
        ceil_pool=config.ceil_pool,
        activation=config.activation,
        whiten_eps=config.whiten_eps,
    )


def proxy_passes(config) -> float:
    """The proxy's work on each training image in forward passes: it scores every image (1) and,
    on every filter_train_every-th step, back-propagates through the batch (2 more)."""
    return 1 + 2 / config.filter_train_every


class BatchFilter:
    """What a run asks of a data filter: `pick` a batch's share to train on, `observe` the
    model's logits on it, and a state for the checkpoint; the hooks here do nothing."""

    def __init__(self, config):
        self.config = config

    def keep_count(self, n: int, progress: float = 0.0) -> int:
        return kept_count(self.config, n, progress)

    def freeze_whiten_bias(self, drop_grads: bool) -> None:
        """The filter's own whitening bias, where it has one, frozen with the model's."""

    def fade_whiten_bias(self, factor: float) -> None:
        """The filter's own whitening bias's lr, where it has one, faded with the model's."""

    def observe(self, index: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """The model's logits on the kept images (training-set positions `index`) before its
        step."""


class HardExampleFilter(BatchFilter):
    """The proxy, its optimizer and `pick`, which scores a batch and returns the positions to
    train on. `forward` is the proxy as called (DDP-wrapped under torchrun, so that every rank's
    proxy takes the same steps)."""

    def __init__(
        self,
        model: FastNet,
        forward,
        config,
        batch: int,
        precision: str,
        grad_scale: float = 1.0,
        ns_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config)
        self.model, self.forward = model, forward
        self.precision, self.grad_scale = precision, grad_scale
        self.optimizer = make_optimizer(model, config, batch, ns_dtype)
        self.scaler = torch.amp.GradScaler(
            next(model.parameters()).device.type, enabled=precision == "fp16"
        )

    def freeze_whiten_bias(self, drop_grads: bool) -> None:
        freeze_group(self.optimizer, "whiten_bias", drop_grads=drop_grads)

    def fade_whiten_bias(self, factor: float) -> None:
        fade_group(self.optimizer, "whiten_bias", factor)

    def pick(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        lr: float,
        global_step: int,
        progress: float = 0.0,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sorted positions in the (normalized, augmented) batch x (`index`, the images' places
        in the training set, is not needed) of its hardest share by the proxy's
        config.filter_score (kept_share at `progress`, the share of training done; below
        the config.filter_skip share of the very hardest, which neither trains; its last
        config.filter_random share drawn at random from the images the rest leaves), the proxy
        seeing x at config.filter_side where x is larger; on every filter_train_every-th global
        step the proxy also trains on them, its loss summed over them as the model's is."""
        c = self.config
        learn = global_step % c.filter_train_every == 0
        if c.filter_side and x.shape[-1] > c.filter_side:
            x = resized(x, c.filter_side)
        self.model.train()
        with torch.set_grad_enabled(learn), autocast(x.device, self.precision):
            logits = self.forward(x)
        logits = logits.float()
        losses = F.cross_entropy(logits, y, reduction="none", label_smoothing=c.label_smoothing)
        score = losses
        if c.filter_score == "cross_entropy" and c.label_smoothing:
            score = filter_losses(c, logits, y)
        keep = ranked_keep(c, score.detach(), progress, y)
        if learn:
            set_lr(self.optimizer, lr)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses[keep].sum() * self.grad_scale).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return keep

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


def filter_losses(config, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each image's loss as config.filter_score ranks it: the label-smoothed loss the networks
    train on, or the unsmoothed cross-entropy."""
    smoothing = 0.0 if config.filter_score == "cross_entropy" else config.label_smoothing
    return F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)


# Above any loss a model reaches, so that images the model has not trained on yet rank hardest.
UNSEEN = 1e6


class LastLossFilter(BatchFilter):
    """Ranks each batch by the model's own loss on each image the last time it trained on it,
    the images it has not trained on yet first, in random order: no proxy, so no passes beyond
    the model's (Loshchilov & Hutter, "Online Batch Selection for Faster Training of Neural
    Networks", 2015: rank by the latest known loss). An image left out keeps its old loss, which
    the model's falling losses leave ever higher in the ranking, so none stays out for long, but
    the ranking drifts towards the least recently trained; filter_by = last_loss_ratio records
    each loss over the mean of its step's to take that drift out, so the images it leaves out
    stay out: on fast-budget, the easiest 24% of the set from epoch 3 on, which the model still
    gets right at the end (docs/benchmarks-log.md, 2026-12-06 late). Under torchrun every rank
    records every rank's losses, so all hold the same table. At the proxy's 70% both ranked below
    it on fast-budget (docs/benchmarks-log.md: Zen 3, and the ratio on Zen 5 too, 2026-12-06); the
    ratio at 75%, which the FLOPs saved on the proxy pay for, scored level with it in less time
    and is the preset's."""

    def __init__(self, config, n_train: int, world, batch: int):
        super().__init__(config)
        self.world = world
        self.batch = batch
        self.last_loss = torch.full((n_train,), float("nan"), device=world.device)

    def pick(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        lr: float,
        global_step: int,
        progress: float = 0.0,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sorted positions in the batch to train on, ranked as ranked_keep ranks, by each
        image's (dataset position `index`) last recorded loss."""
        last = self.last_loss[index]
        unseen = UNSEEN + torch.rand(len(y), device=last.device)  # the step seeded the generator
        score = torch.where(last.isnan(), unseen, last)
        return ranked_keep(self.config, score, progress, y)

    def observe(self, index: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Records the model's losses (its logits before the step) on the images it trained on,
        at their dataset positions `index` (with filter_by = last_loss_ratio, over their mean);
        a non-finite loss leaves the old one."""
        losses = filter_losses(self.config, logits.detach(), y)
        if self.world.active:
            index, losses = distributed.all_gather_indexed(index, losses, self.batch)
        ok = losses.isfinite()
        if self.config.filter_by == "last_loss_ratio":
            losses = losses / losses[ok].mean().clamp_min(1e-12)
        self.last_loss[index[ok]] = losses[ok]

    def state_dict(self) -> dict[str, Any]:
        return {"last_loss": self.last_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_loss.copy_(state["last_loss"])


def build(
    config,
    num_classes: int,
    whitening_images: torch.Tensor | None,
    world,
    batch: int,
    precision: str,
    ns_dtype: torch.dtype = torch.float32,
    n_train: int = 0,
) -> BatchFilter | None:
    """The filter config.filter_keep asks for (None: off): the proxy on the world's device, its
    whitening from the model's images, under torchrun wrapped in DDP (its gradients averaged over
    ranks, so every rank's proxy takes the same steps), compiled where the model is."""
    if not config.filter_keep:
        return None
    if config.filter_by != "proxy":
        return LastLossFilter(config, n_train, world, batch)
    proxy = proxy_model(config, num_classes)
    proxy = proxy.to(device=world.device, memory_format=memory_format(config.channels_last))
    proxy.init_from_data(whitening_images)
    forward = distributed.data_parallel(proxy, world)
    if config.compile:
        forward = torch.compile(forward)
    return HardExampleFilter(proxy, forward, config, batch, precision, world.size, ns_dtype)
