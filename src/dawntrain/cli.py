"""dawntrain: train image classifiers fast in plain PyTorch (DavidNet/ResNet-9 and a faster
network on CIFAR-10, a ResNet on Tiny ImageNet), then evaluate, inspect and export them.

The command parses arguments, calls the library and prints; the library computes and returns."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from dawntrain.errors import ConfigError, DataError, DawntrainError
from dawntrain.files import atomic_write

EXAMPLES = """examples:
  dawntrain train --preset fast --data sample --epochs 4 --out runs/quick
  dawntrain eval --checkpoint runs/quick --tta
  dawntrain report runs/quick            # runs/quick/report.html
  dawntrain train --resume runs/quick     # continue an interrupted run under its own config
  dawntrain train --init-from runs/quick --preset fast --data D --epochs 6   # fine-tune

`dawntrain COMMAND --help` shows each command's options."""

LR_HELP = (
    "peak learning rate in the preset's `convention`: original (davidnet): the optimizer steps "
    "with lr / batch_size on the loss summed over the batch (0.4 → 0.4/512); per_example "
    "(fast): the optimizer steps with lr itself on the summed loss, a rate per example (8.5e-4)"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and shows a default wherever one is set."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS, []) and action.option_strings
        if shown and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _command(sub, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter, **kwargs)


def _add_config_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="where to run (default auto: cuda if any)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="compute precision (default auto: bf16 where the device has it fast, else fp32)",
    )
    p.add_argument(
        "-j",
        "--workers",
        type=int,
        metavar="N",
        help="processes decoding image files on the first load (later runs read the cache)",
    )


def _resolve(args: argparse.Namespace, base: dict | None = None, **extra):
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


CHECKPOINT_HELP = "a .pt file, a run directory (its last.pt), or RUN/best (its best.pt)"


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
    cfg = _resolve(
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


def cmd_eval(args: argparse.Namespace) -> int:
    from dawntrain.infer.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.device or "auto",
        args.tta,
        args.batch_size,
        shared_classes=args.shared_classes,
        weights=args.weights,
        tta_below=args.tta_below,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(format_evaluation(result))
    return 0


def format_evaluation(result: dict) -> str:
    line = lambda name, r: (  # noqa: E731
        f"  {name:<14} loss {r['loss']:.4f}  accuracy {r['acc']:.4f}  top-5 {r['top5']:.4f}"
    )
    lines = [f"{result['source']}, {result['split']} set, {result['examples']} images:"]
    if result.get("weights") == "ema":
        lines[0] = lines[0][:-1] + ", the EMA of the weights:"
    if "shared_classes" in result:
        lines[0] = lines[0][:-1] + f" of the {len(result['shared_classes'])} shared classes:"
    lines.append(line("plain", result))
    if "tta" in result:
        tta = result["tta"]
        lines.append(line(f"TTA (level {tta['level']})", tta))
        if tta.get("tta_fraction", 1.0) < 1.0:
            lines[-1] += f"  (views on {100 * tta['tta_fraction']:.1f}% of the images)"
    return "\n".join(lines)


def cmd_summary(args: argparse.Namespace) -> int:
    from dawntrain.analysis.summary import format_summary
    from dawntrain.models import input_size, model_for

    cfg = _resolve(args)
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


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from dawntrain.bench import throughput

    cfg = _resolve(args)
    variants = throughput.variants_for(cfg, args.image_size, compile_too=args.compile)
    variants += [throughput.changed_engine(cfg, spec) for spec in args.vs]
    if args.rows:
        variants = throughput.select(variants, throughput.split_top_level(args.rows))
    result = throughput.run(
        cfg,
        steps=args.steps,
        warmup=args.warmup,
        variants=variants,
        image_size=args.image_size,
        peak_size=args.peak_size,
    )
    path = _write_result(args.results, f"throughput-{cfg.preset}-b{cfg.batch_size}", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(throughput.format_table(result))
        print(f"written to {path}")
    return 0


def cmd_bench_profile(args: argparse.Namespace) -> int:
    from dawntrain.bench import profile

    cfg = _resolve(args)
    result = profile.run(cfg, steps=args.steps, warmup=args.warmup, image_size=args.image_size)
    path = _write_result(args.results, f"profile-{cfg.preset}-b{cfg.batch_size}", result)
    print(json.dumps(result) if args.json else profile.format_table(result))
    if not args.json:
        print(f"written to {path}")
    return 0


def cmd_bench_conv(args: argparse.Namespace) -> int:
    from dawntrain.bench import conv

    shapes, names = conv.SHAPES, None
    if args.shapes and args.preset:
        raise ConfigError("bench conv: give --shapes or --preset, not both")
    if args.shapes:
        try:
            given = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        except ValueError:
            given = []
        if not given or any(len(s) not in (3, 4) or min(s) < 1 for s in given):
            raise ConfigError(
                f"--shapes {args.shapes!r}: give BATCHxCHANNELSxSIDE or "
                "BATCHxC_INxC_OUTxSIDE,... e.g. 512x512x4,1024x64x256x15"
            )
        shapes = [(s[0], s[1], s[1], s[2]) if len(s) == 3 else s for s in given]
    elif args.preset:
        from dawntrain import config

        cfg = config.resolve(args.preset, None, args.set, {})
        names, shapes = map(list, zip(*conv.preset_shapes(cfg, args.image_size)))
    result = conv.run(shapes, repeats=args.repeats, precision=args.precision, names=names)
    path = _write_result(args.results, "conv", result)
    print(json.dumps(result) if args.json else conv.format_table(result))
    print(f"written to {path}")
    return 0


def cmd_bench_tta(args: argparse.Namespace) -> int:
    from dawntrain.bench import tta

    thresholds = args.thresholds or tta.THRESHOLDS
    result = tta.run(
        args.checkpoint, args.data, args.tta, thresholds, args.device or "auto", args.weights
    )
    path = _write_result(args.results, "tta", result)
    print(json.dumps(result) if args.json else tta.format_table(result))
    print(f"written to {path}")
    return 0


def _bench_runs(args: argparse.Namespace, kind: str, preset: str) -> Path:
    """Where a benchmark's training runs go: --out, else under the results directory."""
    out = args.out or args.results / "runs" / f"{kind}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"runs in {out}", file=sys.stderr)
    return out


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from dawntrain.bench import accuracy

    cfg = _resolve(args)
    result = accuracy.run(cfg, args.runs, _bench_runs(args, "accuracy", cfg.preset), args.target)
    path = _write_result(args.results, f"accuracy-{cfg.preset}", result)
    print(json.dumps(result) if args.json else accuracy.format_summary(result))
    print(f"written to {path}")
    return 0


def cmd_bench_ablation(args: argparse.Namespace) -> int:
    from dawntrain.bench import ablation

    cfg = _resolve(args)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ablation.ABLATIONS)
    out = _bench_runs(args, "ablation", cfg.preset)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"ablation-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        result = ablation.run(cfg, rows, args.runs, out, on_row=lambda r: ablation.write(path, r))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(json.dumps(result) if args.json else ablation.format_table(result))
    print(f"written to {path}")
    return 0


def _write_result(directory: Path, stem: str, result: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return atomic_write(path, (json.dumps(result, indent=2) + "\n").encode())


def cmd_data_convert(args: argparse.Namespace) -> int:
    from dawntrain.data.convert import convert

    manifest = convert(
        args.src,
        args.out,
        shards=args.shards,
        shard_size=args.shard_size,
        compression=args.compression,
        layout=args.layout,
        workers=args.workers,
        progress=not args.quiet,
    )
    for split, shards in manifest["splits"].items():
        size = sum((args.out / s["file"]).stat().st_size for s in shards)
        records = sum(s["records"] for s in shards)
        unlabelled = " (unlabelled)" if split in manifest["unlabelled"] else ""
        print(
            f"{split}: {records} records in {len(shards)} shard(s), {size / 1e6:.1f} MB{unlabelled}"
        )
    for note in manifest["notes"]:
        print(f"note: {note}")
    print(
        f"wrote {args.out / 'manifest.json'} ({manifest['layout']} layout, {len(manifest['classes'])} classes)"
    )
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from dawntrain.data.readers.records import first_bad_message, format_inspection, inspect
    from dawntrain.errors import RecordError

    report = inspect(args.paths, split=args.split, verify=args.verify)
    print(format_inspection(report), flush=True)
    bad = first_bad_message(report)
    if bad:
        raise RecordError(bad)
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from dawntrain.data import default_cache_dir
    from dawntrain.data.download import download_archive, mib
    from dawntrain.data.readers import ARCHIVES

    data_dir = default_cache_dir()
    directory = args.to or data_dir
    for name in dict.fromkeys(args.names):
        archive = ARCHIVES[name]
        there = (directory / archive.filename).exists()
        path = download_archive(archive, directory, progress=not args.quiet)
        *checks, last = archive.expected()
        checks = f"{', '.join(checks)} and {last}" if checks else last
        what = "already there" if there else "downloaded"
        print(f"{name}: {path} ({mib(path.stat().st_size)}), {what}, {checks} verified")
    if directory.resolve() != data_dir.resolve():
        print(
            f"to train with them, pass --data {directory}/FILE, or copy the files into the data "
            f"directory of the machine that trains (here {data_dir})"
        )
    return 0


def _age_seconds(text: str) -> float:
    """Seconds of an age on the command line: 30s, 45m, 12h, 7d (a bare number is days), 2w."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give an age like 30m, 12h, 7d or 2w")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match.group(2) or "d"]
    return float(match.group(1)) * unit


def _unit_interval(text: str) -> float:
    """A probability in (0, 1] on the command line."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a probability in (0, 1], e.g. 0.99")
    return value


def _age(text: str) -> str:
    _age_seconds(text)  # refused at parse time, kept as typed for messages
    return text.strip()


def _age_text(seconds: float) -> str:
    for unit, size, up_to in (("s", 1, 120), ("m", 60, 7200), ("h", 3600, 2 * 86400)):
        if seconds < up_to:
            return f"{max(seconds, 0) / size:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def cmd_data_cache(args: argparse.Namespace) -> int:
    from fnmatch import fnmatchcase

    from dawntrain.data import cache
    from dawntrain.data.download import mib

    directory = args.dir or cache.default_cache_dir()
    found = cache.entries(directory)
    named = [e for e in found if not args.names or any(fnmatchcase(e.key, n) for n in args.names)]
    if args.names and not named:
        raise DataError(
            f"no cache entry in {directory / 'arrays'} is named {' or '.join(args.names)}; "
            "`dawntrain data cache` lists them"
        )
    now = time.time()
    oldest = None if args.older_than is None else _age_seconds(args.older_than)
    chosen = [e for e in named if oldest is None or e.age(now) > oldest]
    if not chosen:
        older = f" written over {args.older_than} ago" if named else ""
        print(f"no cached arrays in {directory / 'arrays'}{older}")
        if args.clear:
            cache.remove(directory, [])  # still clear what killed writers left
        return 0
    width = max(len(str(e.path)) for e in chosen)
    print(f"{'AGE':>5}  {'SIZE':>11}  {'PATH':<{width}}  SOURCE")
    for e in chosen:
        print(f"{_age_text(e.age(now)):>5}  {mib(e.size):>11}  {str(e.path):<{width}}  {e.source}")
    count = f"{len(chosen)} {'entry' if len(chosen) == 1 else 'entries'}"
    total = mib(sum(e.size for e in chosen))
    if args.clear:
        cache.remove(directory, chosen)
        print(f"removed {count} ({total}); downloaded archives are kept")
    else:
        print(f"{count}, {total}; --clear removes {'it' if len(chosen) == 1 else 'them'}")
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from dawntrain.bench import data

    result = data.run(args.cifar, args.tiny, workers=args.workers)
    path = _write_result(args.results, "data", result)
    print(json.dumps(result) if args.json else data.format_table(result))
    print(f"written to {path}")
    return 0


def _plot_target(args: argparse.Namespace, name: str):
    """(config, output file) of a recipe plot: a RUN's config and RUN/<name>.png, or the
    options' config and --out, which is then required (no file lands in the working directory
    unasked)."""
    from dawntrain.config import load_toml

    if args.run is not None:
        if not (args.run / "config.toml").is_file():
            raise ConfigError(f"{args.run} is not a run directory (it has no config.toml)")
        base = load_toml(args.run / "config.toml")
        return _resolve(args, base=base), args.out or args.run / f"{name}.png"
    if args.out is None:
        raise ConfigError(f"plot {name}: give a RUN directory or --out FILE.png")
    return _resolve(args), args.out


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


def cmd_report(args: argparse.Namespace) -> int:
    from dawntrain.analysis.report import write_report

    print(f"written to {write_report(args.run, args.data, args.device or 'auto')}")
    return 0


def cmd_probe_lr(args: argparse.Namespace) -> int:
    from dawntrain.analysis.probe import format_probe, probe_lr
    from dawntrain.train import checkpoint

    # A checkpoint alone: probe with the config it was trained with.
    if args.checkpoint:
        args.checkpoint = checkpoint.in_run(args.checkpoint)
    own = args.checkpoint and args.preset is None and args.config is None
    cfg = _resolve(args, base=checkpoint.load(args.checkpoint)["config"] if own else None)
    result = probe_lr(cfg, args.checkpoint, args.batches)
    print(json.dumps(result) if args.json else format_probe(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dawntrain.infer.predict import format_predictions, predict

    device = args.device or "auto"
    results = predict(args.checkpoint, args.images, args.top_k, args.tta, device, args.weights)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dawntrain.infer.export import export

    model, sidecar = export(args.checkpoint, args.format, args.out, args.weights)
    print(f"written to {model} and {sidecar}")
    return 0


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="where to run (default auto: cuda if any)"
    )


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


def _weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=["raw", "ema"],
        default="raw",
        help="raw: the trained weights; ema: their exponential moving average, which a run "
        "trained with --ema stores beside them",
    )


def _train_parser(sub) -> None:
    p = _command(sub, "train", "train a model (a run directory: metrics, checkpoints, report)")
    _add_config_options(p)
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
        choices=["stop", "skip-step"],
        help="on a NaN/Inf loss: stop (default) or skip that optimizer step",
    )
    _ema_option(p)
    _best_and_init_options(p)
    p.set_defaults(func=cmd_train)


def _best_and_init_options(p: argparse.ArgumentParser) -> None:
    from dawntrain.config import BEST_METRICS

    p.add_argument(
        "--best-metric",
        metavar="METRIC",
        help="also keep checkpoints/best.pt, the epoch with the best value of this per-epoch "
        f"metric ({', '.join(BEST_METRICS)}); summary.json says which epoch and value "
        "(default: none)",
    )
    p.add_argument(
        "--best-mode",
        choices=["auto", "max", "min"],
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


def _model_parsers(sub) -> None:
    p = _command(sub, "presets", "list the named presets with their descriptions")
    p.set_defaults(func=cmd_presets)

    p = _command(sub, "eval", "test loss, top-1 and top-5 accuracy of a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", help="evaluate on this source instead of the run's")
    _device_option(p)
    p.add_argument(
        "--tta",
        type=int,
        choices=[0, 1, 2],
        help="test-time augmentation level (default: the run's own; 0 none, 1 flip, 2 flip + shifts)",
    )
    p.add_argument(
        "--tta-below",
        type=_unit_interval,
        metavar="P",
        help="TTA only on the images whose plain top-class probability is below P (default: "
        "the run's tta_below; 1: every image)",
    )
    p.add_argument("--batch-size", type=int, help="evaluation batch (default: the run's)")
    p.add_argument(
        "--shared-classes",
        action="store_true",
        help="where the data's classes differ from the checkpoint's, evaluate on the images of "
        "the classes both have (matched by name)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _weights_option(p)
    p.set_defaults(func=cmd_eval)

    p = _command(sub, "summary", "print a preset's layer table: shapes, parameters, FLOPs")
    _add_config_options(p)
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


def _bench_parsers(sub) -> None:
    bench = _command(sub, "bench", "benchmarks; results as JSON under --results")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    results = dict(type=Path, default=Path("benchmarks/results"), help="directory for the JSON")
    as_json = dict(action="store_true", help="print one JSON object instead of the table")
    p = _command(bench_sub, "throughput", "training images/s: reference path vs engine")
    _add_config_options(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--image-size", type=int, default=32, help="input side")
    p.add_argument(
        "--peak-size",
        type=int,
        default=4096,
        help="n of the n³ product timed as the peak (by matmul and as a 1x1 convolution)",
    )
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd engine")
    p.add_argument(
        "--vs",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="add a row: the engine with these config changes, e.g. --vs ceil_pool=false (repeatable)",
    )
    p.add_argument(
        "--rows",
        metavar="NAME,NAME",
        help="time only these rows, in this order; ratios are to the first "
        "(e.g. --rows engine,'engine ceil_pool=false')",
    )
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_throughput)
    p = _command(bench_sub, "profile", "where a training step's time goes: phase and kind of op")
    _add_config_options(p)
    p.add_argument("--steps", type=int, default=4, help="profiled steps")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    p.add_argument("--image-size", type=int, default=32, help="input side")
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_profile)
    _bench_conv_parser(bench_sub, results, as_json)
    _bench_tta_parser(bench_sub, results, as_json)
    runs_out = dict(type=Path, help="directory for the training runs (default RESULTS/runs/...)")
    p = _command(bench_sub, "accuracy", "test accuracy over N seeds, with wall time per run")
    _add_config_options(p)
    p.add_argument("--runs", type=int, default=3, help="training runs (seeds 0..N-1)")
    p.add_argument("--target", type=float, help="report the first epoch reaching this accuracy")
    p.add_argument("--out", **runs_out)
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_accuracy)
    p = _command(bench_sub, "ablation", "each trick of a recipe off, one at a time")
    _add_config_options(p)
    p.add_argument("--rows", help="comma-separated rows (default: all); see bench/ablation.py")
    p.add_argument("--runs", type=int, default=1, help="seeds per row")
    p.add_argument("--out", **runs_out)
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_ablation)
    p = _command(bench_sub, "data", "record shards vs image folders: convert, size, decode")
    p.add_argument("--cifar", type=Path, help="a CIFAR-10 image folder or its archive")
    p.add_argument("--tiny", type=Path, help="a Tiny ImageNet folder or its archive")
    p.add_argument("--workers", type=int, default=2, help="processes for every step")
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_data)


def _bench_conv_parser(bench_sub, results: dict, as_json: dict) -> None:
    p = _command(bench_sub, "conv", "small-map 3x3 convolutions: library vs matmuls")
    p.add_argument(
        "--shapes",
        help="BATCHxCHANNELSxSIDE or BATCHxC_INxC_OUTxSIDE,... (default: bench/conv.py's SHAPES)",
    )
    p.add_argument(
        "--preset", help="time every 3x3 convolution of this preset's model at its batch instead"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --preset: a config key",
    )
    p.add_argument("--image-size", type=int, help="with --preset: the input side (default its own)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per shape and path")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 where the CPU has it fast, else fp32",
    )
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_conv)


def _bench_tta_parser(bench_sub, results: dict, as_json: dict) -> None:
    p = _command(bench_sub, "tta", "a trained run's accuracy and TTA cost for each tta_below")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", help="its test set instead of the run's")
    _device_option(p)
    p.add_argument("--tta", type=int, choices=[1, 2], help="TTA level (default: the run's)")
    p.add_argument(
        "--thresholds",
        type=lambda text: tuple(_unit_interval(t) for t in text.split(",")),
        help="tta_below values, comma-separated (default: 0.5 to 0.999)",
    )
    _weights_option(p)
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_tta)


def _data_parsers(sub) -> None:
    data = _command(
        sub, "data", "convert to TFRecord shards; inspect records; download archives; the cache"
    )
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = _command(
        data_sub,
        "convert",
        "write any source as <split>-0000i-of-0000N.tfrecord[.gz] + manifest.json",
    )
    p.add_argument(
        "src", help="cifar10 | sample | tiny-imagenet | a path (archive, folder, records)"
    )
    p.add_argument("--out", type=Path, required=True, help="a new directory for the shards")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--shards", type=int, help="train shards (default 10, more past ~100 MB)")
    group.add_argument("--shard-size", type=int, help="records per shard, in every split")
    p.add_argument(
        "--compression", choices=["gzip", "zlib", "none"], default="gzip", help="of each shard"
    )
    p.add_argument("--layout", choices=["image", "seed"], default="image", help="record layout")
    p.add_argument("--workers", type=int, default=2, help="processes checking and writing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_convert)
    p = _command(data_sub, "inspect", "record count, features, labels; --verify every record")
    p.add_argument("paths", nargs="+", metavar="PATH", help="converted directory, glob or file")
    p.add_argument("--split", help="only this split")
    p.add_argument("--verify", action="store_true", help="check every CRC, decode every image")
    p.set_defaults(func=cmd_data_inspect)
    _data_download_and_cache_parsers(data_sub)


DATA_DIR = "$DAWNTRAIN_DATA, else $XDG_CACHE_HOME/dawntrain, else ~/.cache/dawntrain"
DOWNLOAD_EPILOG = f"""The data directory is {DATA_DIR};
--data cifar10 and --data tiny-imagenet look for the archives there (and download them there
when they are missing). A download cut short keeps FILE.part, which the next call resumes.

examples:
  dawntrain data download cifar10 tiny-imagenet       # into the data directory
  dawntrain data download cifar10 --to /media/usb     # then copy it to the offline machine"""
CACHE_EPILOG = f"""The cache is DIR/arrays, DIR being the data directory:
{DATA_DIR}.
An entry holds one source's decoded arrays; a run whose entry was removed decodes its source
again. --clear never removes downloaded archives.

examples:
  dawntrain data cache                      # list the entries
  dawntrain data cache --older-than 30d --clear
  dawntrain data cache 'records-*' --clear  # entries by name (a glob)"""


def _data_download_and_cache_parsers(data_sub) -> None:
    p = _command(
        data_sub,
        "download",
        "fetch official archives ahead of time: resumable, size and checksums checked",
        epilog=DOWNLOAD_EPILOG,
    )
    p.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        choices=["cifar10", "tiny-imagenet"],
        help="cifar10 (cifar-10-python.tar.gz, 163 MiB) | tiny-imagenet "
        "(tiny-imagenet-200.zip, 237 MiB)",
    )
    p.add_argument(
        "--to", type=Path, metavar="DIR", help="where to put them (default: the data directory)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_data_download)
    p = _command(
        data_sub,
        "cache",
        "list the decoded-array cache (age, size, path, source); --clear removes entries",
        epilog=CACHE_EPILOG,
    )
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="only entries named so (globs: 'cifar*')"
    )
    p.add_argument(
        "--older-than",
        type=_age,
        metavar="AGE",
        help="only entries written longer ago than AGE: 30m, 12h, 7d, 2w",
    )
    p.add_argument(
        "--clear",
        action="store_true",
        help="remove the entries listed (all of them without NAME or --older-than)",
    )
    p.add_argument("--dir", type=Path, help="the data directory (default: see below)")
    p.set_defaults(func=cmd_data_cache)


def _plot_parsers(sub) -> None:
    plot = _command(sub, "plot", "figures of a run or a recipe, saved as PNG")
    plot_sub = plot.add_subparsers(dest="plot", required=True)
    for name, what, several in (
        ("curves", "loss, accuracy, lr per epoch; several runs overlaid, with their mean", True),
        ("time", "validation and test accuracy against training time", True),
        ("steps", "training loss per step (RUN/steps.jsonl)", True),
        ("rates", "the lr each parameter group stepped with, per step", False),
    ):
        p = _command(plot_sub, name, what)
        p.add_argument("run", type=Path, metavar="RUN", nargs="+" if several else None,
                       help="run directories, overlaid" if several else "a run directory")  # fmt: skip
        first = " (the first RUN's)" if several else ""
        p.add_argument("--out", type=Path, help=f"default RUN/{name}.png{first}")
        p.set_defaults(func=cmd_plot)
    p = _command(plot_sub, "confusion", "confusion matrix, per-class accuracy of last.pt")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    p.add_argument("--out", type=Path, help="default RUN/confusion.png")
    p.add_argument("--data", help="test on this source instead of the run's")
    _device_option(p)
    p.set_defaults(func=cmd_plot)
    for name, what in (
        ("calibration", "reliability diagram, confidence of right and wrong, ECE"),
        ("confused-pairs", "the class pairs last.pt confuses most (true → predicted)"),
        ("mistakes", "the test images last.pt got wrong most confidently"),
        ("filters", "last.pt's whitening filters, or its first conv's"),
    ):
        p = _command(plot_sub, name, f"{what} (RUN/{name}.png)")
        p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
        p.add_argument("--out", type=Path, help=f"default RUN/{name}.png")
        if name != "filters":
            p.add_argument("--data", help="test on this source instead of the run's")
        _device_option(p)
        p.set_defaults(func=cmd_plot)
    plot_sub.choices["confused-pairs"].add_argument("--top", type=int, default=15, help="pairs")
    plot_sub.choices["mistakes"].add_argument("--n", type=int, default=16, help="images (≤ 32)")
    p = _command(plot_sub, "bench", "charts of `dawntrain bench` JSON files")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE.json", help="benchmark results")
    p.add_argument("--out", type=Path, help="default: the first FILE with .png")
    p.set_defaults(func=cmd_plot)
    recipe_run = dict(
        type=Path, nargs="?", metavar="RUN", help="a run directory: its config, output in it"
    )
    p = _command(plot_sub, "lr", "a recipe's lr schedule at step resolution")
    p.add_argument("run", **recipe_run)
    _add_config_options(p)
    p.add_argument("--n-train", type=int, help="training images (known for built-in sources)")
    p.add_argument("--out", type=Path, help="the PNG (default RUN/lr.png; needed without RUN)")
    p.set_defaults(func=cmd_plot)
    p = _command(plot_sub, "samples", "training images as the pipeline feeds them")
    p.add_argument("run", **recipe_run)
    _add_config_options(p)
    p.add_argument("--n", type=int, default=16, help="images in the grid")
    p.add_argument("--out", type=Path, help="the PNG (default RUN/samples.png; needed without RUN)")
    p.set_defaults(func=cmd_plot)


def _use_parsers(sub) -> None:
    p = _command(sub, "report", "write RUN/report.html: one self-contained page")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    p.add_argument("--data", help="test on this source instead of the run's")
    _device_option(p)
    p.set_defaults(func=cmd_report)
    p = _command(sub, "probe-lr", "the locally best step α* beside the schedule's lr")
    _add_config_options(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="probe these weights (default: the init); " + CHECKPOINT_HELP,
    )
    p.add_argument("--batches", type=int, default=4, help="training batches to probe")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_probe_lr)
    p = _command(sub, "predict", "class probabilities of image files")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="files or directories")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    p.add_argument("--tta", action="store_true", help="average the run's test-time views")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _device_option(p)
    _weights_option(p)
    p.set_defaults(func=cmd_predict)
    p = _command(sub, "export", "weights for use outside dawntrain, plus F.json")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument(
        "--format",
        choices=["safetensors", "onnx", "torchscript"],
        required=True,
        help="safetensors: the state dict; onnx: a graph for onnxruntime; torchscript: traced",
    )
    p.add_argument("--out", type=Path, required=True, help="the file to write (and F.json)")
    _weights_option(p)
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    from dawntrain import __version__

    parser = argparse.ArgumentParser(
        prog="dawntrain", description=__doc__, epilog=EXAMPLES, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"dawntrain {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    _model_parsers(sub)
    _bench_parsers(sub)
    _data_parsers(sub)
    _plot_parsers(sub)
    _use_parsers(sub)
    return parser


def _as_notes(show):
    """dawntrain's warnings (images converted to RGB, a lock taken over, ...) as one-line notes."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("dawntrain"):
            print(f"dawntrain: note: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader left (`dawntrain summary | head`): stop quietly, as a killed pipe would.
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _as_notes(warnings.showwarning)
        try:
            return args.func(args)
        except DawntrainError as e:
            if args.debug:
                raise
            print(f"dawntrain: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            # signals.RunInterrupted: saved a checkpoint on SIGINT/SIGTERM; exit 128 + signal.
            if str(e):
                print(f"dawntrain: {e}", file=sys.stderr)
            return getattr(e, "exit_code", 130)
        except BrokenPipeError:
            raise
        except OSError as e:
            if args.debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            print(
                f"dawntrain: error: the disk is full ({e}); free space, then resume with --resume",
                file=sys.stderr,
            )
            return 2
