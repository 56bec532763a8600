"""Commands on a trained run's checkpoint: eval, report, probe-lr (also on the untrained
model), predict, export."""

from __future__ import annotations

import argparse
import json
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
    cfg = resolve(args, base=checkpoint.load(args.checkpoint)["config"] if own else None)
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


def add_parsers(sub) -> None:
    p = command(sub, "eval", "test loss, top-1 and top-5 accuracy of a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", help="evaluate on this source instead of the run's")
    device_option(p)
    p.add_argument(
        "--tta",
        type=int,
        choices=[0, 1, 2],
        help="test-time augmentation level (default: the run's own; 0 none, 1 flip, 2 flip + shifts)",
    )
    p.add_argument(
        "--tta-below",
        type=unit_interval,
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
    weights_option(p)
    p.set_defaults(func=cmd_eval)
    _use_parsers(sub)


def _use_parsers(sub) -> None:
    p = command(sub, "report", "write RUN/report.html: one self-contained page")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    p.add_argument("--data", help="test on this source instead of the run's")
    device_option(p)
    p.set_defaults(func=cmd_report)
    p = command(sub, "probe-lr", "the locally best step α* beside the schedule's lr")
    add_config_options(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="probe these weights (default: the init); " + CHECKPOINT_HELP,
    )
    p.add_argument("--batches", type=int, default=4, help="training batches to probe")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_probe_lr)
    p = command(sub, "predict", "class probabilities of image files")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="files or directories")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    p.add_argument("--tta", action="store_true", help="average the run's test-time views")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    device_option(p)
    weights_option(p)
    p.set_defaults(func=cmd_predict)
    p = command(sub, "export", "weights for use outside dawntrain, plus F.json")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    p.add_argument(
        "--format",
        choices=["safetensors", "onnx", "torchscript"],
        required=True,
        help="safetensors: the state dict; onnx: a graph for onnxruntime; torchscript: traced",
    )
    p.add_argument("--out", type=Path, required=True, help="the file to write (and F.json)")
    weights_option(p)
    p.set_defaults(func=cmd_export)
