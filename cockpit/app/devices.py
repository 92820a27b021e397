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

import psutil
from textual.message import Message

from cockpit.app.messages import DeviceSample, DevicesSampled, GpuReading

WINDOW_S = 600.0
"""Seconds of samples kept (the GPU panel's time axis)."""


class DeviceProbe(Protocol):
    """Reads the machine once; ``note`` says why there is no GPU, when there is none."""

    note: str | None

    def read(self) -> DeviceSample: ...

    def close(self) -> None: ...


class NvmlProbe:
    """GPUs through NVML (initialised once, shut down on close), CPU load through psutil."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.note: str | None = None
        self._nvml: Any = None
        self._handles: list[tuple[int, Any, str, float | None]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except ImportError:
            self.note = "no GPU monitoring: nvidia-ml-py is not installed"
        except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            self.note = f"no GPU here (NVML: {_nvml_reason(e)})"
        if self._nvml is not None:
            self._open_devices()
        psutil.cpu_percent(None)  # the first call only starts the measurement

    def _open_devices(self) -> None:
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as e:
            self.note = f"no GPU here (NVML: {_nvml_reason(e)})"
            return
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except Exception:
                continue
            name = _quiet(lambda h=handle: nv.nvmlDeviceGetName(h)) or f"GPU {index}"
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            limit = _quiet(lambda h=handle: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            self._handles.append((index, handle, str(name), limit))
        if not self._handles:
            self.note = "no GPU here (NVML found no device)"

    def read(self) -> DeviceSample:
        nv = self._nvml
        gpus = []
        for index, handle, name, limit in self._handles:
            memory = _quiet(lambda h=handle: nv.nvmlDeviceGetMemoryInfo(h))
            processes = _quiet(lambda h=handle: nv.nvmlDeviceGetComputeRunningProcesses(h)) or []
            gpus.append(
                GpuReading(
                    index=index,
                    name=name,
                    util=_quiet(lambda h=handle: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                    mem_used_mb=memory.used / 2**20 if memory else None,
                    mem_total_mb=memory.total / 2**20 if memory else None,
                    power_w=_quiet(lambda h=handle: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                    power_limit_w=limit,
                    pids=tuple(int(p.pid) for p in processes),
                )
            )
        return DeviceSample(self.clock(), tuple(gpus), psutil.cpu_percent(None))

    def close(self) -> None:
        if self._nvml is not None:
            _quiet(self._nvml.nvmlShutdown)
            self._nvml = None


def _quiet(read: Callable[[], Any]) -> Any:
    """One NVML reading, or None when this GPU cannot give it (not every GPU reports power)."""
    try:
        return read()
    except Exception:
        return None


def _nvml_reason(error: Exception) -> str:
    return str(error) or type(error).__name__


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
