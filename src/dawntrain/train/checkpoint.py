"""Checkpoints: atomic writes, exact resume state, the newest N kept.

A checkpoint holds only tensors and plain types so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

from dawntrain.engine.build import shaped_by_epochs
from dawntrain.errors import CheckpointError
from dawntrain.files import atomic_write

# Config keys that may differ between a checkpoint and the run that resumes it; `epochs` only
# where nothing depends on it (check_epochs).
RESUMABLE_CHANGES = {
    "out",
    "device",
    "quiet",
    "epochs",
    "best_metric",
    "best_mode",
    "checkpoint_every_steps",
    "data",
    "compile",
    "cudnn_benchmark",
    "keep_checkpoints",
    "sanity_check",
    "on_nonfinite",
    "eval_batch_size",
    "dist_timeout_s",
    "workers",
    "log_every_steps",
    "loss_every_steps",
    "auto_resume",
    "stop_check_s",
}


def save(path: Path, state: dict[str, Any]) -> None:
    # Serialize in memory first: torch.save turns a failing write (a full disk) into a RuntimeError
    # without its errno, and a plain write keeps the OSError that atomic_write reports.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getbuffer(), error=CheckpointError)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        hint = "; a run writes best.pt only with best_metric set" if path.name == "best.pt" else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e}); use an older one") from e


def prune(directory: Path, pattern: str, keep: int) -> None:
    """Delete all but the `keep` newest epoch checkpoints matching `pattern` (a glob); last.pt
    and best.pt are never among them (a checkpoint_name such as "{epoch}.pt" matches them)."""
    found = [p for p in Path(directory).glob(pattern) if p.name not in ("last.pt", "best.pt")]
    found = sorted(found, key=lambda p: p.stat().st_mtime_ns)
    for old in found[:-keep] if keep > 0 else found:
        with contextlib.suppress(OSError):
            old.unlink()


def find_last(out_dir: Path) -> Path | None:
    """RUN/checkpoints/last.pt when it exists: what automatic resume continues from."""
    path = Path(out_dir) / "checkpoints" / "last.pt"
    return path if path.is_file() else None


def in_run(path: Path) -> Path:
    """A checkpoint file as it is; a run directory → its checkpoints/last.pt (a checkpoints
    directory → its last.pt); RUN/last or RUN/best → RUN/checkpoints/last.pt or best.pt, the
    names `--resume last` and `--best-metric` give them."""
    path = Path(path)
    if path.name in ("last", "best") and not path.exists() and path.parent.is_dir():
        return in_run(path.parent).with_name(f"{path.name}.pt")
    if not path.is_dir():
        return path
    return path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"


def resolve_resume(spec: str, out_dir: Path) -> Path:
    """`last`, a run directory or a checkpoint file → the checkpoint to load."""
    path = in_run(Path(out_dir) / "checkpoints" / "last.pt" if spec == "last" else Path(spec))
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    return path


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], ignore: set[str]
) -> list[str]:
    keys = sorted((set(saved) | set(current)) - ignore)
    return [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def check_resumable(state: dict[str, Any], config, world_size: int) -> None:
    """A checkpoint resumes only under its own config (RESUMABLE_CHANGES aside). One written
    inside an epoch resumes at any world size when the global batch stays the same (the rest of
    the epoch's global batches are split over the new ranks); with batch_scope = "per_rank" the
    global batch depends on the world size, so then only at its own."""
    check_same_config(state, config)
    saved_size = state.get("world_size", 1)
    if state["step_in_epoch"] and saved_size != world_size and config.batch_scope == "per_rank":
        raise CheckpointError(
            f"this checkpoint is from inside an epoch at world size {saved_size} with "
            f"batch_scope = per_rank, whose global batch changes with the world size; resume it "
            f"with {saved_size} processes, or from an epoch checkpoint at any size"
        )


def check_same_config(state: dict[str, Any], config) -> None:
    """The config half of check_resumable, which needs no world: the CLI calls it before any
    data loads. A checkpoint of another preset is named as such first."""
    # Keys added since the checkpoint was written count as their defaults.
    saved = {**type(config)().to_dict(), **state["config"]}
    differs = config_differences(saved, config.to_dict(), RESUMABLE_CHANGES)
    if not differs:
        check_epochs(state, saved["epochs"], config)
        return
    if saved.get("preset") != config.preset:
        raise CheckpointError(
            f"the checkpoint is a {saved.get('preset')!r} run, not {config.preset!r} "
            f"({len(differs)} config keys differ); resume it with its own config: "
            "`dawntrain train --resume RUN` and no --preset or other config option"
        )
    raise CheckpointError(
        f"the checkpoint belongs to another config ({'; '.join(differs)}); resume "
        "with its own config: `dawntrain train --resume RUN` and no other config option"
    )


def check_epochs(state: dict[str, Any], saved_epochs: int, config) -> None:
    """Epochs may change on resume only where nothing the run has done depends on them (a
    staircase schedule, no lookahead), and never below the epochs already trained."""
    if config.epochs == saved_epochs:
        return
    epoch, step = state["epoch"], state.get("step_in_epoch", 0)
    if config.epochs < epoch + (1 if step else 0):
        where = f"is inside epoch {epoch + 1}" if step else f"has trained {epoch} epochs"
        raise CheckpointError(
            f"the checkpoint {where} of its run's {saved_epochs}, beyond --epochs "
            f"{config.epochs}; resume it with --epochs {saved_epochs}"
        )
    shaped = shaped_by_epochs(config)
    if shaped:
        raise CheckpointError(
            f"the run was set up for {saved_epochs} epochs, not {config.epochs}: "
            f"{' and '.join(shaped)}, so resuming with other epochs would join two different "
            f"runs in one. Resume with --epochs {saved_epochs}, or train on as a new run from "
            "its weights (a fresh optimizer and schedule): `dawntrain train --init-from "
            "RUN/checkpoints/last.pt --epochs N` with the run's options. Epochs may change on "
            "resume only with lr_schedule = staircase and lookahead off"
        )
