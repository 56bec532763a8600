"""`dawntrain` (argv[1:]) with test-only plug-ins, set by environment variables; the library
has no hook for any of them: they come in through dawntrain.analysis.callbacks.for_config, as
tests/train/test_reliability.py's HARNESS does.

    DT_HARNESS_DELAY=0.2      sleep this long after every training step (a slow step)
    DT_HARNESS_DIE=E:S:R      rank R SIGKILLs itself after step S (1-based) of epoch E (0-based),
                              in the first start only (TORCHELASTIC_RESTART_COUNT unset or 0)
    DT_HARNESS_RECORD=PREFIX  each rank appends to PREFIX-rank<R>.jsonl, per step, the indices
                              (into the training set) of the images it trained on, found by their
                              pixels (null for augmented ones), and at each epoch's end its
                              examples over all ranks (the wrapped step holds the run: a
                              reference cycle, as a user's plug-in may make one)

After the run each rank prints to stderr how many DistributedDataParallel wrappers are still
alive, uncollected.
"""

import json
import os
import signal
import sys
import time

from dawntrain.analysis import callbacks
from dawntrain.train.callbacks import Callback


class Harness(Callback):
    def __init__(self):
        self.delay = float(os.environ.get("DT_HARNESS_DELAY", "0"))
        die = os.environ.get("DT_HARNESS_DIE")
        first_start = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        self.die = tuple(int(v) for v in die.split(":")) if die and first_start else None
        self.record = os.environ.get("DT_HARNESS_RECORD")
        self.file = None

    def on_fit_start(self, run, state):
        if not self.record:
            return
        self.file = open(f"{self.record}-rank{run.world.rank}.jsonl", "a")  # noqa: SIM115
        index = {run.train_x[i].cpu().numpy().tobytes(): i for i in range(len(run.train_x))}
        real_step = run.step

        def step(stats, x, y, epoch, step):
            images = [index.get(image.cpu().numpy().tobytes()) for image in x]  # None: augmented
            line = {"epoch": epoch, "step": step, "world": run.world.size, "images": images}
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
            return real_step(stats, x, y, epoch, step)

        run.step = step

    def on_step_end(self, run, state):
        if self.delay:
            time.sleep(self.delay)
        if self.die == (state.epoch, state.step, run.world.rank):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_metrics(self, run, state, metrics):
        if self.file is not None:
            line = {"epoch_end": state.epoch, "examples": state.stats.read()["examples"]}
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


real_for_config = callbacks.for_config
callbacks.for_config = lambda config: [*real_for_config(config), Harness()]

if __name__ == "__main__":
    import gc

    import torch

    from dawntrain.cli import main

    code = main(sys.argv[1:])
    # Counted without collecting: a wrapper left to the interpreter's exit can abort the process.
    alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    print(f"harness: {alive} DistributedDataParallel alive after the run", file=sys.stderr)
    raise SystemExit(code)
