"""Every random choice of a run derives from (seed, purpose, epoch, step, rank), with the purposes
named here, so a resumed or distributed run draws exactly what an uninterrupted one does.

The numbers are part of every recorded result: changing one changes what a seed trains.
"""

from __future__ import annotations

import numpy as np
import torch

EPOCH_PLAN = 1  # an epoch's order, crop offsets and flips (data/batches.py)
FLIP_PARITY = 2  # alternating flip: which images the first epoch flips
WHITEN_SUBSET = 3  # the training images the whitening filters are computed from
SANITY_SUBSET = 5  # the images of the untrained-model check (always seed 0: comparable runs)
VAL_SPLIT = 7  # the training images held out for validation
STEP = 11  # torch's global generator at each step: dropout masks
COLOR_JITTER = 13  # an epoch's brightness and contrast per image (data/batches.py)
CUTOUT = 17  # an epoch's cutout box per image (data/batches.py)


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator whose stream depends on (seed, *keys) and on nothing else."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of torch's global generator for one step (dropout masks draw from it)."""
    return int(np.random.SeedSequence([seed, epoch, step, rank, STEP]).generate_state(1)[0])
