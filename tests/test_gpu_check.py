"""scripts/gpu_check.sh starts and stops cleanly where no GPU is (CUDA hidden here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run")
def test_without_cuda_the_script_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert (tmp_path / "out" / "skipped.txt").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["skipped.txt"]
