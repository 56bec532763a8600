"""Export a checkpoint's model for use outside dawntrain: safetensors, ONNX or TorchScript.

Every export writes F and a JSON sidecar F.json with what a user needs to feed the model:
class names, input size and layout, and the normalization. The exported model takes the
normalized float32 NCHW batch and returns logits; the sidecar says how to normalize.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dawntrain.errors import ConfigError
from dawntrain.files import atomic_write
from dawntrain.infer.model import input_size, load_model

FORMATS = ("safetensors", "onnx", "torchscript")
ONNX_OPSET = 17


def sidecar(state: dict[str, Any], fmt: str, weights: str = "raw") -> dict[str, Any]:
    config = state["config"]
    h, w = input_size(state)
    norm = state["normalizer"]
    if norm["samplewise"]:
        how = "per image: x = rgb / 255; x = (x - x.mean()) / (x.std() + 1e-6) over all pixels"
    else:
        how = "per channel: x = (rgb - mean) / std, rgb in 0..255"
    return {
        "format": fmt,
        "preset": config["preset"],
        "model": config["model"],
        "classes": list(state["class_names"]),
        "input": {"shape": [None, 3, h, w], "layout": "NCHW", "dtype": "float32"},
        "output": "logits (softmax for probabilities)",
        "normalization": {
            "mean": norm["mean"],
            "std": norm["std"],
            "samplewise": norm["samplewise"],
            "how": how,
        },
        "weights": weights,  # raw: the trained weights; ema: their EMA (config.ema)
        "epoch": state.get("epoch"),
        "dawntrain": state.get("version"),
        "config": config,
    }


def _export_safetensors(model: nn.Module, out: Path, meta: dict[str, Any]) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ConfigError(
            "--format safetensors needs the safetensors package: pip install safetensors"
        ) from e
    # safetensors stores dense row-major tensors: undo channels_last.
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out), metadata={"dawntrain": json.dumps(meta)})


def _export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as e:
        raise ConfigError("--format onnx needs the onnx package: pip install onnx") from e
    # The TorchScript-based exporter (dynamo=False): the dynamo one also needs onnxscript and took
    # 12 s against 1 s on a width-4 DavidNet here; both give the same logits.
    torch.onnx.export(
        model,
        (example,),
        str(out),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )


def _export_torchscript(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(out))


def export(checkpoint: Path, fmt: str, out: Path, weights: str = "raw") -> tuple[Path, Path]:
    """Write the checkpoint's model to `out` in `fmt` and its description to `out`.json;
    `weights`: the trained ones ("raw") or their EMA ("ema", where the run kept one)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    trained = load_model(Path(checkpoint), "cpu", weights)
    model, state = trained.model, trained.state
    # Exported graphs are plain fp32 NCHW on the CPU; eval mode: BN running stats, no dropout.
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    h, w = input_size(state)
    example = torch.zeros(2, 3, h, w)
    meta = sidecar(state, fmt, weights)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # torch deprecates TorchScript and its ONNX exporter; both still work in torch 2.13.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if fmt == "safetensors":
            _export_safetensors(model, out, meta)
        elif fmt == "onnx":
            _export_onnx(model, example, out)
        else:
            _export_torchscript(model, example, out)
    side = out.with_name(out.name + ".json")
    atomic_write(side, (json.dumps(meta, indent=2) + "\n").encode())
    return out, side
