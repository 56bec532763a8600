"""The `dawntrain` command: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dawntrain.errors import DawntrainError


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="davidnet", help="named preset (see `dawntrain presets`)")
    p.add_argument(
        "--config", type=Path, help="a TOML file of config keys, applied after the preset"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key, e.g. --set width=32 (repeatable)",
    )
    p.add_argument(
        "--data", help="cifar10 | sample | tiny-imagenet | a path (archive, folder, records)"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])


def _resolve(args: argparse.Namespace, **extra):
    from dawntrain import config

    overrides = {
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": args.device,
        "precision": args.precision,
        **extra,
    }
    return config.resolve(args.preset, args.config, args.set, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from dawntrain.train import fit

    cfg = _resolve(
        args,
        out=str(args.out) if args.out else None,
        quiet=True if args.quiet else None,
        compile=True if args.compile else None,
        sanity_check=False if args.no_sanity_check else None,
    )
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    fit(cfg, resume=args.resume)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from dawntrain.config import presets

    for name, path in sorted(presets().items()):
        lines = path.read_text().splitlines()
        about = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), "")
        print(f"{name:<24} {about}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dawntrain.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, device=args.device or "auto")
    print(
        f"{result['split']}: loss {result['loss']:.4f}  accuracy {result['acc']:.4f}  "
        f"({result['examples']} images)"
    )
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from dawntrain.analysis.summary import format_summary
    from dawntrain.models import build_model

    cfg = _resolve(args)
    size = args.image_size or (64 if cfg.preset.startswith("tiny") else 32)
    model = build_model(cfg.model, args.num_classes or _num_classes(cfg), cfg.width, cfg.dropout)
    print(format_summary(model, (3, size, size), title=f"{cfg.preset}: {cfg.model}"))
    return 0


def _num_classes(cfg) -> int:
    return 200 if cfg.data in ("tiny-imagenet",) else 10


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from dawntrain.bench import throughput

    cfg = _resolve(args)
    variants = throughput.default_variants(compile_too=args.compile)
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


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from dawntrain.bench import accuracy

    cfg = _resolve(args)
    out = args.out or Path("runs") / f"bench-accuracy-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = accuracy.run(cfg, args.runs, out, target=args.target)
    path = _write_result(args.results, f"accuracy-{cfg.preset}", result)
    print(json.dumps(result) if args.json else accuracy.format_summary(result))
    print(f"written to {path}")
    return 0


def _write_result(directory: Path, stem: str, result: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dawntrain", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model")
    _add_config_options(p)
    p.add_argument("--out", type=Path, help="run directory (default runs/<preset>-<timestamp>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="PATH|last",
        help="continue a run from a checkpoint, a run directory, or `last` in --out",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--no-sanity-check", action="store_true", help="skip the untrained-model check")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the named presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("eval", help="test loss and accuracy of a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", help="evaluate on this source instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("summary", help="print a preset's layer table")
    _add_config_options(p)
    p.add_argument("--image-size", type=int)
    p.add_argument("--num-classes", type=int)
    p.set_defaults(func=cmd_summary)

    bench = sub.add_parser("bench", help="benchmarks (results as JSON under benchmarks/results/)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    p = bench_sub.add_parser("throughput", help="training images/s: reference path vs engine")
    _add_config_options(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--peak-size", type=int, default=4096, help="n of the n³ matmul peak")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd engine")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.set_defaults(func=cmd_bench_throughput)
    p = bench_sub.add_parser("accuracy", help="test accuracy over N seeds, with wall time per run")
    _add_config_options(p)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--target", type=float, help="report the first epoch reaching this accuracy")
    p.add_argument("--out", type=Path, help="directory for the runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.set_defaults(func=cmd_bench_accuracy)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DawntrainError as e:
        if args.debug:
            raise
        print(f"dawntrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
