"""Analytic forward FLOPs per image, counted from module shapes during one eval-mode forward.

A multiply-add counts as 2 FLOPs. The headline number (`flops`) is convolutions plus linear
layers, the convention of the DAWNBench write-ups and most papers; bias adds are left out. The
cheap elementwise work is counted separately (`elementwise_flops`) with these conventions:
norms 2 per element (the folded scale and shift of eval mode; LayerNorm/GroupNorm statistics are
not counted), activations 1 per element, windowed pooling kernel-size per output element,
adaptive pooling 1 per input element, tensor add/sub/mul/div 1 per output element (residual
adds, logit scaling). Modules of other types count 0; `Dropout` is the identity in eval mode.

The forward runs on the model's own device and dtype with one zero image, so a model built on
the meta device is counted without allocating anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dawntrain.data.batches import train_side
from dawntrain.engine.data_filter import kept_share, proxy_model, proxy_passes
from dawntrain.errors import ConfigError

MATMUL = "matmul"
ELEMENTWISE = "elementwise"

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
)  # fmt: skip
_WINDOW_POOLS = {
    nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.LPPool1d: 1,
    nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.LPPool2d: 2,
    nn.MaxPool3d: 3, nn.AvgPool3d: 3,
}  # fmt: skip
_ADAPTIVE_POOLS = (
    nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
# Tensor arithmetic called inside a module's forward (residual adds, `logits * weight`), matched
# by name because `a + b` arrives as Tensor.add, `0.5 * a` as Tensor.mul, and so on.
_ARITHMETIC = {
    f"{prefix}{op}{suffix}"
    for op in ("add", "sub", "rsub", "mul", "div", "true_divide")
    for prefix, suffix in (("", ""), ("", "_"), ("__", "__"), ("__r", "__"), ("__i", "__"))
} | {"subtract", "multiply", "divide"}
_SHAPE_ONLY = (nn.Dropout, nn.Identity, nn.Flatten, nn.Unflatten)


def _module_flops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[str, int] | None:
    """(kind, FLOPs for the whole tensor) of one call of a leaf module we know, else None."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # Every input element scatters one kernel into each of its group's output channels.
        per_input = 2 * math.prod(module.kernel_size) * (module.out_channels // module.groups)
        return MATMUL, per_input * x.numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = 2 * math.prod(module.kernel_size) * (module.in_channels // module.groups)
        return MATMUL, per_output * y.numel()
    if isinstance(module, nn.Linear):
        return MATMUL, 2 * module.out_features * x.numel()
    if isinstance(module, _NORMS):
        return ELEMENTWISE, 2 * y.numel()
    if isinstance(module, _ACTIVATIONS):
        return ELEMENTWISE, y.numel()
    if type(module) in _WINDOW_POOLS:
        k = module.kernel_size
        window = math.prod(k) if isinstance(k, tuple) else k ** _WINDOW_POOLS[type(module)]
        return ELEMENTWISE, window * y.numel()
    if isinstance(module, _ADAPTIVE_POOLS):
        return ELEMENTWISE, x.numel()
    if isinstance(module, _SHAPE_ONLY):
        return ELEMENTWISE, 0
    return None


class _ArithmeticCounter(TorchFunctionMode):
    """Counts tensor arithmetic, charging it to the innermost module running."""

    def __init__(self, charge: Callable[[int], None]):
        super().__init__()
        self.charge = charge

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in _ARITHMETIC and isinstance(out, torch.Tensor):
            self.charge(out.numel())
        return out


def _check_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError(
            f"input_shape must be (channels, height, width) with positive int sizes, "
            f"got {input_shape!r}; e.g. (3, 32, 32) for CIFAR-10"
        )
    return shape


def _probe_input(model: nn.Module, shape: tuple[int, int, int]) -> torch.Tensor:
    tensors = [*model.parameters(), *model.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    like = floating[0] if floating else torch.empty(0)
    return torch.zeros((1, *shape), device=like.device, dtype=like.dtype)


def _count(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, str, int]]:
    """(module name, kind, FLOPs) for every counted call in one forward of one image."""
    shape = _check_shape(input_shape)
    root_name = type(model).__name__
    records: list[tuple[str, str, int]] = []
    running: list[str] = []  # names of the modules whose forward is on the stack

    def charge_arithmetic(n: int) -> None:
        # The leaves `_module_flops` knows each call one torch.nn.functional op, which the mode
        # sees as one call (not its internal arithmetic), so nothing is counted twice.
        records.append((running[-1] if running else root_name, ELEMENTWISE, n))

    def pre_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            running.append(name or root_name)

        return hook

    def post_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            running.pop()
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if x is None or not isinstance(out, torch.Tensor):
                return
            counted = _module_flops(module, x, out)
            if counted is not None:
                records.append((name or root_name, *counted))

        return hook

    handles = []
    modes = {m: m.training for m in model.modules()}
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook(name)))
        model.eval()
        with torch.no_grad(), _ArithmeticCounter(charge_arithmetic):
            model(_probe_input(model, shape))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return records


def flops_breakdown(
    model: nn.Module, input_shape: tuple[int, int, int], include_elementwise: bool = True
) -> dict[str, int]:
    """Forward FLOPs per image by module name (in call order), shared modules summed over calls.

    Arithmetic outside any counted leaf (a residual add) is charged to the module whose forward
    ran it; at top level that is the model's class name.
    """
    breakdown: dict[str, int] = {}
    for name, kind, n in _count(model, input_shape):
        if kind == MATMUL or include_elementwise:
            breakdown[name] = breakdown.get(name, 0) + n
    return {name: n for name, n in breakdown.items() if n}


def flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs per image of the convolutions and linear layers (multiply-add = 2)."""
    return sum(n for _, kind, n in _count(model, input_shape) if kind == MATMUL)


def elementwise_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs per image of norms, activations, pooling and tensor arithmetic."""
    return sum(n for _, kind, n in _count(model, input_shape) if kind == ELEMENTWISE)


def training_flops_per_image(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """3 × forward: the usual convention that the backward pass costs twice the forward."""
    return 3 * flops(model, input_shape)


def tta_views(level: int) -> int:
    """Forward passes per image of engine.evaluate.tta_logits at a TTA level."""
    return {0: 1, 1: 2}.get(level, 6)


def _classes(model: nn.Module) -> int:
    """The model's number of classes: its last linear layer's outputs."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return heads[-1].out_features if heads else 10


def run_flops(
    model: nn.Module,
    config,
    input_shape: tuple[int, int, int],
    n_train: int,
    n_val: int,
    n_test: int | None = None,
    tta_fraction: float = 1.0,
    ema_tta_fraction: float | None = None,
) -> dict[str, int]:
    """FLOPs of a whole run the way the public speed records count them: multiply-adds x2 of
    convolutions and linear layers only, x3 for a training step (forward and backward), plus
    every evaluation pass (the per-epoch validations; the final test, whose figures without
    TTA come from TTA's first view; the untrained-model check), each training epoch at its own
    size under progressive resizing (config.train_sizes). `n_test` None: the final test is the
    validation set, evaluated again only where TTA or lookahead asks for it (with TTA, the
    last validation is that pass's plain view). `tta_fraction`:
    the share of the test images that took the TTA views (config.tta_below < 1: what the run
    measured, its summary's test_tta_fraction); the others cost the one plain pass. With an
    EMA of the weights (config.ema) every evaluation runs twice, the average's test taking
    `ema_tta_fraction` of the views (its summary's ema_test_tta_fraction; None: tta_fraction).
    With data filtering (config.filter_keep) the model trains on the kept share and `filter`
    counts the proxy's passes, at config.filter_side where that is smaller (none where the
    model's own last losses rank the batch, config.filter_by other than "proxy").
    Returns each part and the total."""
    forward = flops(model, input_shape)
    epochs = config.epochs
    c, full = input_shape[0], input_shape[-1]
    sides = [train_side(config.train_sizes, e, full) for e in range(epochs)]

    def epochs_forward(net: nn.Module, most: int = full, share=lambda e: 1.0) -> float:
        """One image's forward FLOPs summed over the epochs, each at its side (at most `most`),
        epoch e's weighted by share(e)."""
        capped = [min(s, most) for s in sides]
        per_side = {s: flops(net, (c, s, s)) for s in set(capped)}
        return sum(per_side[s] * share(e) for e, s in enumerate(capped))

    filtering = 0
    if config.filter_keep:
        # The model trains on the kept share, each epoch's at its middle (under a linear
        # filter_keep_end schedule, the epoch's mean to within half a step); the proxy's
        # proxy_passes on every image (its backward pass covers the whole batch, its loss masked).
        train_forward = epochs_forward(
            model, share=lambda e: kept_share(config, (e + 0.5) / epochs)
        )
        if config.filter_by == "proxy":
            proxy_side = config.filter_side or full
            proxy_forward = epochs_forward(proxy_model(config, _classes(model)), proxy_side)
            filtering = round(proxy_forward * n_train * proxy_passes(config))
    else:
        train_forward = epochs_forward(model)
    validations = sum(
        1
        for e in range(1, epochs + 1)
        if e == epochs or (config.eval_every and e % config.eval_every == 0)
    )
    if n_test is None and config.tta_level and not config.lookahead:
        validations -= 1  # the last one is the final test's plain view (loop.final_test_on_val)
    test_images = n_val if n_test is None else n_test

    def tests(fraction: float) -> int:
        if not (n_test is not None or config.tta_level or config.lookahead):
            return 0
        extra = fraction * (tta_views(config.tta_level) - 1) if config.tta_level else 0
        return round(test_images * (1 + extra))

    # An EMA of the weights is evaluated beside them, its test taking its own share of views.
    passes = 2 if config.ema else 1
    test = forward * tests(tta_fraction)
    if config.ema:
        test += forward * tests(tta_fraction if ema_tta_fraction is None else ema_tta_fraction)
    parts = {
        "train": round(3 * train_forward * n_train),
        **({"filter": filtering} if filtering else {}),
        "validation": forward * n_val * validations * passes,
        "test": test,
        "sanity_check": forward * min(512, n_val) if config.sanity_check else 0,
    }
    return {**parts, "total": sum(parts.values())}


def step_flops_per_image(model: nn.Module, config, input_shape: tuple[int, int, int]) -> float:
    """Training FLOPs one image costs a step, averaged over the run's epochs: what run_flops
    charges training and filtering for one image, per epoch. With data filtering the model
    trains on the kept share only (plus the proxy's passes), so throughput x this is the work
    done, where training_flops_per_image would count the images the step skipped as trained."""
    parts = run_flops(model, config, input_shape, n_train=1, n_val=0)
    return (parts["train"] + parts.get("filter", 0)) / config.epochs
