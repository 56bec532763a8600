"""scripts/cpu_check.sh runs end to end in its quick mode (one step of each bench, one 1-epoch
run on the sample data) and leaves every figure in its folder."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "cpu_check.sh"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/time").is_file(), reason="needs GNU time")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quick_mode_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "QUICK": "1", "PYTHON": sys.executable}
    env.pop("AIRBENCH", None)
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert {
        "machine.txt",
        "log.txt",
        "throughput.txt",
        "profile.txt",
        "fast-budget-s0.txt",
    } <= names
    assert any(n.startswith("throughput-davidnet") and n.endswith(".json") for n in names)
    assert sum(n.startswith("profile-") and n.endswith(".json") for n in names) == 3
    assert "Elapsed (wall clock)" in (out / "fast-budget-s0.txt").read_text()
    summary = json.loads((out / "runs" / "fast-budget-s0" / "summary.json").read_text())
    assert summary["final"]["epoch"] == 1
    assert "done in" in (out / "log.txt").read_text()
