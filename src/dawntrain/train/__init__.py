"""Training: fit(), the one loop every preset runs; checkpoints, the run lock, stop signals."""

from dawntrain.train.loop import fit

__all__ = ["fit"]
