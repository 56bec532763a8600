"""scripts/cpu_check.sh runs end to end in its quick mode (one step of each bench, one 1-epoch
run on the sample data), leaves every figure in its folder, and runs airbench94_muon in the
precision dawntrain picks for the CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dawntrain.runtime.device import cpu_has_bf16

SCRIPT = Path(__file__).parents[1] / "scripts" / "cpu_check.sh"


@pytest.mark.slow
# Its benches alone take 9 minutes on 2 Zen 3 cores (fp32 only), past the suite's 600 s.
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not Path("/usr/bin/time").is_file(), reason="needs GNU time")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quick_mode_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    # Stands in for the public script (35 minutes on 2 cores): says the precision it was given.
    airbench = tmp_path / "airbench"
    airbench.mkdir()
    (airbench / "airbench94_muon.py").write_text("import os\nprint('BF16=' + os.environ['BF16'])\n")
    env = {**os.environ, "QUICK": "1", "PYTHON": sys.executable, "AIRBENCH": str(airbench)}
    env.pop("BF16", None)
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
    # bf16 only where the CPU computes it natively, as `--precision auto` does for dawntrain.
    assert f"BF16={int(cpu_has_bf16())}" in (out / "airbench94_muon.txt").read_text()
