import pytest

from dawntrain.engine.schedules import PiecewiseLinear, Staircase, one_cycle


def test_davidnet_schedule_prints_the_original_log_values():
    schedule = one_cycle(0.4, 24)
    printed = [round(schedule(e), 4) for e in range(1, 25)]
    assert printed[:6] == [0.08, 0.16, 0.24, 0.32, 0.4, 0.3789]
    assert printed[6] == 0.3579
    assert printed[-3:] == [0.0421, 0.0211, 0.0]


def test_piecewise_linear_interpolates_and_is_flat_outside():
    s = PiecewiseLinear([0, 2, 4], [0, 1, 0])
    assert s(1) == pytest.approx(0.5) and s(3.5) == pytest.approx(0.25)
    assert s(-1) == 0 and s(10) == 0


def test_piecewise_linear_rejects_bad_knots():
    with pytest.raises(ValueError):
        PiecewiseLinear([0, 2, 1], [0, 1, 0])
    with pytest.raises(ValueError):
        PiecewiseLinear([0, 1], [0])


def test_staircase():
    s = Staircase(0.01, [64], 0.1)
    assert s(0) == 0.01 and s(63.99) == 0.01
    assert s(64) == pytest.approx(0.001) and s(72) == pytest.approx(0.001)
