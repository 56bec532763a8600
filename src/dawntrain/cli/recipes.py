"""What a preset is before it trains: `dawntrain presets` (each preset's description) and
`dawntrain summary` (its layer table and a whole run's FLOPs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dawntrain.cli.options import add_config_options, command, resolve


def _preset_description(path: Path) -> list[str]:
    """The preset file's first comment paragraph: what it is. After a bare `#` come the reasons
    for its values, which are for whoever changes it and stay in the file."""
    about = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.strip() == "#":
            break
        about.append(line[1:].strip())
    return about or [""]


def cmd_presets(args: argparse.Namespace) -> int:
    from dawntrain.config import presets

    files = presets()
    for name, path in sorted(files.items()):
        first, *rest = _preset_description(path)
        print(f"{name:<22} {first}")
        for line in rest:
            print(f"{'':<22} {line}".rstrip())
    folder = next(iter(files.values())).parent
    print(f"\nEach preset's file, with the reasons for its values: {folder}/NAME.toml")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from dawntrain.analysis.summary import format_summary
    from dawntrain.models import input_size, model_for

    cfg = resolve(args)
    side = args.image_size or input_size(cfg) or 32
    classes = args.num_classes or _num_classes(cfg)
    model = model_for(cfg, classes)
    what = f"{cfg.preset} preset" + (f", model {cfg.model}" if cfg.model != cfg.preset else "")
    title = f"{what}: {side}x{side} input, {classes} classes"
    print(format_summary(model, (3, side, side), title=title))
    images = args.run_images or RUN_IMAGES.get(cfg.data)
    if images:
        print(_run_flops_line(model, cfg, side, *images))
    return 0


def _num_classes(cfg) -> int:
    return 200 if cfg.data in ("tiny-imagenet",) else 10


# (training, test) images of the official sets, for `summary`'s whole-run FLOPs.
RUN_IMAGES = {"cifar10": (50_000, 10_000), "tiny-imagenet": (100_000, 10_000)}


def _run_flops_line(model, cfg, side: int, n_train: int, n_test: int) -> str:
    """The whole run's FLOPs (analysis.flop_count.run_flops) as fit() would split the data."""
    from dawntrain.analysis.flop_count import run_flops

    held = cfg.val_from_train
    counts = (n_train - held, held or n_test, n_test if held else None)
    parts = run_flops(model, cfg, (3, side, side), *counts)
    shown = ", ".join(
        f"{k.replace('_', ' ')} {v / 1e15:.4f}" for k, v in parts.items() if k != "total"
    )
    line = (
        f"Whole run ({cfg.epochs} epochs, {n_train:,} training and {n_test:,} test images): "
        f"{parts['total'] / 1e15:.3f} PFLOP ({shown})"
    )
    if cfg.tta_level and cfg.tta_below < 1:
        # Which images are unsure is known only after training: give both ends.
        plain = run_flops(model, cfg, (3, side, side), *counts, tta_fraction=0.0)["total"]
        line += (
            f"; TTA counted on every test image, {plain / 1e15:.3f} PFLOP if none takes the "
            f"views (a run's summary has its share, test_tta_fraction)"
        )
    return line


def _image_counts(text: str) -> tuple[int, int]:
    try:
        n_train, n_test = (int(n) for n in text.split(","))
    except ValueError:
        n_train = n_test = -1
    if n_train <= 0 or n_test < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give TRAIN,TEST image counts, e.g. 50000,10000"
        )
    return n_train, n_test


def add_parsers(sub) -> None:
    p = command(sub, "presets", "list the named presets with their descriptions")
    p.set_defaults(func=cmd_presets)

    p = command(sub, "summary", "print a preset's layer table: shapes, parameters, FLOPs")
    add_config_options(p)
    p.add_argument("--image-size", type=int, help="input side (default: the model's)")
    p.add_argument("--num-classes", type=int, help="classes (default: the data source's)")
    p.add_argument(
        "--run-images",
        type=_image_counts,
        metavar="TRAIN,TEST",
        help="print the whole run's FLOPs for this many training and test images (default for "
        "cifar10 and tiny-imagenet: the official counts)",
    )
    p.set_defaults(func=cmd_summary)
