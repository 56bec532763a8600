"""Short, fixed-seed runs whose final weights and metrics must not change when the code is
reshaped: each case is a `dawntrain train` command line, run in a fresh process.

    python tests/golden_runs.py --record    # add this machine's results to golden/runs.json

Floating-point results depend on the CPU's kernels (AVX2, AVX-512, AMX), torch's version and
the thread count, so the results are kept per machine signature; tests/test_golden_runs.py
compares against the entry for the machine it runs on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dawntrain.runtime.device import widest_isa_flag

GOLDEN = Path(__file__).parent / "golden" / "runs.json"
THREADS = 2
QUIET = ["--precision", "fp32", "--set", "report=false", "--quiet"]


def machine_signature() -> str:
    """torch version, the widest matmul ISA the CPU has, and the thread count."""
    return f"torch-{torch.__version__}/{widest_isa_flag() or 'baseline'}/{THREADS}-threads"


def synthetic_folder(root: Path, size: int, classes: int = 3, per_class: int = 16) -> Path:
    """A deterministic, learnable train/<class>/ + test/<class>/ PNG folder."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (size, size, 3)) + 60 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def cases(work: Path) -> dict[str, list[list[str]]]:
    """Case name → the command lines it runs, in order; the last one's run is the result."""
    folder64 = str(synthetic_folder(work / "folder64", 64))
    run = lambda name: ["--out", str(work / name)]  # noqa: E731
    davidnet = ["--preset", "davidnet", "--data", "sample", "--set", "width=16", *QUIET]
    return {
        "davidnet-w16-sample-1ep": [
            ["train", *davidnet, "--epochs", "1", *run("davidnet")],
        ],
        "fast-w16-sample-2ep-b256-tta": [
            [
                "train",
                "--preset",
                "fast",
                "--data",
                "sample",
                "--set",
                "width=16",
                "--epochs",
                "2",
                "--batch-size",
                "256",
                *QUIET,
                *run("fast"),
            ],
        ],
        "tiny-imagenet-resnet-w8-folder64-2ep": [
            [
                "train",
                "--preset",
                "tiny-imagenet-resnet",
                "--data",
                folder64,
                "--set",
                "width=8",
                "--set",
                "val_from_train=6",
                "--epochs",
                "2",
                "--batch-size",
                "14",
                "--set",
                "lr_milestones=[1]",
                *QUIET,
                *run("resnet"),
            ],
        ],
        # Epoch 1's checkpoint of a 2-epoch run, resumed in a new directory.
        "davidnet-w16-sample-resumed-at-epoch-1": [
            ["train", *davidnet, "--epochs", "2", *run("full")],
            [
                "copy",
                str(work / "full/checkpoints/epoch_01.pt"),
                str(work / "part/checkpoints/last.pt"),
            ],
            ["train", *davidnet, "--epochs", "2", *run("part"), "--resume", "last"],
        ],
        "davidnet-w16-sample-1ep-2-ranks-gloo": [
            ["torchrun", *davidnet, "--epochs", "1", *run("gloo")],
        ],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(argv: list[str], env: dict[str, str]) -> None:
    if argv[0] == "copy":
        Path(argv[2]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(argv[1], argv[2])
        return
    if argv[0] == "torchrun":
        # Two ranks as torchrun starts them, one thread each (the machine has two cores).
        port, procs = str(free_port()), []
        for rank in range(2):
            rank_env = {**env, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
            rank_env.update(MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dawntrain", "train", *argv[1:]],
                    env=rank_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
        for p, text in zip(procs, outputs):
            if p.returncode:
                raise RuntimeError(f"rank failed ({p.returncode}): {' '.join(argv)}\n{text}")
        return
    done = subprocess.run(
        [sys.executable, "-m", "dawntrain", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stdout.decode()}")


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def result_of(run_dir: Path) -> dict:
    """The final weights' hash and every printed metric except the timings."""
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    history = [
        {k: v for k, v in m.items() if not k.endswith("_s")} for m in json.loads(state["history"])
    ]
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    return {
        "weights_sha256": weights_sha256(state["model"]),
        "history": history,
        "final": {k: v for k, v in final.items() if not k.endswith("_s")},
    }


def run_cases(names: list[str] | None = None) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "DAWNTRAIN_DATA": str(work / "cache"),
            "OMP_NUM_THREADS": str(THREADS),
            "PYTHONHASHSEED": "0",
        }
        results = {}
        for name, commands in cases(work).items():
            if names and name not in names:
                continue
            for argv in commands:
                run_command(argv, env)
            out = Path(commands[-1][commands[-1].index("--out") + 1])
            results[name] = result_of(out)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--record", action="store_true", help=f"write this machine's results to {GOLDEN}"
    )
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    results = run_cases(args.cases or None)
    print(json.dumps(results, indent=2))
    if args.record:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden.setdefault(machine_signature(), {}).update(results)
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        print(f"recorded under {machine_signature()!r} in {GOLDEN}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
