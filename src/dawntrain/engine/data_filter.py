"""Data filtering (airbench96_faster): a small proxy network picks the hardest share of each batch.

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


def kept_share(config, progress: float) -> float:
    """The share of a batch the model trains on at `progress` (the training done, 0 to 1):
    config.filter_keep, moving linearly to config.filter_keep_end where that is set."""
    end = config.filter_keep_end or config.filter_keep
    return config.filter_keep + (end - config.filter_keep) * progress


def proxy_model(config, num_classes: int) -> FastNet:
    """The proxy a config describes: FastNet at config.filter_widths with the model's activation
    and pooling (its whitening, dirac init and frozen BatchNorm scale always on)."""
    return FastNet(
        widths=tuple(config.filter_widths),
        num_classes=num_classes,
        ceil_pool=config.ceil_pool,
        activation=config.activation,
    )


class HardExampleFilter:
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
        self.model, self.forward, self.config = model, forward, config
        self.precision, self.grad_scale = precision, grad_scale
        self.optimizer = make_optimizer(model, config, batch, ns_dtype)
        self.scaler = torch.amp.GradScaler(
            next(model.parameters()).device.type, enabled=precision == "fp16"
        )

    def keep_count(self, n: int, progress: float = 0.0) -> int:
        return min(n, max(1, round(kept_share(self.config, progress) * n)))

    def freeze_whiten_bias(self, drop_grads: bool) -> None:
        freeze_group(self.optimizer, "whiten_bias", drop_grads=drop_grads)

    def fade_whiten_bias(self, factor: float) -> None:
        fade_group(self.optimizer, "whiten_bias", factor)

    def pick(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, global_step: int, progress: float = 0.0
    ) -> torch.Tensor:
        """Sorted positions in the (normalized, augmented) batch x of its hardest share by the
        proxy's config.filter_score (kept_share at `progress`, the share of training done; below
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
            score = F.cross_entropy(logits, y, reduction="none")
        skip = round(c.filter_skip * len(y))
        count = min(self.keep_count(len(y), progress), len(y) - skip)
        drawn = min(round(c.filter_random * len(y)), count)
        ranked = score.detach().topk(skip + count - drawn, sorted=bool(skip)).indices
        keep = ranked[skip:]
        if drawn:  # at random from the images the ranking left (the step seeded the generator)
            left = torch.ones(len(y), dtype=torch.bool, device=y.device)
            left[ranked] = False
            rest = left.nonzero().squeeze(1)
            keep = torch.cat([keep, rest[torch.randperm(len(rest), device=y.device)[:drawn]]])
        keep = keep.sort().values
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


def build(
    config,
    num_classes: int,
    whitening_images: torch.Tensor | None,
    world,
    batch: int,
    precision: str,
    ns_dtype: torch.dtype = torch.float32,
) -> HardExampleFilter | None:
    """The filter config.filter_keep asks for (None: off): the proxy on the world's device, its
    whitening from the model's images, under torchrun wrapped in DDP (its gradients averaged over
    ranks, so every rank's proxy takes the same steps), compiled where the model is."""
    if not config.filter_keep:
        return None
    proxy = proxy_model(config, num_classes)
    proxy = proxy.to(device=world.device, memory_format=memory_format(config.channels_last))
    proxy.init_from_data(whitening_images)
    forward = distributed.data_parallel(proxy, world)
    if config.compile:
        forward = torch.compile(forward)
    return HardExampleFilter(proxy, forward, config, batch, precision, world.size, ns_dtype)
