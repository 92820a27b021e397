"""What the launcher and the ranks agree on: where results go, who is recorded, the settings."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil

from engine.torchfree.preset import Preset
from engine.torchfree.runfolder import JsonlAppender, RunFolder

TORCHRUN_ARGS_ENV = "COCKPIT_TORCHRUN_ARGS"
TIMEOUT_ENV = "COCKPIT_DDP_TIMEOUT_S"  # collectives' timeout: covers rank 0's checkpoint saves
ENGINE_ENV = "COCKPIT_ENGINE_PROC"  # "pid:create_time" of the engine, for the ranks' watchdog


def world_size(preset: Preset) -> int:
    """Processes per node: the preset's ``gpus`` when above 1, else 1 (no DDP)."""
    gpus = preset.get("gpus")
    return gpus if isinstance(gpus, int) and gpus > 1 else 1


def result_path(folder: RunFolder, stage: str) -> Path:
    return folder.file("ddp") / f"{stage}.json"


def record_process(folder: RunFolder, pid: int, role: str) -> None:
    """One line in workers.jsonl: a process of this run outside the engine's process group."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return
    out = JsonlAppender(folder.file("workers.jsonl"))
    try:
        out.append({"pid": pid, "create_time": created, "host": socket.gethostname(), "role": role})
    finally:
        out.close()
