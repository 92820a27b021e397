"""The engine's side of a DDP stage: start torchrun, pass a stop on to the ranks, wait.

A run with ``gpus: N > 1`` keeps its one engine process (it holds the slots, answers signals,
writes summary.json and runs the single-process stages on the first of its GPUs). A stage that
runs under DDP (``Stage.distributed``) runs as

    torchrun --standalone --nnodes 1 --nproc-per-node N -m engine.distributed.rank RUN_DIR STAGE INDEX

one process per GPU; ``batch_size`` is per rank, so the global batch is N × batch_size.

Multi-node: ``$COCKPIT_TORCHRUN_ARGS`` replaces ``--standalone --nnodes 1`` with torchrun's own
rendezvous options (e.g. ``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint host0:29400
--rdzv-id myrun``); ``gpus`` is then per node. Each other node runs the same torchrun command,
which the engine writes to engine.log, on a run folder that every node sees.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from engine.control import Stopped
from engine.distributed.common import (
    ENGINE_ENV,
    TORCHRUN_ARGS_ENV,
    record_process,
    result_path,
    world_size,
)
from engine.torchfree.runfolder import RunFolder, StepsTail, read_json

if TYPE_CHECKING:
    from engine.context import RunContext


def torchrun_command(folder: RunFolder, stage: str, index: int, nproc: int) -> list[str]:
    rendezvous = shlex.split(os.environ.get(TORCHRUN_ARGS_ENV, "")) or [
        "--standalone",
        "--nnodes",
        "1",
    ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        "--nproc-per-node",
        str(nproc),
        "-m",
        "engine.distributed.rank",
        str(folder.path.resolve()),
        stage,
        str(index),
    ]


def run_on_ranks(ctx: RunContext, stage: str) -> dict:
    """Run ``stage`` on every rank and wait; rank 0's result, or ``{"status": "crashed", ...}``.

    A stop request (signal or pruner) is passed on to the ranks; they stop together and this
    raises Stopped. While the ranks train, rank 0's step rows feed this process's wait meter,
    so telemetry keeps its data-wait share."""
    import torch

    from engine.torchfree import slots

    folder = ctx.folder
    out = result_path(folder, stage)
    out.parent.mkdir(exist_ok=True)
    for old in out.parent.glob(f"{stage}.*"):
        old.unlink()
    nproc = world_size(ctx.preset)
    env = os.environ.copy()
    env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // nproc))  # they share our cores
    me = psutil.Process()
    env[ENGINE_ENV] = f"{me.pid}:{me.create_time()}"
    cmd = torchrun_command(folder, stage, ctx.stage_index, nproc)
    print(f"[ddp] {shlex.join(cmd)}", flush=True)
    # torchrun inherits the slot locks: if this engine dies, the GPUs stay busy until it is gone
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, pass_fds=slots.held_fds())
    record_process(folder, proc.pid, "torchrun")
    steps = StepsTail(folder.file("steps.bin"))
    steps.offset = _whole_records(folder.file("steps.bin"), steps.record)
    signalled = False
    while True:
        try:
            code = proc.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        if ctx.stop.requested and not signalled:
            _stop_ranks(proc)
            signalled = True
        _feed_meter(ctx, steps)
    _feed_meter(ctx, steps)
    result = read_json(out)
    if (result or {}).get("status") == "stopped" or (result is None and ctx.stop.requested):
        if result and result.get("pruned"):
            ctx.stop.request(pruned=result["pruned"])
        raise Stopped()
    if result is None:
        errors = sorted(out.parent.glob(f"{stage}.rank*.error"))
        detail = errors[0].read_text().strip() if errors else f"torchrun exited with code {code}"
        return {"status": "crashed", "error": detail, "world": nproc}
    return result


def _stop_ranks(proc: subprocess.Popen) -> None:
    """SIGTERM to the ranks themselves: they stop together at their next step, rank 0 saves a
    checkpoint, and torchrun ends cleanly. Before the ranks exist, torchrun gets it."""
    try:
        ranks = psutil.Process(proc.pid).children()
    except psutil.Error:
        ranks = []
    for rank in ranks:
        try:
            rank.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    if not ranks:
        proc.send_signal(signal.SIGTERM)


def _whole_records(path: Path, record: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    return size - size % record


def _feed_meter(ctx: RunContext, steps: StepsTail) -> None:
    cols = steps.read_new()
    for data_s, step_s in zip(cols["data_s"], cols["step_s"]):
        ctx.meter.add(data_s, step_s)
