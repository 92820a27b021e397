"""About once a second: the run's GPU through NVML, CPU and RAM through psutil, and the
share of the last second the loop spent waiting on the data loader — one time axis.

No GPU, no driver, no NVML library: one line in telemetry.jsonl says so, and sampling goes
on with CPU and RAM only. NVML comes through engine/torchfree/nvml.py, the one wrapper.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from engine.torchfree.nvml import Nvml
from engine.torchfree.runfolder import JsonlAppender


def cuda_uuid(device: Any) -> str | None:
    """The NVML UUID of a torch CUDA device, so CUDA_VISIBLE_DEVICES remapping can't confuse us."""
    try:
        import torch

        props = torch.cuda.get_device_properties(device)
        u = str(props.uuid)
        return u if u.startswith("GPU-") else f"GPU-{u}"
    except Exception:
        return None


class TelemetrySampler(threading.Thread):
    """Background thread; ``stop()`` joins it. Costs well under 1% of a core."""

    def __init__(self, out_path, meter, device: Any = None, interval: float = 1.0):
        super().__init__(name="cockpit-telemetry", daemon=True)
        self.out = JsonlAppender(out_path)
        self.meter = meter
        self.interval = interval
        self._halt = threading.Event()
        self.nvml = Nvml() if getattr(device, "type", None) == "cuda" else None
        self.gpu = None
        self.gpu_index = None
        if self.nvml is not None and self.nvml.ok:
            try:
                self.gpu = self.nvml.handle(index=device.index or 0, uuid=cuda_uuid(device))
                self.gpu_index = self.nvml.index(self.gpu)
            except Exception as e:
                self.nvml.error = f"NVML has no handle for {device}: {e}"
                self.gpu = None
        self.proc = psutil.Process()
        psutil.cpu_percent(None)
        self._header()

    def _header(self) -> None:
        if self.nvml is None:
            note = "no GPU: the run is on the CPU"
        elif self.gpu is None:
            note = self.nvml.error or "NVML unavailable"
        else:
            note = None
        row: dict[str, Any] = {"t": time.time(), "kind": "header", "gpu_index": self.gpu_index}
        if note:
            row["gpu_note"] = note
        else:
            row["gpu_name"] = self.nvml.name(self.gpu)
        self.out.append(row)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.sample()
            except OSError as e:  # a full disk: the run records why; telemetry just stops
                print(f"telemetry stopped: {e.strerror or e} on {e.filename or 'telemetry.jsonl'}")
                return

    def sample(self) -> None:
        wait, total, steps = self.meter.take()
        row: dict[str, Any] = {
            "t": round(time.time(), 3),
            "cpu": psutil.cpu_percent(None),
            "ram": psutil.virtual_memory().percent,
            "rss_mb": round(self._tree_rss() / 2**20, 1),
            "steps": steps,
            "data_wait": round(wait / total, 4) if total > 0 else None,
        }
        if self.gpu is not None:
            row["gpu"] = self.nvml.sample(self.gpu)
            row["gpu"]["index"] = self.gpu_index
        self.out.append(row)

    def _tree_rss(self) -> int:
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            procs = [self.proc]
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=2 * self.interval + 1)
        if self.nvml is not None:
            self.nvml.close()
        self.out.close()
