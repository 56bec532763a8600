"""Training: one loop for every preset, its schedules, optimizer conventions and checkpoints."""

from dawntrain.train.loop import fit

__all__ = ["fit"]
