"""The one door to NVML (nvidia-ml-py, imported as ``pynvml``) for the engine and the app.

NVML is initialised once per process however many users open it (the telemetry thread, the
slot queue, the app's GPU panel) and shut down when the last one closes. No library, no
driver, no GPU: ``ok`` is False and ``error`` says why in words; nothing raises. A reading a
GPU cannot give (not every GPU reports power) is None.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_users = 0
_module: Any = None
_error: str | None = None


def _reason(e: Exception) -> str:
    return str(e) or type(e).__name__


def _quiet(read: Any) -> Any:
    try:
        return read()
    except Exception:
        return None


class Nvml:
    """A handle on the process's NVML session; ``close()`` (or ``with``) gives it back."""

    def __init__(self) -> None:
        global _users, _module, _error
        with _lock:
            if _users == 0:
                _module, _error = None, None
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    _module = pynvml
                except ImportError:
                    _error = "nvidia-ml-py is not installed"
                except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
                    _error = f"NVML unavailable: {_reason(e)}"
            _users += 1
        self.nv: Any = _module
        self.error: str | None = _error
        self._open = True

    @property
    def ok(self) -> bool:
        return self.nv is not None

    def count(self) -> int:
        return int(_quiet(self.nv.nvmlDeviceGetCount) or 0) if self.ok else 0

    def handle(self, index: int | None = None, uuid: str | None = None) -> Any:
        """The device by UUID when given (immune to CUDA_VISIBLE_DEVICES remapping), else index."""
        if uuid:
            found = _quiet(lambda: self.nv.nvmlDeviceGetHandleByUUID(uuid))
            if found is not None:
                return found
        return self.nv.nvmlDeviceGetHandleByIndex(index or 0)

    def index(self, handle: Any) -> int | None:
        value = _quiet(lambda: self.nv.nvmlDeviceGetIndex(handle))
        return None if value is None else int(value)

    def name(self, handle: Any) -> str | None:
        name = _quiet(lambda: self.nv.nvmlDeviceGetName(handle))
        return name.decode(errors="replace") if isinstance(name, bytes) else name

    def power_limit_w(self, handle: Any) -> float | None:
        return _quiet(lambda: self.nv.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0)

    def sample(self, handle: Any) -> dict[str, float | None]:
        """Utilisation (% of the last sample period any kernel ran), memory (MB), power (W)."""
        nv = self.nv
        memory = _quiet(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        values = {
            "util": _quiet(lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu),
            "mem_used_mb": memory.used / 2**20 if memory is not None else None,
            "mem_total_mb": memory.total / 2**20 if memory is not None else None,
            "power_w": _quiet(lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        }
        return {k: None if v is None else round(float(v), 1) for k, v in values.items()}

    def processes(self, handle: Any) -> list[tuple[int, float | None]] | None:
        """[(pid, used MB)] of the compute processes on the device; None when NVML can't say."""
        procs = _quiet(lambda: self.nv.nvmlDeviceGetComputeRunningProcesses(handle))
        if procs is None:
            return None
        return [(int(p.pid), (p.usedGpuMemory / 2**20) if p.usedGpuMemory else None) for p in procs]

    def close(self) -> None:
        global _users, _module
        if not self._open:
            return
        self._open = False
        with _lock:
            _users -= 1
            if _users == 0 and _module is not None:
                _quiet(_module.nvmlShutdown)
                _module = None
        self.nv = None

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
