"""Learning-rate schedules as functions of the fractional epoch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PiecewiseLinear:
    """Linear interpolation through (knot, value) pairs, flat outside: the original's `np.interp`."""

    def __init__(self, knots: Sequence[float], values: Sequence[float]):
        if len(knots) != len(values) or len(knots) < 2:
            raise ValueError("PiecewiseLinear needs as many values as knots, and at least two")
        if any(b < a for a, b in zip(knots, knots[1:])):
            raise ValueError(f"knots must be non-decreasing, got {list(knots)}")
        self.knots, self.values = [float(k) for k in knots], [float(v) for v in values]

    def __call__(self, epoch: float) -> float:
        return float(np.interp(epoch, self.knots, self.values))

    def __repr__(self) -> str:
        return f"PiecewiseLinear({self.knots}, {self.values})"


class Staircase:
    """`base` multiplied by `factor` at each milestone epoch passed: lr 0.01, ×0.1 at epoch 64."""

    def __init__(self, base: float, milestones: Sequence[float], factor: float = 0.1):
        self.base, self.milestones, self.factor = float(base), sorted(milestones), float(factor)

    def __call__(self, epoch: float) -> float:
        return self.base * self.factor ** sum(epoch >= m for m in self.milestones)

    def __repr__(self) -> str:
        return f"Staircase({self.base}, {self.milestones}, {self.factor})"


def one_cycle(
    peak: float, epochs: int, warmup: float | None = None, start: float = 0.0, final: float = 0.0
) -> PiecewiseLinear:
    """DavidNet's triangle: start·peak at 0 → peak at `warmup` (default the original's
    (epochs+1)//5) → final·peak at `epochs`."""
    warmup = (epochs + 1) // 5 if warmup is None else min(warmup, epochs)
    return PiecewiseLinear([0, warmup, epochs], [start * peak, peak, final * peak])
