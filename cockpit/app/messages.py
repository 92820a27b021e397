"""What the background threads hand to the UI: the data, and the messages that carry it.

Each message may replace an older pending one of its kind (``can_replace``): when the UI
falls behind a burst of writes, it handles the newest state once instead of every step of
the way.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from engine.torchfree.runfolder import RunSnapshot


@dataclass(frozen=True)
class RunState:
    """One run as the app shows it: its snapshot plus what the panels need."""

    snapshot: RunSnapshot
    last_eval: dict | None
    """The latest full-val row (every metric, for ranking in the compare view)."""
    waits: tuple[tuple[float, float], ...] = ()
    """(unix time, share of that second spent waiting on data) of a live run, oldest first."""
    gpu_index: int | None = None
    """The NVML index of the GPU the run trains on, when it does."""
    pids: frozenset[int] = frozenset()
    """The engine's process and its children (to tell cockpit's GPU processes from others)."""
    queue_position: int | None = None
    """A queued run's place in line, as its engine reports it."""

    @property
    def run_id(self) -> str:
        return self.snapshot.run_id


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment, through NVML."""

    index: int
    name: str
    util: float | None
    """Percent of the last sample period in which a kernel ran."""
    mem_used_mb: float | None
    mem_total_mb: float | None
    power_w: float | None
    power_limit_w: float | None
    pids: tuple[int, ...] = ()
    """Processes holding a compute context on it."""


@dataclass(frozen=True)
class DeviceSample:
    """The machine at one moment: every GPU, and the CPU load."""

    t: float
    gpus: tuple[GpuReading, ...]
    cpu: float
    """Percent of all cores busy."""


class RunsUpdated(Message):
    """The workspace's runs changed: new runs, new steps, new verdicts, runs gone."""

    def __init__(self, runs: tuple[RunState, ...], loading: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.runs = runs
        """Every run of the workspace, oldest first."""
        self.loading = loading
        """(runs read, runs found) while a large workspace is first read; None once done."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsUpdated)


class HistoryUpdated(Message):
    """New points arrived in a watched run's history."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HistoryUpdated) and message.run_id == self.run_id


class DevicesSampled(Message):
    """A new GPU (or CPU) sample, with the recent ones."""

    def __init__(self, samples: tuple[DeviceSample, ...], note: str | None) -> None:
        super().__init__()
        self.samples = samples
        """Oldest first, covering the panel's time window."""
        self.note = note
        """Why there is no GPU to show (None when there is one)."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DevicesSampled)
