"""What several commands share: the help formatter, the config options every training-like
command takes (and the Config they resolve to), the device and weights choices."""

from __future__ import annotations

import argparse
from pathlib import Path

from dawntrain.config import CHOICES

LR_HELP = (
    "peak learning rate in the preset's `convention`: original (davidnet): the optimizer steps "
    "with lr / batch_size on the loss summed over the batch (0.4 → 0.4/512); per_example "
    "(fast): the optimizer steps with lr itself on the summed loss, a rate per example (8.5e-4)"
)


CHECKPOINT_HELP = "a .pt file, a run directory (its last.pt), or RUN/best (its best.pt)"


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and shows a default wherever one is set."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS, []) and action.option_strings
        if shown and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


def command(sub, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=Formatter, **kwargs)


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset (see `dawntrain presets`; default davidnet)")
    p.add_argument(
        "--config", type=Path, help="a TOML file of config keys, applied after the preset"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key, e.g. --set width=32 (repeatable; `--print-config` lists the "
        "keys; lr, learning_rate, wd, weight_decay, bs, tta and workers are accepted too)",
    )
    p.add_argument(
        "--data", help="cifar10 | sample | tiny-imagenet | a path (archive, folder, records)"
    )
    p.add_argument("--epochs", type=int, help="epochs to train (default: the preset's)")
    p.add_argument("-b", "--batch-size", type=int, help="global batch size (default: the preset's)")
    p.add_argument("--lr", type=float, help=LR_HELP + " (default: the preset's)")
    p.add_argument(
        "--wd",
        "--weight-decay",
        dest="weight_decay",
        type=float,
        help="weight decay per example (×batch on the summed gradient; default: the preset's)",
    )
    p.add_argument(
        "--seed", type=int, help="seed of the initial weights, order and crops (default 0)"
    )
    device_option(p)
    p.add_argument(
        "--precision",
        choices=CHOICES["precision"],
        help="compute precision (default auto: bf16 where the device has it fast, else fp32)",
    )
    p.add_argument(
        "-j",
        "--workers",
        type=int,
        metavar="N",
        help="processes decoding image files on the first load (later runs read the cache)",
    )


def resolve(args: argparse.Namespace, base: dict | None = None, **extra):
    from dawntrain import config

    overrides = {
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "device": args.device,
        "precision": args.precision,
        "workers": args.workers,
        **extra,
    }
    return config.resolve(args.preset or "davidnet", args.config, args.set, overrides, base)


def device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", choices=CHOICES["device"], help="where to run (default auto: cuda if any)"
    )


def weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=["raw", "ema"],
        default="raw",
        help="raw: the trained weights; ema: their exponential moving average, which a run "
        "trained with --ema stores beside them",
    )


def unit_interval(text: str) -> float:
    """A probability in (0, 1] on the command line."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a probability in (0, 1], e.g. 0.99")
    return value
