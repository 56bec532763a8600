"""Typed run configuration: defaults, named presets (presets/*.toml), files and `--set key=value`.

Resolution order, later wins: dataclass defaults → preset → `--config FILE.toml` → `--set` → flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from dawntrain.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Config:
    # What to train on and where.
    preset: str = "davidnet"
    data: str = "cifar10"
    out: str = ""  # empty: runs/<preset>-<timestamp>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    # CPU only: freed activations stay for the next step (train/malloc.py), and 3x3 convolutions
    # on small, wide maps run as matmuls (models/conv.py): auto where that is measured to pay on
    # this CPU kind (conv.matmul_pays), on for every such map, off for none.
    keep_freed_memory: bool = True
    matmul_conv: str = "auto"
    # CUDA only: cuDNN times its algorithms for each new input shape and keeps the fastest, as
    # airbench and the other record recipes have it; off until measured on a GPU
    # (scripts/gpu_check.sh times `fast` both ways).
    cudnn_benchmark: bool = False
    # Model.
    model: str = "davidnet"  # davidnet | fast | preact_resnet | davidnet64
    width: int = 64  # DavidNet's c; PreActResNet's first width; FastNet's first block
    # FastNet: blocks 2 and 3 are width_factor x width (airbench94: 4, airbench95: 3).
    width_factor: float = 4.0
    dropout: float = 0.05
    exact_dropout: bool = False  # True: torch's dropout instead of the cheap bank mask
    # The fast model's tricks, each switchable for ablations (docs/benchmarks.md).
    whiten: bool = (
        True  # first layer: frozen whitening filters from the data; False: a trained conv
    )
    # Added to each patch eigenvalue before the whitening filters divide by its square root
    # (airbench: 5e-4); larger damps the faintest directions, which JPEG's chroma subsampling
    # leaves near 1e-4. fast-budget with 5e-3: level over 8 seeds; 2e-2: lower (docs/recipes.md).
    whiten_eps: float = 5e-4
    # FastNet's BatchNorm statistics from ghost batches of about this many images (0: the
    # batch's); fast-budget with 64: level over 4 seeds (docs/recipes.md).
    ghost_batch: int = 0
    dirac: bool = True  # conv filters start as identity on their first c_in outputs
    frozen_bn_scale: bool = True  # BatchNorm scale fixed at 1, only its shift trains
    # FastNet pools 31x31 to 16x16 (ceil); False: to 15x15 as airbench, for 19% fewer FLOPs.
    ceil_pool: bool = True
    # FastNet's conv groups: gelu (airbench) | silu (hiverge's cifar10-speedrun); the whitening
    # layer keeps GELU either way, as both do.
    activation: str = "gelu"
    # Data pipeline (on the training device).
    normalize: str = "dataset"  # dataset (per-channel mean/std) | samplewise (per image)
    crop_padding: int = 4  # reflect-pad then random crop back; 0 turns it off
    # Progressive resizing (fast.ai's DAWNBench ImageNet entry): epoch i+1 trains on images
    # resized to train_sizes[i] (bilinear, antialiased) for the first len(train_sizes) epochs,
    # at the full size after; [] trains at full size throughout. Evaluation is always full size.
    train_sizes: list[int] = field(default_factory=list)
    flip: bool = True
    # Per-image colour jitter on the normalized images (hiverge's cifar10-speedrun: 0.14, 0.13):
    # x → (x + b) · c, b uniform in ±brightness, c uniform in 1 ± contrast; 0 turns each off.
    brightness: float = 0.0
    contrast: float = 0.0
    # Cutout (DeVries & Taylor 2017; airbench96: 12 with crop_padding 4): a cutout x cutout box
    # at a random place in each training image set to the data set's mean; 0 turns it off.
    cutout: int = 0
    # The last n epochs train on the images as the test sees them: no crop, colour jitter or
    # Cutout (flips stay, as the test-time views include them).
    clean_last_epochs: int = 0
    alternate_flip: bool = (
        False  # after epoch 1, flip exactly the images the previous epoch did not
    )
    # Data filtering (airbench96_faster): a small FastNet, the proxy, scores every training batch
    # and the model trains only on the `filter_keep` share of it that the proxy finds hardest
    # (highest loss); the proxy trains on its own hardest share every `filter_train_every` steps.
    # An epoch keeps its steps and order, each step costing the model about filter_keep of one;
    # train_loss and train_acc count the kept images only, img/s every image the epoch reads.
    # 0: off (every image trains); airbench96_faster: 0.5, proxy blocks 32/64/64, every 4.
    filter_keep: float = 0.0
    # The kept share at the end of training: it moves linearly from filter_keep at the first step
    # to this at the last; 0: filter_keep throughout (airbench96_faster's constant share).
    filter_keep_end: float = 0.0
    # The first this many epochs train on every image of each batch, the filter ranking them only:
    # the last-loss ranking has nothing to rank until each image has trained once, so in its
    # first epoch it drops a random share. 0: the filter drops images from the first step. On
    # fast-budget 1 scored lower (with TTA over 3 seeds, Zen 5: -0.22 against the preset's seeds
    # 0-2, -0.09 against its 8-seed mean; docs/benchmarks-log.md, 2026-12-07).
    filter_full_epochs: int = 0
    filter_widths: list[int] = field(default_factory=lambda: [32, 64, 64])
    filter_train_every: int = 4
    # The side the proxy scores and trains at: larger batches are resized down to it (bilinear,
    # antialiased) for the proxy only, the model training on them as they are; 0: as they are.
    filter_side: int = 0
    # What ranks the batch: loss, the loss the proxy trains on (label-smoothed where the run is;
    # airbench96_faster's), or cross_entropy, the unsmoothed loss, which does not count a
    # confident right answer as hard for the probability it leaves the other classes.
    filter_score: str = "loss"
    # The share of each batch, its hardest by filter_score, that neither trains (the kept share
    # starts below it): the highest losses include images no model gets right, mislabelled or
    # ambiguous ones (Mindermann et al., "Prioritized Training on Points that are Learnable,
    # Worth Learning, and Not Yet Learnt", 2022). 0: the kept share starts at the hardest.
    filter_skip: float = 0.0
    # The share of each batch, out of the kept share, drawn at random from the images the
    # hardest part of it leaves (the hardest filter_keep - filter_random, then these): a ranking
    # by loss alone sees only the hard tail; a uniform share keeps the rest of the data in view
    # (the mixture behind importance sampling's bias correction). 0: the kept share all hardest.
    filter_random: float = 0.0
    # Keep the same share of each class in the batch (its hardest images), not the hardest of the
    # whole batch: a ranking by loss trains the hard classes more than the easy ones (on
    # fast-budget after epoch 3, 96% of the cats against 59% of the automobiles), which tilts the
    # classes' prior away from the test set's. On fast-budget it scored lower on every seed
    # (-0.30 with TTA over 3, Zen 5): the tilt towards the hard classes helps
    # (docs/benchmarks-log.md, 2026-12-07). Needs filter_keep, and filter_skip and filter_random
    # at 0.
    filter_per_class: bool = False
    # What does the ranking: proxy, the proxy above (airbench96_faster's), or last_loss, the
    # model's own loss on each image the last time it trained on it (unseen images first): no
    # proxy passes, the ranking one epoch old (Loshchilov & Hutter, "Online Batch Selection", 2015);
    # last_loss_ratio: that loss over the mean of its step's, so that an image's rank does not
    # rise merely because the model's losses fell since it last trained on it.
    filter_by: str = "proxy"
    val_from_train: int = 0  # hold out this many training images as the validation set
    image_size: int = 0  # expected image side; 0: the model's (models.input_size)
    resize: bool = False  # resize images of another size (bilinear) instead of refusing them
    # Optimisation.
    epochs: int = 24
    batch_size: int = 512
    batch_scope: str = "global"  # global: batch_size split over ranks | per_rank: batch_size each
    sync_bn: bool = False  # SyncBatchNorm across ranks: batch statistics of the global batch
    dist_timeout_s: float = 300.0  # a rank that waits longer on its peers fails with an error
    lr: float = 0.4  # peak lr; meaning set by `convention`
    lr_schedule: str = "one_cycle"  # one_cycle | staircase
    warmup_epochs: float = -1.0  # one_cycle peak epoch; negative: the original's (epochs+1)//5
    lr_start: float = 0.0  # one_cycle: lr at epoch 0, as a fraction of the peak
    lr_final: float = 0.0  # one_cycle: lr at the last epoch, as a fraction of the peak
    lr_milestones: list[float] = field(default_factory=list)  # staircase
    lr_factor: float = 0.1  # staircase
    momentum: float = 0.9
    optimizer: str = "sgd"  # sgd | muon (Muon for conv filters, SGD for the rest)
    muon_lr: float = 0.24  # Muon's peak lr (the schedule's shape, scaled to this peak)
    muon_momentum: float = 0.6
    # Newton–Schulz's number format. auto: bf16 on CUDA (as airbench94_muon), fp32 on the CPU,
    # where bf16 measured 2% faster and 0.29 points lower (engine/muon.py: ns_dtype).
    muon_precision: str = "auto"  # auto | fp32 | bf16
    muon_ns_steps: int = 5  # Newton–Schulz iterations a Muon step (airbench94_muon: 3)
    # Filters set back to norm √out_channels before every n-th Muon step (hiverge's: 8).
    muon_norm_every: int = 1
    nesterov: bool = True
    weight_decay: float = 5e-4
    # original: loss summed over the batch, step lr = lr/batch_size, decay wd×batch_size (DavidNet).
    convention: str = "original"
    label_smoothing: float = 0.0
    # Each image's target mixed with the model's softmax on it the last time it trained on it,
    # the mix rising linearly from 0 to this over the run (engine/self_distill.py); 0: off.
    # fast-budget at 0.3-0.8: lower (docs/recipes.md).
    self_distill: float = 0.0
    bias_lr_scale: float = 1.0  # BatchNorm shifts (and the whitening bias) train with lr × this
    # The whitening layer's bias trains for this many epochs only (a fraction counts in steps:
    # hiverge trains it for 0.19 epochs); 0: throughout.
    whiten_bias_epochs: float = 0.0
    # Its lr falls linearly to 0 over those epochs instead of following the run's schedule
    # (hiverge's); needs whiten_bias_epochs.
    whiten_bias_decay: bool = False
    lookahead: bool = False  # pull weights toward a slow EMA every 5 steps, adopt it at the end
    # An EMA of the weights, evaluated beside them (engine/ema.py): `ema` is the decay per update
    # (0: off), updated every `ema_every` optimizer steps; `ema_warmup`: the decay ramps up as
    # min(ema, (1 + u) / (10 + u)) at the u-th update, so the initial weights fade out early.
    ema: float = 0.0
    ema_every: int = 1
    ema_warmup: bool = True
    tta_level: int = 0  # test-time augmentation: 0 none, 1 flip, 2 flip + one-pixel translations
    # TTA only for the images whose plain top-class probability is below this; the rest keep the
    # plain prediction, which TTA rarely changes (hiverge's cifar10-speedrun). 1.0: every image.
    tta_below: float = 1.0
    eval_batch_size: int = 1024
    eval_every: int = 1  # validate every N epochs and after the last; 0: after the last only
    workers: int = 0  # processes decoding image files on the first load; 0: the reader's default
    # Run bookkeeping.
    keep_checkpoints: int = 5
    # Fields: epoch and the epoch's metrics (CHECKPOINT_NAME_FIELDS), e.g. "ep{epoch}-{val_acc:.3f}.pt".
    checkpoint_name: str = "epoch_{epoch:02d}.pt"
    checkpoint_every_steps: int = 0
    # Best checkpoint and fine-tuning (README "Best checkpoint, fine-tuning, longer runs").
    # best_metric: keep checkpoints/best.pt, the epoch with the best value of this per-epoch
    # metric (BEST_METRICS); "": none. best_mode auto: max for *_acc, min for *_loss.
    best_metric: str = ""
    best_mode: str = "auto"  # auto | max | min
    # A new run (fresh optimizer and schedule, epoch 0) from this checkpoint's weights (a .pt
    # file or a run directory); a classifier head for other classes is re-initialised.
    init_from: str = ""
    # Continue from out's last checkpoint when there is one, else start fresh: one command for
    # the first start and every restart (torchrun --max-restarts, Slurm --requeue); needs `out`.
    auto_resume: bool = False
    # Under torchrun the ranks agree on a stop signal (SIGTERM) at least this often, in seconds
    # of training; 0: after every step (a host sync each). docs/distributed.md sizes it.
    stop_check_s: float = 5.0
    sanity_check: bool = True  # evaluate the untrained model first: accuracy should be chance
    on_nonfinite: str = "stop"  # stop | skip-step
    quiet: bool = False
    # Outside a terminal (a log file, CI, Slurm): a progress line every N steps; -1: about 10 an
    # epoch; 0: none.
    log_every_steps: int = -1
    # RUN/steps.jsonl: the loss since the previous record, each parameter group's lr and the time,
    # every N steps and at each epoch's last; 0: none. A record is an asynchronous copy of three
    # numbers and never waits for the device (train/step_records.py), so it can be frequent:
    # every 5 steps, fast on CIFAR-10 gives 100 records, DavidNet 480.
    loss_every_steps: int = 5
    report: bool = True  # write RUN/report.html at the end
    tensorboard: bool = False  # TensorBoard scalars in RUN/ (needs `pip install tensorboard`)
    probe_every: int = 0  # log α* and the top Hessian eigenvalue every N epochs (0: never)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "model": ("davidnet", "davidnet64", "fast", "preact_resnet"),
    "normalize": ("dataset", "samplewise"),
    "lr_schedule": ("one_cycle", "staircase"),
    "convention": ("original", "per_example"),
    "on_nonfinite": ("stop", "skip-step"),
    "batch_scope": ("global", "per_rank"),
    "optimizer": ("sgd", "muon"),
    "muon_precision": ("auto", "fp32", "bf16"),
    "activation": ("gelu", "silu"),
    "best_mode": ("auto", "max", "min"),
    "matmul_conv": ("auto", "on", "off"),
    "filter_score": ("loss", "cross_entropy"),
    "filter_by": ("proxy", "last_loss", "last_loss_ratio"),
}
# Values of keys that have changed type, as configs saved before (in checkpoints) hold them.
_LEGACY_VALUES: dict[tuple[str, Any], Any] = {
    ("matmul_conv", True): "auto",
    ("matmul_conv", False): "off",
}

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)

# The names people type for config keys (`--set wd=0.1`), accepted as those keys.
ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "wd": "weight_decay",
    "decay": "weight_decay",
    "bs": "batch_size",
    "batch": "batch_size",
    "tta": "tta_level",
    "num_workers": "workers",
    "j": "workers",
    "eval_batch": "eval_batch_size",
    "smoothing": "label_smoothing",
    "warmup": "warmup_epochs",
    "schedule": "lr_schedule",
    "optim": "optimizer",
}

# What a checkpoint_name may use besides {epoch}: the epoch's metrics (nan where not measured).
CHECKPOINT_NAME_FIELDS = (
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_loss", "ema_val_acc",
)  # fmt: skip
# The per-epoch metrics a best checkpoint may be chosen by (config.best_metric); the ema_ ones
# need ema > 0.
BEST_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "ema_val_acc", "ema_val_loss")


def presets() -> dict[str, Path]:
    """Preset name → TOML file shipped in dawntrain/presets."""
    root = resources.files("dawntrain") / "presets"
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def _suggest(key: str, names, what: str = "keys") -> str:
    """Close matches only; else where to see every name."""
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
    if close:
        return f"; did you mean {', '.join(close)}?"
    if what == "keys":
        return "; `dawntrain train --print-config` lists every key"
    return f"; known {what}: {', '.join(names)}"


def checkpoint_file_name(template: str, metrics: dict[str, Any]) -> str:
    """`template` (config.checkpoint_name) filled in with an epoch's metrics; a metric not
    measured that epoch (no validation) reads as nan."""
    values = {
        k: float("nan") if metrics.get(k) is None else metrics[k] for k in CHECKPOINT_NAME_FIELDS
    }
    return template.format(**values)


def _check_checkpoint_name(template: str) -> None:
    sample = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5}
    sample.update(val_loss=1.0, val_acc=0.5)
    try:
        name = checkpoint_file_name(template, sample)
    except KeyError as e:
        raise ConfigError(
            f"checkpoint_name {template!r}: no field {e}; the fields are "
            f"{', '.join(CHECKPOINT_NAME_FIELDS)}, e.g. 'ep{{epoch}}-{{val_acc:.3f}}.pt'"
        ) from None
    except (ValueError, IndexError, TypeError) as e:
        raise ConfigError(
            f"checkpoint_name {template!r} is not a valid format string ({e})"
        ) from None
    if "/" in name or not name.endswith(".pt") or "{" not in template:
        raise ConfigError(
            f"checkpoint_name {template!r}: give a file name ending in .pt with {{epoch}} in it, "
            "e.g. 'epoch_{epoch:02d}.pt' (older ones are pruned by the part before the first '{')"
        )


def _coerce(key: str, value: Any, origin: str) -> Any:
    expected = _TYPES[key]
    if isinstance(value, bool) and expected is not bool:
        value = _LEGACY_VALUES.get((key, value), value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(expected) is list:
        if not isinstance(value, list):
            value = [value]
        item = typing.get_args(expected)[0]
        if item is int and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{origin}: '{key}' must be a list of whole numbers, got {value!r}")
        try:
            return [item(v) for v in value]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{origin}: '{key}' must be a list of numbers, got {value!r}"
            ) from None
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"{origin}: '{key}' must be {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def apply(config: Config, values: dict[str, Any], origin: str) -> Config:
    """A copy of `config` with `values` applied; unknown keys and wrong types raise ConfigError."""
    updates = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in _FIELDS:
            raise ConfigError(f"{origin}: unknown config key '{key}'{_suggest(key, _FIELDS)}")
        updates[key] = _coerce(key, value, origin)
    return dataclasses.replace(config, **updates)


def parse_set(items: list[str]) -> dict[str, Any]:
    """`key=value` strings → dict, values parsed as TOML (so 0.1, true, [64, 72]) else kept as text."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set width=32")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _filter_checks(config: Config) -> list[tuple[bool, str]]:
    """validate's checks of the data filter's settings (filter_*)."""
    return [
        (0 <= config.filter_keep < 1, "filter_keep must be in [0, 1) (0: no data filtering)"),
        (
            0 <= config.filter_keep_end <= 1 and (config.filter_keep or not config.filter_keep_end),
            "filter_keep_end must be in [0, 1] (0: filter_keep throughout) and needs filter_keep",
        ),
        (
            len(config.filter_widths) == 3 and min(config.filter_widths) >= 1,
            "filter_widths must be the proxy's three block widths, e.g. [32, 64, 64]",
        ),
        (
            config.filter_by == "proxy" or config.filter_keep,
            "filter_by other than 'proxy' needs filter_keep (the share of each batch to keep)",
        ),
        (config.filter_train_every >= 1, "filter_train_every must be >= 1 (steps)"),
        (
            config.filter_skip >= 0
            and (not config.filter_skip or config.filter_keep)
            and config.filter_skip + max(config.filter_keep, config.filter_keep_end) <= 1,
            "filter_skip must be >= 0, needs filter_keep, and with the kept share at most 1",
        ),
        (
            config.filter_random == 0
            or 0 < config.filter_random < min(config.filter_keep, config.filter_keep_end or 1),
            "filter_random must be 0 or a share below the kept share (filter_keep, filter_keep_end)",
        ),
        (
            0 <= config.filter_full_epochs < config.epochs
            and (not config.filter_full_epochs or config.filter_keep),
            "filter_full_epochs must be >= 0 and below epochs, and needs filter_keep",
        ),
        (
            not config.filter_per_class
            or (config.filter_keep and not (config.filter_skip or config.filter_random)),
            "filter_per_class needs filter_keep, and filter_skip and filter_random at 0",
        ),
        (
            config.filter_side == 0 or config.filter_side >= 8,
            "filter_side must be 0 (the model's side) or an image side >= 8",
        ),
    ]


def validate(config: Config) -> Config:
    for key, choices in CHOICES.items():
        if getattr(config, key) not in choices:
            raise ConfigError(
                f"'{key}' must be one of {', '.join(choices)}, got {getattr(config, key)!r}"
            )
    checks = [
        (config.epochs >= 0, "epochs must be >= 0"),
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
        (config.eval_every >= 0, "eval_every must be >= 0 (0: validate after the last epoch only)"),
        (config.lr > 0, "lr must be > 0"),
        (config.width >= 1, "width must be >= 1"),
        (round(config.width * config.width_factor) >= 1, "width x width_factor must be >= 1"),
        (0 <= config.dropout < 1, "dropout must be in [0, 1)"),
        (0 <= config.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (0 <= config.self_distill <= 1, "self_distill must be in [0, 1] (0: off)"),
        (0 < config.tta_below <= 1, "tta_below must be in (0, 1] (1: TTA on every image)"),
        (0 <= config.momentum < 1, "momentum must be in [0, 1)"),
        (config.muon_ns_steps >= 1, "muon_ns_steps must be >= 1 (airbench94_muon: 3)"),
        (config.muon_norm_every >= 1, "muon_norm_every must be >= 1 (1: every step)"),
        (
            not config.whiten_bias_decay or config.whiten_bias_epochs > 0,
            "whiten_bias_decay needs whiten_bias_epochs > 0 (the epochs over which its lr falls)",
        ),
        (config.whiten_bias_epochs >= 0, "whiten_bias_epochs must be >= 0 (0: throughout)"),
        (config.ghost_batch >= 0, "ghost_batch must be >= 0 (0: statistics of the whole batch)"),
        (config.whiten_eps > 0, "whiten_eps must be > 0 (airbench's 5e-4; it keeps 1/sqrt finite)"),
        (0 <= config.brightness < 1, "brightness must be in [0, 1) (shift in std units)"),
        (0 <= config.contrast < 1, "contrast must be in [0, 1) (scale in 1 ± contrast)"),
        (config.weight_decay >= 0, "weight_decay must be >= 0"),
        (config.crop_padding >= 0, "crop_padding must be >= 0"),
        (config.cutout >= 0, "cutout must be >= 0 (the box's side in pixels; 0: none)"),
        (
            0 <= config.clean_last_epochs <= config.epochs,
            "clean_last_epochs must be between 0 and epochs",
        ),
        *_filter_checks(config),
        (all(s >= 8 for s in config.train_sizes), "train_sizes must be image sides >= 8"),
        (config.val_from_train >= 0, "val_from_train must be >= 0"),
        (config.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (config.image_size >= 0, "image_size must be >= 0"),
        (config.checkpoint_every_steps >= 0, "checkpoint_every_steps must be >= 0"),
        (config.workers >= 0, "workers must be >= 0 (0: the reader's default)"),
        (config.log_every_steps >= -1, "log_every_steps must be >= -1 (-1: ~10 lines an epoch)"),
        (config.loss_every_steps >= 0, "loss_every_steps must be >= 0 (0: no steps.jsonl)"),
        (0 <= config.ema < 1, "ema must be in [0, 1) (0: no EMA of the weights; e.g. 0.999)"),
        (config.ema_every >= 1, "ema_every must be >= 1 (optimizer steps between EMA updates)"),
        (config.stop_check_s >= 0, "stop_check_s must be >= 0 (0: agree after every step)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"impossible config: {message}")
    _check_checkpoint_name(config.checkpoint_name)
    if config.best_metric not in ("", *BEST_METRICS):
        raise ConfigError(
            f"best_metric {config.best_metric!r} is not a per-epoch metric; choose one of "
            f'{", ".join(BEST_METRICS)} (or "" for no best checkpoint)'
        )
    if config.best_metric.startswith("ema_") and not config.ema:
        raise ConfigError(
            f"best_metric {config.best_metric!r} needs an EMA of the weights: set --ema DECAY "
            "(e.g. 0.999), or choose a metric of the raw weights"
        )
    return config


def resolve(
    preset: str = "davidnet",
    config_file: Path | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """The resolved config for a preset plus a file, `--set` items and explicit flag values.
    `base` (a checkpoint's saved config) replaces the defaults and the preset."""
    known = presets()
    if base is not None:
        config = apply(Config(), base, "the checkpoint's config")
    elif preset not in known:
        raise ConfigError(f"unknown preset '{preset}'{_suggest(preset, sorted(known), 'presets')}")
    else:
        config = apply(Config(), {"preset": preset, **load_toml(known[preset])}, f"preset {preset}")
    if config_file is not None:
        config = apply(config, load_toml(config_file), str(config_file))
    if sets:
        config = apply(config, parse_set(sets), "--set")
    if overrides:
        config = apply(config, {k: v for k, v in overrides.items() if v is not None}, "option")
    return validate(config)
