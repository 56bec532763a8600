"""`dawntrain bench ...`: each benchmark prints a table (or --json) and writes its JSON under
--results."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dawntrain.cli.options import (
    CHECKPOINT_HELP,
    add_config_options,
    command,
    device_option,
    resolve,
    unit_interval,
    weights_option,
)
from dawntrain.errors import ConfigError
from dawntrain.files import atomic_write


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from dawntrain.bench import throughput

    cfg = resolve(args)
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
    return _print_result(args, result, throughput.format_table, path)


def cmd_bench_profile(args: argparse.Namespace) -> int:
    from dawntrain.bench import profile

    cfg = resolve(args)
    result = profile.run(cfg, steps=args.steps, warmup=args.warmup, image_size=args.image_size)
    path = _write_result(args.results, f"profile-{cfg.preset}-b{cfg.batch_size}", result)
    return _print_result(args, result, profile.format_table, path)


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
    return _print_result(args, result, conv.format_table, path)


def cmd_bench_tta(args: argparse.Namespace) -> int:
    from dawntrain.bench import tta

    thresholds = args.thresholds or tta.THRESHOLDS
    result = tta.run(
        args.checkpoint, args.data, args.tta, thresholds, args.device or "auto", args.weights
    )
    path = _write_result(args.results, "tta", result)
    return _print_result(args, result, tta.format_table, path)


def _bench_runs(args: argparse.Namespace, kind: str, preset: str) -> Path:
    """Where a benchmark's training runs go: --out, else under the results directory."""
    out = args.out or args.results / "runs" / f"{kind}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"runs in {out}", file=sys.stderr)
    return out


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from dawntrain.bench import accuracy

    cfg = resolve(args)
    result = accuracy.run(cfg, args.runs, _bench_runs(args, "accuracy", cfg.preset), args.target)
    path = _write_result(args.results, f"accuracy-{cfg.preset}", result)
    return _print_result(args, result, accuracy.format_summary, path)


def cmd_bench_ablation(args: argparse.Namespace) -> int:
    from dawntrain.bench import ablation

    cfg = resolve(args)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ablation.ABLATIONS)
    out = _bench_runs(args, "ablation", cfg.preset)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"ablation-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        result = ablation.run(cfg, rows, args.runs, out, on_row=lambda r: ablation.write(path, r))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return _print_result(args, result, ablation.format_table, path)


def _write_result(directory: Path, stem: str, result: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return atomic_write(path, (json.dumps(result, indent=2) + "\n").encode())


def _print_result(args: argparse.Namespace, result: dict, table: Callable, path: Path) -> int:
    """The table and where the JSON went; with --json the JSON alone on stdout (one object, for
    a pipe) and the path on stderr."""
    if args.json:
        print(json.dumps(result))
        print(f"written to {path}", file=sys.stderr)
    else:
        print(table(result))
        print(f"written to {path}")
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from dawntrain.bench import data

    result = data.run(args.cifar, args.tiny, workers=args.workers)
    path = _write_result(args.results, "data", result)
    return _print_result(args, result, data.format_table, path)


def add_parsers(sub) -> None:
    bench = command(sub, "bench", "benchmarks; results as JSON under --results")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    results = dict(type=Path, default=Path("benchmarks/results"), help="directory for the JSON")
    as_json = dict(action="store_true", help="print one JSON object instead of the table")
    p = command(bench_sub, "throughput", "training images/s: reference path vs engine")
    add_config_options(p)
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
    p = command(bench_sub, "profile", "where a training step's time goes: phase and kind of op")
    add_config_options(p)
    p.add_argument("--steps", type=int, default=4, help="profiled steps")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    p.add_argument("--image-size", type=int, default=32, help="input side")
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_profile)
    _bench_conv_parser(bench_sub, results, as_json)
    _bench_tta_parser(bench_sub, results, as_json)
    runs_out = dict(type=Path, help="directory for the training runs (default RESULTS/runs/...)")
    p = command(bench_sub, "accuracy", "test accuracy over N seeds, with wall time per run")
    add_config_options(p)
    p.add_argument("--runs", type=int, default=3, help="training runs (seeds 0..N-1)")
    p.add_argument("--target", type=float, help="report the first epoch reaching this accuracy")
    p.add_argument("--out", **runs_out)
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_accuracy)
    p = command(bench_sub, "ablation", "each trick of a recipe off, one at a time")
    add_config_options(p)
    p.add_argument("--rows", help="comma-separated rows (default: all); see bench/ablation.py")
    p.add_argument("--runs", type=int, default=1, help="seeds per row")
    p.add_argument("--out", **runs_out)
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_ablation)
    p = command(bench_sub, "data", "record shards vs image folders: convert, size, decode")
    p.add_argument("--cifar", type=Path, help="a CIFAR-10 image folder or its archive")
    p.add_argument("--tiny", type=Path, help="a Tiny ImageNet folder or its archive")
    p.add_argument("--workers", type=int, default=2, help="processes for every step")
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_data)


def _bench_conv_parser(bench_sub, results: dict, as_json: dict) -> None:
    p = command(bench_sub, "conv", "small-map 3x3 convolutions: library vs matmuls")
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
    p = command(bench_sub, "tta", "a trained run's accuracy and TTA cost for each tta_below")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", help="its test set instead of the run's")
    device_option(p)
    p.add_argument("--tta", type=int, choices=[1, 2], help="TTA level (default: the run's)")
    p.add_argument(
        "--thresholds",
        type=lambda text: tuple(unit_interval(t) for t in text.split(",")),
        help="tta_below values, comma-separated (default: 0.5 to 0.999)",
    )
    weights_option(p)
    p.add_argument("--json", **as_json)
    p.add_argument("--results", **results)
    p.set_defaults(func=cmd_bench_tta)
