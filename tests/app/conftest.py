"""Fixtures of the app's tests: fixture workspaces, a frozen clock, a fake GPU, and waiting
helpers for Pilot (the app's data arrives from threads)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from cockpit.app.main import CockpitApp
from cockpit.app.messages import DeviceSample, GpuReading
from tests.app.workspaces import T0, build_lab, start_sleeper, wiggle


class FakeProbe:
    """One 80 GB GPU, busy 38% of the time, and a steady CPU: stable snapshots."""

    note = None

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock

    def read(self) -> DeviceSample:
        return gpu_sample(self.clock(), 38.0)

    def close(self) -> None:
        pass


class NoGpuProbe(FakeProbe):
    note = "no GPU here (NVML Shared Library Not Found)"

    def read(self) -> DeviceSample:
        return DeviceSample(self.clock(), (), 42.0)


def gpu_sample(t: float, util: float) -> DeviceSample:
    reading = GpuReading(
        index=0,
        name="Fake H100",
        util=util,
        mem_used_mb=20_480.0,
        mem_total_mb=81_920.0,
        power_w=180.0,
        power_limit_w=700.0,
        pids=(4242,),
    )
    return DeviceSample(t, (reading,), 25.0)


def make_app(
    workspace: Path, *, gpu: bool = True, clock: Callable[[], float] | None = None
) -> CockpitApp:
    """The app on ``workspace`` with a frozen clock and a fake device (with 3 minutes of history)."""
    clock = clock or (lambda: T0)
    probe = FakeProbe(clock) if gpu else NoGpuProbe(clock)
    app = CockpitApp(workspace, clock=clock, device_probe=probe, poll_interval=0.1)
    now = clock()
    for i in range(180, 0, -1):
        app.device_sampler.add(
            gpu_sample(now - i, 38.0 + 20 * wiggle(i, 9))
            if gpu
            else DeviceSample(now - i, (), 40.0 + 10 * wiggle(i, 9))
        )
    return app


async def wait_until(
    pilot: Pilot, predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Let the app run until ``predicate()`` holds (the data comes from background threads)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def settled(pilot: Pilot, runs: int) -> None:
    """Wait until the app shows ``runs`` runs, then let pending redraws land."""
    app = pilot.app
    await wait_until(pilot, lambda: len(app.runs) == runs, what=f"{runs} runs")
    await wait_until(pilot, lambda: app.samples, what="a device sample")
    await pilot.pause(0.6)


async def histories_loaded(pilot: Pilot) -> None:
    app = pilot.app
    await wait_until(
        pilot, lambda: all(h.loaded for h in app._histories.values()), what="histories"
    )
    await pilot.pause(0.6)  # one throttle window for the plots


@pytest.fixture(scope="session")
def sleeper() -> Iterator[int]:
    """A harmless live process the fixture runs record as their engine."""
    proc = start_sleeper()
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def lab(
    tmp_path: Path, sleeper: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, dict[str, str]]:
    """Seven fixture runs in ./runs (relative, so the path on screen is stable)."""
    monkeypatch.chdir(tmp_path)
    workspace = Path("runs")
    workspace.mkdir()
    return workspace, build_lab(workspace, sleeper)
