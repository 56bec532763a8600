"""`dawntrain train`: a new run, a resumed one (--resume), or one started from another run's
weights (--init-from); the checks that refuse a wrong combination before any data loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from dawntrain.cli.options import add_config_options, command, resolve
from dawntrain.config import BEST_METRICS, CHOICES
from dawntrain.errors import ConfigError


def runs_with_checkpoints(root: Path = Path("runs")) -> list[Path]:
    """Run directories under `root` that hold checkpoints/last.pt, newest first."""
    found = [p.parent.parent for p in Path(root).glob("*/checkpoints/last.pt")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _resume_target(args: argparse.Namespace) -> tuple[Path, dict, Path] | None:
    """(checkpoint, its contents, its run directory) of --resume, found before any data loads."""
    from dawntrain.train import checkpoint

    if not args.resume or args.resume == "auto":  # auto: fit() looks in --out itself
        return None
    if args.resume == "last" and not args.out:
        runs = runs_with_checkpoints()
        where = (
            "runs with checkpoints: " + ", ".join(str(r) for r in runs[:8])
            if runs
            else "no run under ./runs has a checkpoint"
        )
        raise ConfigError(f"--resume last needs --out RUN (or name the run: --resume RUN); {where}")
    path = checkpoint.resolve_resume(args.resume, args.out or Path("."))
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, checkpoint.load(path), run


def cmd_train(args: argparse.Namespace) -> int:
    from dawntrain.analysis.callbacks import for_config
    from dawntrain.train import checkpoint, fit

    _check_init_from(args)
    target = _resume_target(args)
    # `--resume RUN` alone: the config RUN was trained with, so it needs no other option.
    own = target is not None and args.preset is None
    cfg = resolve(
        args,
        base=target[1]["config"] if own else None,
        out=str(args.out) if args.out else str(target[2]) if target else None,
        quiet=True if args.quiet else None,
        compile=True if args.compile else None,
        sanity_check=False if args.no_sanity_check else None,
        resize=True if args.resize else None,
        checkpoint_every_steps=args.checkpoint_every_steps,
        on_nonfinite=args.on_nonfinite,
        tta_level=args.tta,
        tensorboard=True if args.tensorboard else None,
        auto_resume=True if args.resume == "auto" else None,
        ema=args.ema,
        best_metric=args.best_metric,
        best_mode=args.best_mode,
        init_from=args.init_from,
    )
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    if target is not None:
        checkpoint.check_same_config(target[1], cfg)  # before the data loads
    elif cfg.init_from and not cfg.auto_resume:
        _check_init_source(cfg)
    # `auto` travels as config.auto_resume, like the config-file route (auto_resume = true).
    fit(cfg, resume=str(target[0]) if target else None, callbacks=for_config(cfg))
    return 0


def _check_init_from(args: argparse.Namespace) -> None:
    """--init-from starts a new run; --resume PATH|last continues one (`auto` may pair with it:
    the first start takes the weights, the restarts resume)."""
    if args.init_from and args.resume not in (None, "auto"):
        raise ConfigError(
            "--init-from starts a new run from a checkpoint's weights (fresh optimizer and "
            "schedule, epoch 0) and --resume continues a run where it stopped: give one of them"
        )


def _check_init_source(cfg) -> None:
    """--init-from's checkpoint exists and has the run's architecture, before any data loads."""
    from dawntrain.train import checkpoint, init_from

    path = init_from.checkpoint_path(cfg.init_from)
    init_from.check_architecture(checkpoint.load(path)["config"], cfg, path)


EMA_DECAY = 0.999  # `--ema` without a value


def _ema_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ema",
        nargs="?",
        type=float,
        const=EMA_DECAY,
        metavar="DECAY",
        help="keep an exponential moving average of the weights, DECAY per optimizer step "
        f"(--ema alone: {EMA_DECAY}; ramped up from 0.18 over the first steps unless --set "
        "ema_warmup=false; --set ema_every=N: every N steps), and evaluate it beside them: "
        "ema_val_acc each validation, ema_test_acc at the end; the checkpoints store it "
        "(eval/predict/export --weights ema). Training is unchanged. Default: the preset's "
        "(none: ema = 0); see docs/recipes.md",
    )


def add_parsers(sub) -> None:
    p = command(sub, "train", "train a model (a run directory: metrics, checkpoints, report)")
    add_config_options(p)
    p.add_argument("--out", type=Path, help="run directory (default runs/<preset>-<timestamp>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="PATH|last|auto",
        help="continue a run from a checkpoint, a run directory, or `last` in --out; `auto`: "
        "from --out's last checkpoint if there is one, else start fresh (the same command for "
        "the first start and every restart under torchrun --max-restarts or Slurm --requeue)",
    )
    p.add_argument(
        "--tta",
        type=int,
        choices=[0, 1, 2],
        metavar="LEVEL",
        help="test-time augmentation of the final test: 0 none, 1 flip, 2 flip + shifts "
        "(default: the preset's)",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="write TensorBoard scalars in the run directory (needs `pip install tensorboard`)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--no-sanity-check", action="store_true", help="skip the untrained-model check")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    p.add_argument(
        "--checkpoint-every-steps", type=int, metavar="N", help="also save inside epochs"
    )
    p.add_argument(
        "--on-nonfinite",
        choices=CHOICES["on_nonfinite"],
        help="on a NaN/Inf loss: stop (default) or skip that optimizer step",
    )
    _ema_option(p)
    _best_and_init_options(p)
    p.set_defaults(func=cmd_train)


def _best_and_init_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--best-metric",
        metavar="METRIC",
        help="also keep checkpoints/best.pt, the epoch with the best value of this per-epoch "
        f"metric ({', '.join(BEST_METRICS)}); summary.json says which epoch and value "
        "(default: none)",
    )
    p.add_argument(
        "--best-mode",
        choices=CHOICES["best_mode"],
        help="whether higher or lower --best-metric is better (default auto: max for *_acc, "
        "min for *_loss)",
    )
    p.add_argument(
        "--init-from",
        metavar="CKPT|RUN",
        help="start a new run (fresh optimizer and lr schedule, epoch 0) from this checkpoint's "
        "weights (a .pt file, or a run directory: its last.pt), e.g. to fine-tune on other "
        "data; where the classes differ the classifier head is re-initialised; the model must "
        "be the checkpoint's (model, width). Not with --resume PATH|last",
    )
