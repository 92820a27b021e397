"""The machine's GPUs (NVML) or, without one, its CPU load — sampled about once a second.

NVML's utilization counter covers the last 1/6 s to 1 s, so polling faster only repeats
values; one thread samples at ~1 Hz and the UI never calls NVML while drawing. Everything
NVML can throw is caught: a missing library, a driver that is not loaded, a GPU that falls
off the bus. Without a GPU the panel says so once and shows the CPU instead.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from textual.message import Message

from cockpit.app.messages import DeviceSample, DevicesSampled, GpuReading
from engine.torchfree.nvml import Nvml

WINDOW_S = 600.0
"""Seconds of samples kept (the GPU panel's time axis)."""


class DeviceProbe(Protocol):
    """Reads the machine once; ``note`` says why there is no GPU, when there is none."""

    note: str | None

    def read(self) -> DeviceSample: ...

    def close(self) -> None: ...


class NvmlProbe:
    """GPUs through NVML (the one wrapper, engine/torchfree/nvml.py), CPU load through psutil."""

    def __init__(self, clock: Callable[[], float] = time.time):
        import psutil  # on the sampling thread, after the first frame

        self.clock = clock
        self._cpu_percent = psutil.cpu_percent
        self.note: str | None = None
        self._nvml = Nvml()
        self._handles: list[tuple[int, Any, str, float | None]] = []
        if not self._nvml.ok:
            reason = self._nvml.error or "NVML unavailable"
            self.note = (
                f"no GPU monitoring: {reason}"
                if "not installed" in reason
                else f"no GPU here ({reason.replace('NVML unavailable: ', 'NVML: ')})"
            )
        else:
            self._open_devices()
        self._cpu_percent(None)  # the first call only starts the measurement

    def _open_devices(self) -> None:
        nvml = self._nvml
        for index in range(nvml.count()):
            try:
                handle = nvml.handle(index=index)
            except Exception:
                continue
            name = nvml.name(handle) or f"GPU {index}"
            self._handles.append((index, handle, str(name), nvml.power_limit_w(handle)))
        if not self._handles:
            self.note = "no GPU here (NVML found no device)"

    def read(self) -> DeviceSample:
        gpus = []
        for index, handle, name, limit in self._handles:
            values = self._nvml.sample(handle)
            processes = self._nvml.processes(handle) or []
            gpus.append(
                GpuReading(
                    index=index,
                    name=name,
                    util=values["util"],
                    mem_used_mb=values["mem_used_mb"],
                    mem_total_mb=values["mem_total_mb"],
                    power_w=values["power_w"],
                    power_limit_w=limit,
                    pids=tuple(pid for pid, _ in processes),
                )
            )
        return DeviceSample(self.clock(), tuple(gpus), self._cpu_percent(None))

    def close(self) -> None:
        self._nvml.close()


class DeviceSampler:
    """The sampling thread: ``run`` reads the probe every ``interval`` s and posts the window."""

    def __init__(
        self,
        post: Callable[[Message], object],
        probe: DeviceProbe | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ):
        self.post = post
        self.clock = clock
        self.interval = interval
        self.probe: DeviceProbe | None = probe
        self.samples: deque[DeviceSample] = deque()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        # NVML is opened on this thread so the app's first frame never waits for the driver
        probe = self.probe if self.probe is not None else NvmlProbe(self.clock)
        try:
            while not self._stop.is_set():
                self.add(probe.read())
                self.post(DevicesSampled(tuple(self.samples), probe.note))
                self._stop.wait(self.interval)
        finally:
            probe.close()

    def add(self, sample: DeviceSample) -> None:
        """Keep ``sample`` (replacing one taken at the same instant) and drop the too-old."""
        if self.samples and self.samples[-1].t == sample.t:
            self.samples[-1] = sample
        else:
            self.samples.append(sample)
        while self.samples and self.samples[0].t < sample.t - WINDOW_S:
            self.samples.popleft()
