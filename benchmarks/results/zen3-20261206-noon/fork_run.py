"""Continue a finished run from one of its epoch checkpoints with some config keys changed: a
paired test of an idea that acts only on the last epochs (the epochs before are the source
run's, bit for bit, so the seeds' spread drops out of the comparison).

    python benchmarks/results/zen3-20261206-noon/fork_run.py SRC_RUN EPOCH NEW_RUN [KEY=VALUE ...]

Copies SRC_RUN/checkpoints/epoch_EE.pt (a run keeps its last 5) into NEW_RUN/checkpoints with
the keys changed in the config stored in it, then resumes that copy with `dawntrain train
--resume` on the CIFAR-10 source in $DATA (default ../shared/data/cifar10-jpeg.tar.gz): the
same training and evaluation path as every run. `dawntrain train --resume` itself refuses a
changed config, rightly: a resumed run must be the run it continues. With no KEY=VALUE the
fork reproduces SRC_RUN's last epoch and test figures exactly (checked on fast-budget seed 0).
"""

import ast
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from dawntrain.config import Config
from dawntrain.train import checkpoint

src, epoch, new, *sets = sys.argv[1:]
state = checkpoint.load(Path(src) / "checkpoints" / f"epoch_{int(epoch):02d}.pt")
for item in sets:
    key, value = item.split("=", 1)
    if key not in Config().to_dict():
        sys.exit(f"{key} is not a config key")
    with contextlib.suppress(ValueError, SyntaxError):  # else a string
        value = ast.literal_eval(value)
    print(f"{key}: {state['config'].get(key)!r} -> {value!r}")
    state["config"][key] = value
state["config"]["out"] = new
(Path(new) / "checkpoints").mkdir(parents=True)
dest = Path(new) / "checkpoints" / f"epoch_{int(epoch):02d}.pt"
checkpoint.save(dest, state)
data = os.environ.get("DATA", "../shared/data/cifar10-jpeg.tar.gz")
sys.exit(
    subprocess.call(["dawntrain", "train", "--resume", str(dest), "--out", new, "--data", data])
)
