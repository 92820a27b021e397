"""A value axis whose limits hold while a live curve moves a little (plot.snapped)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from cockpit.app.widgets.plot import nice_ticks, snapped, tick_step, value_ticks


def test_a_falling_loss_keeps_its_limits_for_most_redraws():
    # a live loss: its lowest point falls 0.2% of the range per redraw
    limits = [value_ticks(0.5 - 0.002 * i, 2.0, log=False)[:2] for i in range(100)]
    changes = sum(a != b for a, b in pairwise(limits))
    assert changes <= 15  # exact limits would change at all 99 redraws
    for i, (lo, hi) in enumerate(limits):
        assert lo < 0.5 - 0.002 * i and hi > 2.0  # the data and their padding stay inside


@pytest.mark.parametrize(("lo", "hi"), [(0.5, 2.0), (1e-5, 3e-5), (-7.0, 130.0), (0.99, 1.01)])
def test_snapped_limits_are_round_and_waste_little(lo, hi):
    a, b = snapped(lo, hi)
    grain = tick_step(lo, hi) / 10
    assert a <= lo and b >= hi
    assert round(a / grain, 6) == round(a / grain) and round(b / grain, 6) == round(b / grain)
    assert (lo - a) + (b - hi) <= 2 * grain + 1e-12
    assert 2 * grain <= 0.13 * (hi - lo)  # at most a grain each side: a few % of the range


def test_snapped_is_deterministic_and_leaves_a_flat_or_broken_range_alone():
    assert snapped(0.31, 0.93) == snapped(0.31, 0.93)
    assert snapped(1.0, 1.0) == (1.0, 1.0)
    lo, hi = snapped(math.nan, 1.0)
    assert math.isnan(lo) and hi == 1.0


def test_the_ticks_still_lie_inside_the_snapped_limits():
    lo, hi, ticks = value_ticks(0.123, 0.987, log=False)
    assert ticks and all(lo <= t <= hi for t in ticks)
    assert ticks == [t for t in nice_ticks(lo, hi) if lo <= t <= hi]
