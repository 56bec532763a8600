"""--init-from: a new run that starts from another run's trained weights (fine-tuning).

The run is built as any fresh run is (its seed's initial weights, a fresh optimizer and lr
schedule, epoch 0), then takes the checkpoint's weights: all of them when the classes are the
checkpoint's, all but the classifier head (the model's last Linear layer, which keeps its fresh
initialisation) when they are not. A checkpoint of another architecture is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from dawntrain.config import Config
from dawntrain.engine.lookahead import Lookahead
from dawntrain.errors import CheckpointError
from dawntrain.train import checkpoint

if TYPE_CHECKING:
    from dawntrain.engine.build import Run

# The config keys that shape the model's tensors (the rest of the architecture follows them);
# width_factor only FastNet's.
ARCHITECTURE_KEYS = ("model", "width", "width_factor")


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    keys = ARCHITECTURE_KEYS if config["model"] == "fast" else ARCHITECTURE_KEYS[:2]
    return {k: config[k] for k in keys}


def checkpoint_path(spec: str) -> Path:
    """A .pt file, or a run directory (its checkpoints/last.pt)."""
    path = checkpoint.in_run(Path(spec))
    if not path.is_file():
        raise CheckpointError(
            f"--init-from {spec}: {path} does not exist; give a checkpoint (.pt) or a run "
            "directory with checkpoints/last.pt"
        )
    return path


def describe(arch: dict[str, Any]) -> str:
    text = f"{arch['model']} of width {arch['width']}"
    return text + (f" and width_factor {arch['width_factor']}" if "width_factor" in arch else "")


def check_architecture(saved: dict[str, Any], config: Config, path: Path) -> None:
    """Refuse a checkpoint whose model is another architecture than the config's."""
    # Keys added since the checkpoint was written count as their defaults.
    theirs = architecture({**Config().to_dict(), **saved})
    ours = architecture(config.to_dict())
    if theirs != ours:
        raise CheckpointError(
            f"--init-from {path}: the checkpoint's model is a {describe(theirs)}, this run's a "
            f"{describe(ours)}; fine-tuning needs the same architecture: set "
            f"{', '.join(sorted(set(theirs) | set(ours)))} to the checkpoint's (its run's "
            "config.toml has them)"
        )


def head_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the classifier head: the model's last Linear layer."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return [f"{name}.{k}" for k in model.get_submodule(name).state_dict()]


def load_weights(run: Run, spec: str, say) -> dict[str, Any]:
    """Put the checkpoint's weights into the freshly built run and say what was taken; returns
    the record summary.json keeps (the checkpoint, its epoch, what was re-initialised)."""
    path = checkpoint_path(spec)
    saved = checkpoint.load(path, map_location=run.device)
    check_architecture(saved["config"], run.config, path)
    classes, own = list(saved["class_names"]), list(run.splits.class_names)
    fresh = [] if classes == own else head_keys(run.model)
    weights = {k: v for k, v in saved["model"].items() if k not in fresh}
    target = {k: v for k, v in run.model.state_dict().items() if k not in fresh}
    wrong = [
        f"{k}: checkpoint {tuple(weights[k].shape) if k in weights else 'none'} vs this run "
        f"{tuple(v.shape)}"
        for k, v in target.items()
        if k not in weights or weights[k].shape != v.shape
    ] + [f"{k}: not in this run's model" for k in weights if k not in target]
    if wrong:
        raise CheckpointError(
            f"--init-from {path}: its weights do not fit this run's model ({'; '.join(wrong[:3])})"
        )
    run.model.load_state_dict(weights, strict=False)  # what is missing is exactly `fresh`
    if run.lookahead is not None:  # its average starts from the weights training starts from
        run.lookahead = Lookahead(run.model)
    where = f"initialised from {path} (epoch {saved['epoch']} of its run)"
    if fresh:
        say(
            f"{where}: every layer but the classifier head ({', '.join(fresh)}), re-initialised "
            f"for this data's {len(own)} classes (the checkpoint's {len(classes)} are not them)"
        )
    else:
        say(f"{where}: all weights (the same {len(own)} classes)")
    return {"checkpoint": str(path), "epoch": saved["epoch"], "reinitialised": fresh}
