"""dawntrain: train image classifiers fast in plain PyTorch (DavidNet/ResNet-9 and a faster
network on CIFAR-10, a ResNet on Tiny ImageNet), then evaluate, inspect and export them.

The command parses arguments, calls the library and prints; the library computes and returns."""

# One module per group of commands, each with its parsers beside its commands; options.py holds
# what several share. This module builds the parser and turns errors into one-line messages.

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

from dawntrain.cli import bench, checkpoints, data, plot, recipes, train
from dawntrain.cli.options import Formatter
from dawntrain.errors import DawntrainError

EXAMPLES = """examples:
  dawntrain train --preset fast --data sample --epochs 4 --out runs/quick
  dawntrain eval --checkpoint runs/quick --tta
  dawntrain report runs/quick            # runs/quick/report.html
  dawntrain train --resume runs/quick     # continue an interrupted run under its own config
  dawntrain train --init-from runs/quick --preset fast --data D --epochs 6   # fine-tune

`dawntrain COMMAND --help` shows each command's options."""


def build_parser() -> argparse.ArgumentParser:
    from dawntrain import __version__

    parser = argparse.ArgumentParser(
        prog="dawntrain", description=__doc__, epilog=EXAMPLES, formatter_class=Formatter
    )
    parser.add_argument("--version", action="version", version=f"dawntrain {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (train, recipes, checkpoints, bench, data, plot):
        group.add_parsers(sub)
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
