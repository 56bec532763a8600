"""`dawntrain plot ...`: figures of a run (curves, predictions, filters), of benchmark files,
or of a recipe (its lr schedule, its training images)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dawntrain.cli.options import add_config_options, command, device_option, resolve
from dawntrain.errors import ConfigError


def _plot_target(args: argparse.Namespace, name: str):
    """(config, output file) of a recipe plot: a RUN's config and RUN/<name>.png, or the
    options' config and --out, which is then required (no file lands in the working directory
    unasked)."""
    from dawntrain.config import load_toml

    if args.run is not None:
        if not (args.run / "config.toml").is_file():
            raise ConfigError(f"{args.run} is not a run directory (it has no config.toml)")
        base = load_toml(args.run / "config.toml")
        return resolve(args, base=base), args.out or args.run / f"{name}.png"
    if args.out is None:
        raise ConfigError(f"plot {name}: give a RUN directory or --out FILE.png")
    return resolve(args), args.out


def cmd_plot(args: argparse.Namespace) -> int:
    from dawntrain.analysis import plot_runs, plots

    run_plots = {
        "curves": plot_runs.plot_curves,
        "time": plot_runs.plot_time,
        "steps": plot_runs.plot_steps,
        "rates": plot_runs.plot_rates,
    }
    if args.plot in run_plots:
        path = run_plots[args.plot](args.run, args.out)
    elif args.plot == "confusion":
        path = plots.plot_confusion(args.run, args.out, args.data, args.device or "auto")
    elif args.plot in ("calibration", "confused-pairs", "mistakes"):
        from dawntrain.analysis import plot_predictions as pp

        where = (args.run, args.out, args.data, args.device or "auto")
        if args.plot == "calibration":
            path, ece = pp.plot_calibration(*where)
            print(f"expected calibration error ({pp.ECE_BINS} bins): {ece:.4f}")
        elif args.plot == "confused-pairs":
            path = pp.plot_confused_pairs(*where, top=args.top)
        else:
            path = pp.plot_mistakes(*where, n=args.n)
    elif args.plot == "filters":
        from dawntrain.analysis.plot_model import plot_filters

        path = plot_filters(args.run, args.out, args.device or "auto")
    elif args.plot == "bench":
        from dawntrain.analysis.plot_bench import plot_bench

        path = plot_bench(args.files, args.out)
    elif args.plot == "lr":
        cfg, out = _plot_target(args, "lr")
        path = plots.plot_lr(cfg, out, args.n_train)
    else:
        cfg, out = _plot_target(args, "samples")
        path = plots.plot_samples(cfg.data, cfg, args.n, out)
    print(f"written to {path}")
    return 0


def add_parsers(sub) -> None:
    plot = command(sub, "plot", "figures of a run or a recipe, saved as PNG")
    plot_sub = plot.add_subparsers(dest="plot", required=True)
    for name, what, several in (
        ("curves", "loss, accuracy, lr per epoch; several runs overlaid, with their mean", True),
        ("time", "validation and test accuracy against training time", True),
        ("steps", "training loss per step (RUN/steps.jsonl)", True),
        ("rates", "the lr each parameter group stepped with, per step", False),
    ):
        p = command(plot_sub, name, what)
        p.add_argument("run", type=Path, metavar="RUN", nargs="+" if several else None,
                       help="run directories, overlaid" if several else "a run directory")  # fmt: skip
        first = " (the first RUN's)" if several else ""
        p.add_argument("--out", type=Path, help=f"default RUN/{name}.png{first}")
        p.set_defaults(func=cmd_plot)
    p = command(plot_sub, "confusion", "confusion matrix, per-class accuracy of last.pt")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    p.add_argument("--out", type=Path, help="default RUN/confusion.png")
    p.add_argument("--data", help="test on this source instead of the run's")
    device_option(p)
    p.set_defaults(func=cmd_plot)
    for name, what in (
        ("calibration", "reliability diagram, confidence of right and wrong, ECE"),
        ("confused-pairs", "the class pairs last.pt confuses most (true → predicted)"),
        ("mistakes", "the test images last.pt got wrong most confidently"),
        ("filters", "last.pt's whitening filters, or its first conv's"),
    ):
        p = command(plot_sub, name, f"{what} (RUN/{name}.png)")
        p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
        p.add_argument("--out", type=Path, help=f"default RUN/{name}.png")
        if name != "filters":
            p.add_argument("--data", help="test on this source instead of the run's")
        device_option(p)
        p.set_defaults(func=cmd_plot)
    plot_sub.choices["confused-pairs"].add_argument("--top", type=int, default=15, help="pairs")
    plot_sub.choices["mistakes"].add_argument("--n", type=int, default=16, help="images (≤ 32)")
    p = command(plot_sub, "bench", "charts of `dawntrain bench` JSON files")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE.json", help="benchmark results")
    p.add_argument("--out", type=Path, help="default: the first FILE with .png")
    p.set_defaults(func=cmd_plot)
    recipe_run = dict(
        type=Path, nargs="?", metavar="RUN", help="a run directory: its config, output in it"
    )
    p = command(plot_sub, "lr", "a recipe's lr schedule at step resolution")
    p.add_argument("run", **recipe_run)
    add_config_options(p)
    p.add_argument("--n-train", type=int, help="training images (known for built-in sources)")
    p.add_argument("--out", type=Path, help="the PNG (default RUN/lr.png; needed without RUN)")
    p.set_defaults(func=cmd_plot)
    p = command(plot_sub, "samples", "training images as the pipeline feeds them")
    p.add_argument("run", **recipe_run)
    add_config_options(p)
    p.add_argument("--n", type=int, default=16, help="images in the grid")
    p.add_argument("--out", type=Path, help="the PNG (default RUN/samples.png; needed without RUN)")
    p.set_defaults(func=cmd_plot)
