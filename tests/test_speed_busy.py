"""A busy machine never turns a healthy model into a fail: the speed stage's one-second rule
is judged only when the loop got the core it asked for."""

from __future__ import annotations

import pytest

from engine.context import cpu_count
from engine.stages.speed import SpeedStage
from engine.torchfree.ladder import SpeedSettings

CROWDED = 4.0 * cpu_count()  # load average: runnable processes


@pytest.mark.parametrize(
    ("step_s", "cpu_share", "load", "status"),
    [
        (2.0, 0.2, CROWDED, "warn"),  # slow because the neighbours had the cores: not judged
        (2.0, 0.9, CROWDED, "fail"),  # busy machine, yet the loop had its core: it is slow
        (2.0, 0.2, 0.5, "fail"),  # a quiet machine: the time is the model's
        (0.5, 0.2, CROWDED, "pass"),
    ],
)
def test_batch_time_on_a_busy_machine(step_s, cpu_share, load, status):
    got = SpeedStage(SpeedSettings()).check_batch_time(step_s, cpu_share, load)
    assert got.status == status, got.detail
    if status == "warn":
        assert "the machine is busy" in got.detail and "run the speed stage again" in got.detail
    if status == "fail":
        assert "over 1 s" in got.detail
