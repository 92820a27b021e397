"""Which devices this machine offers runs: GPUs (NVML, or ``$COCKPIT_FAKE_GPUS=N`` in tests,
narrowed to ``$CUDA_VISIBLE_DEVICES`` when that is a list of indices) and CPU slots
(``$COCKPIT_CPU_SLOTS``, else ``cpu_slots:`` in ``<workspace>/cockpit.yaml``, else half the
physical cores, at least 1); and which processes hold each GPU."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from engine.torchfree.nvml import Nvml

FAKE_GPUS_ENV = "COCKPIT_FAKE_GPUS"
CPU_SLOTS_ENV = "COCKPIT_CPU_SLOTS"
CONFIG_NAME = "cockpit.yaml"


class SlotError(Exception):
    """The run can never be placed here; the message says why and what to change."""


_nvml_count_cache: int | None = None


def _nvml_count() -> int:
    global _nvml_count_cache
    if _nvml_count_cache is None:
        with Nvml() as nvml:  # no library, no driver, no GPU: 0, a CPU machine
            _nvml_count_cache = nvml.count()
    return _nvml_count_cache


def gpu_indices(environ: dict | None = None) -> list[int]:
    """The GPUs runs may be placed on (NVML / PCI-bus order)."""
    env = os.environ if environ is None else environ
    fake = (env.get(FAKE_GPUS_ENV) or "").strip()
    if fake:
        try:
            indices = list(range(max(0, int(fake))))
        except ValueError:
            raise SlotError(
                f"{FAKE_GPUS_ENV}={fake}: expected a number of GPUs, e.g. {FAKE_GPUS_ENV}=4."
            ) from None
    else:
        indices = list(range(_nvml_count()))
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        items = [s.strip() for s in visible.split(",") if s.strip()]
        if all(s.isdigit() for s in items):  # UUIDs and MIG names are not mapped: all GPUs stay
            allowed = {int(s) for s in items}
            indices = [i for i in indices if i in allowed]
    return indices


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_slot_count(workspace: Path, environ: dict | None = None) -> int:
    """How many CPU runs may go at once: env var, else the workspace's cockpit.yaml, else cores/2."""
    env = os.environ if environ is None else environ
    raw = (env.get(CPU_SLOTS_ENV) or "").strip()
    where = f"${CPU_SLOTS_ENV}"
    if not raw:
        config = Path(workspace) / CONFIG_NAME
        try:
            data = yaml.safe_load(config.read_text())
        except FileNotFoundError:
            data = None
        except yaml.YAMLError as e:
            raise SlotError(
                f"{config}: not valid YAML ({e}); it holds e.g. cpu_slots: 2."
            ) from None
        if isinstance(data, dict) and data.get("cpu_slots") is not None:
            raw, where = str(data["cpu_slots"]), f"{config}: cpu_slots"
    if not raw:
        return max(1, physical_cores() // 2)
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise SlotError(f"{where} is {raw!r}: expected a whole number of runs ≥ 1, e.g. 2.")
    return n


def gpu_processes(indices: list[int]) -> dict[int, list[tuple[int, float | None]]]:
    """NVML: GPU index -> [(pid, used MB)] of every compute process on it; {} without NVML."""
    if not indices or (os.environ.get(FAKE_GPUS_ENV) or "").strip():
        return {}
    out: dict[int, list[tuple[int, float | None]]] = {}
    with Nvml() as nvml:
        if not nvml.ok:
            return {}
        for i in indices:
            try:
                procs = nvml.processes(nvml.handle(index=i))
            except Exception:
                continue
            if procs is not None:
                out[i] = procs
    return out
