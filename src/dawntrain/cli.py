"""The `dawntrain` command: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
import warnings
from pathlib import Path

from dawntrain.errors import ConfigError, DawntrainError


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


def _resolve(args: argparse.Namespace, base: dict | None = None, **extra):
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
    return config.resolve(args.preset or "davidnet", args.config, args.set, overrides, base)


def _resumed_run(args: argparse.Namespace) -> tuple[dict | None, str | None]:
    """`--resume RUN` without --preset: (the config RUN's checkpoint was trained with, RUN),
    so that the resume command needs no other option. `--resume auto` repeats the first start's
    command, so its config resolves from that command as the first start's did."""
    from dawntrain.train import checkpoint

    if not args.resume or args.resume == "auto" or args.preset is not None:
        return None, None
    if args.resume == "last" and not args.out:
        raise ConfigError("--resume last needs --out RUN (or name the run: --resume RUN)")
    path = checkpoint.resolve_resume(args.resume, args.out or Path("."))
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return checkpoint.load(path)["config"], str(run)


def cmd_train(args: argparse.Namespace) -> int:
    from dawntrain.analysis.callbacks import for_config
    from dawntrain.train import fit

    base, run = _resumed_run(args)
    cfg = _resolve(
        args,
        base=base,
        out=str(args.out) if args.out else run,
        quiet=True if args.quiet else None,
        compile=True if args.compile else None,
        sanity_check=False if args.no_sanity_check else None,
        resize=True if args.resize else None,
        checkpoint_every_steps=args.checkpoint_every_steps,
        on_nonfinite=args.on_nonfinite,
        auto_resume=True if args.resume == "auto" else None,
    )
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    # `auto` travels as config.auto_resume, like the config-file route (auto_resume = true).
    fit(cfg, resume=None if args.resume == "auto" else args.resume, callbacks=for_config(cfg))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from dawntrain.config import presets

    for name, path in sorted(presets().items()):
        lines = path.read_text().splitlines()
        about = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), "")
        print(f"{name:<24} {about}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dawntrain.infer.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, args.data, args.device or "auto", args.tta, args.batch_size
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
    lines.append(line("plain", result))
    if "tta" in result:
        lines.append(line(f"TTA (level {result['tta']['level']})", result["tta"]))
    return "\n".join(lines)


def cmd_summary(args: argparse.Namespace) -> int:
    from dawntrain.analysis.summary import format_summary
    from dawntrain.models import model_for

    cfg = _resolve(args)
    size = args.image_size or (64 if cfg.preset.startswith("tiny") else 32)
    model = model_for(cfg, args.num_classes or _num_classes(cfg))
    print(format_summary(model, (3, size, size), title=f"{cfg.preset}: {cfg.model}"))
    return 0


def _num_classes(cfg) -> int:
    return 200 if cfg.data in ("tiny-imagenet",) else 10


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from dawntrain.bench import throughput

    cfg = _resolve(args)
    variants = throughput.variants_for(cfg, args.image_size, compile_too=args.compile)
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


def cmd_bench_conv(args: argparse.Namespace) -> int:
    from dawntrain.bench import conv

    shapes = conv.SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        except ValueError:
            shapes = []
        if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
            raise ConfigError(
                f"--shapes {args.shapes!r}: give BATCHxCHANNELSxSIDE,... e.g. 512x512x4"
            )
    result = conv.run(shapes, repeats=args.repeats)
    path = _write_result(args.results, "conv", result)
    print(json.dumps(result) if args.json else conv.format_table(result))
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


def cmd_bench_ablation(args: argparse.Namespace) -> int:
    from dawntrain.bench import ablation

    cfg = _resolve(args)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ablation.ABLATIONS)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("runs") / f"bench-ablation-{cfg.preset}-{stamp}"
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"ablation-{cfg.preset}-{stamp}.json"
    try:
        result = ablation.run(cfg, rows, args.runs, out, on_row=lambda r: ablation.write(path, r))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(ablation.format_table(result))
    print(f"written to {path}")
    return 0


def _write_result(directory: Path, stem: str, result: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


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


def cmd_bench_data(args: argparse.Namespace) -> int:
    from dawntrain.bench import data

    result = data.run(args.cifar, args.tiny, workers=args.workers)
    path = _write_result(args.results, "data", result)
    print(json.dumps(result) if args.json else data.format_table(result))
    print(f"written to {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from dawntrain.analysis import plots

    if args.plot == "curves":
        path = plots.plot_curves(args.run, args.out)
    elif args.plot == "confusion":
        path = plots.plot_confusion(args.run, args.out, args.data, args.device or "auto")
    elif args.plot == "lr":
        cfg = _resolve(args)
        path = plots.plot_lr(cfg, args.out or Path(f"lr-{cfg.preset}.png"), args.n_train)
    else:
        cfg = _resolve(args)
        path = plots.plot_samples(cfg.data, cfg, args.n, args.out)
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
    own = args.checkpoint and args.preset is None and args.config is None
    cfg = _resolve(args, base=checkpoint.load(args.checkpoint)["config"] if own else None)
    result = probe_lr(cfg, args.checkpoint, args.batches)
    print(json.dumps(result) if args.json else format_probe(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dawntrain.infer.predict import format_predictions, predict

    results = predict(args.checkpoint, args.images, args.top_k, args.tta, args.device or "auto")
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dawntrain.infer.export import export

    model, sidecar = export(args.checkpoint, args.format, args.out)
    print(f"written to {model} and {sidecar}")
    return 0


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
        metavar="PATH|last|auto",
        help="continue a run from a checkpoint, a run directory, or `last` in --out; `auto`: "
        "from --out's last checkpoint if there is one, else start fresh (the same command for "
        "the first start and every restart under torchrun --max-restarts or Slurm --requeue)",
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the named presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("eval", help="test loss and accuracy of a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", help="evaluate on this source instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--tta",
        type=int,
        choices=[0, 1, 2],
        help="test-time augmentation level (default: the run's own; 0 none, 1 flip, 2 flip + shifts)",
    )
    p.add_argument("--batch-size", type=int, help="evaluation batch (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
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
    p = bench_sub.add_parser("conv", help="small-map 3x3 convolutions: library vs matmuls")
    p.add_argument("--shapes", help="BATCHxCHANNELSxSIDE,... (default: bench/conv.py's SHAPES)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per shape and path")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.set_defaults(func=cmd_bench_conv)
    p = bench_sub.add_parser("accuracy", help="test accuracy over N seeds, with wall time per run")
    _add_config_options(p)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--target", type=float, help="report the first epoch reaching this accuracy")
    p.add_argument("--out", type=Path, help="directory for the runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.set_defaults(func=cmd_bench_accuracy)
    p = bench_sub.add_parser("ablation", help="each trick of a recipe off, one at a time")
    _add_config_options(p)
    p.add_argument("--rows", help="comma-separated rows (default: all); see bench/ablation.py")
    p.add_argument("--runs", type=int, default=1, help="seeds per row")
    p.add_argument("--out", type=Path, help="directory for the runs")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.set_defaults(func=cmd_bench_ablation)
    p = bench_sub.add_parser("data", help="record shards vs image folders: convert, size, decode")
    p.add_argument("--cifar", type=Path, help="a CIFAR-10 image folder or its archive")
    p.add_argument("--tiny", type=Path, help="a Tiny ImageNet folder or its archive")
    p.add_argument("--workers", type=int, default=2, help="processes for every step")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.set_defaults(func=cmd_bench_data)
    data = sub.add_parser("data", help="convert sources to TFRecord shards; inspect record files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "convert", help="write any source as <split>-0000i-of-0000N.tfrecord[.gz] + manifest.json"
    )
    p.add_argument(
        "src", help="cifar10 | sample | tiny-imagenet | a path (archive, folder, records)"
    )
    p.add_argument("--out", type=Path, required=True, help="a new directory for the shards")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--shards", type=int, help="train shards (default 10, more past ~100 MB)")
    group.add_argument("--shard-size", type=int, help="records per shard, in every split")
    p.add_argument("--compression", choices=["gzip", "zlib", "none"], default="gzip")
    p.add_argument("--layout", choices=["image", "seed"], default="image", help="record layout")
    p.add_argument("--workers", type=int, default=2, help="processes checking and writing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_convert)
    p = data_sub.add_parser("inspect", help="record count, features, labels; --verify every record")
    p.add_argument("paths", nargs="+", metavar="PATH", help="converted directory, glob or file")
    p.add_argument("--split", help="only this split")
    p.add_argument("--verify", action="store_true", help="check every CRC, decode every image")
    p.set_defaults(func=cmd_data_inspect)
    plot = sub.add_parser("plot", help="figures of a run or a recipe, saved as PNG")
    plot_sub = plot.add_subparsers(dest="plot", required=True)
    p = plot_sub.add_parser("curves", help="loss, accuracy, lr per epoch (RUN/curves.png)")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    p.add_argument("--out", type=Path, help="default RUN/curves.png")
    p.set_defaults(func=cmd_plot)
    p = plot_sub.add_parser("confusion", help="confusion matrix, per-class accuracy of last.pt")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    p.add_argument("--out", type=Path, help="default RUN/confusion.png")
    p.add_argument("--data", help="test on this source instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_plot)
    p = plot_sub.add_parser("lr", help="a recipe's lr schedule at step resolution")
    _add_config_options(p)
    p.add_argument("--n-train", type=int, help="training images (known for built-in sources)")
    p.add_argument("--out", type=Path, help="default lr-<preset>.png")
    p.set_defaults(func=cmd_plot)
    p = plot_sub.add_parser("samples", help="training images as the pipeline feeds them")
    _add_config_options(p)
    p.add_argument("--n", type=int, default=16, help="images in the grid")
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("report", help="write RUN/report.html: one self-contained page")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    p.add_argument("--data", help="test on this source instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("probe-lr", help="the locally best step α* beside the schedule's lr")
    _add_config_options(p)
    p.add_argument("--checkpoint", type=Path, help="probe these weights (default: the init)")
    p.add_argument("--batches", type=int, default=4, help="training batches to probe")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_probe_lr)
    p = sub.add_parser("predict", help="class probabilities of image files")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--tta", action="store_true", help="average the run's test-time views")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="weights for use outside dawntrain, plus F.json")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=["safetensors", "onnx", "torchscript"], required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_export)
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
        except OSError as e:
            if args.debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            print(
                f"dawntrain: error: the disk is full ({e}); free space, then resume with --resume",
                file=sys.stderr,
            )
            return 2
