"""scripts/gpu_check.sh: stops cleanly where no GPU is (CUDA hidden here); every step's command
runs for real on the CPU in its smoke mode; a failed step does not stop the ones after it, and
data that cannot be read skips only the runs that train on it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(out: Path, python: str = sys.executable, **env: str):
    env = {**os.environ, "PYTHON": python, **env}
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True)


def stand_in_python(tmp_path: Path, body: str) -> str:
    """A `python` for the script that runs `body` (bash) first, then the real interpreter."""
    path = tmp_path / "python"
    path.write_text(f'#!/usr/bin/env bash\n{body}\nexec "{sys.executable}" "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run")
def test_without_cuda_the_script_says_so_and_exits_0(tmp_path):
    done = run_script(tmp_path / "out", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["skipped.txt"]


# About 40 s on 2 Zen 3 cores (fp32): the benches' start-up and the two 1-epoch runs.
def test_smoke_mode_runs_every_step_and_a_failed_one_does_not_stop_the_rest(tmp_path):
    # The CUDA tests fail here (they only skip on a CPU); everything after them must still run.
    python = stand_in_python(
        tmp_path, 'if [ "$1 $2" = "-m pytest" ]; then echo "stand-in: 1 failed"; exit 3; fi'
    )
    out = tmp_path / "out"
    done = run_script(out, python, DEVICE="cpu", QUICK="1")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "!! failed: CUDA tests (exit 3)" in log
    assert log.count("!! failed") == 1, log
    for step in ("data: sample", "bench throughput davidnet", "bench throughput fast"):
        assert f"== {step}" in log
    assert "fast, seed 0, fp32" in log and "done in" in log
    names = {p.name for p in out.iterdir()}
    for preset in ("davidnet-b512", "fast-b1024"):
        assert any(n.startswith(f"throughput-{preset}") for n in names), names
    assert sum(n.startswith("accuracy-fast-") and n.endswith(".json") for n in names) == 2
    assert "5,000 training and 1,000 test images" in (out / "data.txt").read_text()
    for run in ("fast", "fast-fp32"):
        assert (out / "runs" / run / "seed0" / "summary.json").is_file()


def test_unreadable_data_skips_only_the_runs(tmp_path):
    # Every dawntrain command a no-op: only the data step and the script's own flow are tested.
    python = stand_in_python(tmp_path, 'if [ "$1" = -m ]; then echo "stand-in: $*"; exit 0; fi')
    out = tmp_path / "out"
    missing = tmp_path / "no-such-archive.tar.gz"
    done = run_script(out, python, DEVICE="cpu", DATA=str(missing))
    assert done.returncode == 1
    log = (out / "log.txt").read_text()
    assert f"!! failed: data: {missing} (exit 1)" in log
    assert "skipped the runs of fast" in log
    assert "== bench throughput fast" in log and "== fast," not in log
    data = (out / "data.txt").read_text()
    assert data.startswith(f"error: {missing}: no such file") and "Traceback" not in data
