"""The engine's side of a DDP stage: start torchrun, pass a stop on to the ranks, wait.

A run with ``gpus: N > 1`` keeps its one engine process (it holds the slots, answers signals,
writes summary.json and runs the single-process stages on the first of its GPUs). A stage that
runs under DDP (``Stage.distributed``) runs as

    torchrun --standalone --nnodes 1 --nproc-per-node N -m engine.distributed.rank RUN_DIR STAGE INDEX

one process per GPU; ``batch_size`` is per rank, so the global batch is N × batch_size.

Multi-node under Slurm (docs/slurm.md): in a job of K nodes (``gpus`` above one node's count,
cockpit/launchers/slurm.py), the engine runs on the first node and starts
``srun --nodes K --ntasks-per-node 1 ... torchrun --nnodes K --nproc-per-node N/K
--rdzv-backend c10d --rdzv-endpoint <this host>:<a free port>``: one torchrun per node, the
first node hosting the rendezvous; ``gpus`` is the total.

By hand: ``$COCKPIT_TORCHRUN_ARGS`` replaces ``--standalone --nnodes 1`` with torchrun's own
rendezvous options (e.g. ``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint host0:29400
--rdzv-id myrun``); ``gpus`` is then per node. Each other node runs the same torchrun command,
which the engine writes to engine.log, on a run folder that every node sees.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
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


def torchrun_command(
    folder: RunFolder, stage: str, index: int, nproc: int, environ: dict | None = None
) -> list[str]:
    """torchrun for ``nproc`` ranks in all: on this node, or — in a Slurm job of several
    nodes — ``srun`` starting one torchrun per node of the job (see ``slurm_nodes_command``)."""
    env = os.environ if environ is None else environ
    rendezvous = shlex.split(env.get(TORCHRUN_ARGS_ENV, ""))
    target = [
        "-m",
        "engine.distributed.rank",
        str(folder.path.resolve()),
        stage,
        str(index),
    ]
    nodes = slurm_nodes(folder, env)
    if not rendezvous and nodes > 1:
        return slurm_nodes_command(folder, stage, nodes, nproc, target, env)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *(rendezvous or ["--standalone", "--nnodes", "1"]),
        "--nproc-per-node",
        str(nproc),
        *target,
    ]


def slurm_nodes(folder: RunFolder, environ: dict) -> int:
    """Nodes of the Slurm job this engine runs in for its run (1 outside one)."""
    from engine.torchfree import slurm

    if not slurm.in_job(folder.request(), environ):
        return 1
    n = str(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1")
    return int(n) if n.isdigit() and int(n) > 0 else 1


# per node, inside srun: the first node hosts the rendezvous (the engine runs there: it is the
# batch host); the others drop the engine's pid, which their own hosts do not know
_PER_NODE = (
    'node="${SLURM_NODEID:-0}"; host=0; '
    'if [ "$node" = 0 ]; then host=1; else unset ' + ENGINE_ENV + "; fi; "
    'py="$1"; shift; exec "$py" -m torch.distributed.run --rdzv-conf "is_host=$host" "$@"'
)


def slurm_nodes_command(
    folder: RunFolder, stage: str, nodes: int, nproc: int, target: list[str], environ: dict
) -> list[str]:
    """Multi-node DDP in a Slurm job: ``srun`` runs one torchrun on each of the job's
    ``nodes`` nodes (``nproc // nodes`` ranks each), which meet in a c10d rendezvous on this
    engine's host — the job's first node — at a port free here, under an id of the job and
    stage. ``--kill-on-bad-exit``: a node whose torchrun fails ends the step on every node."""
    per_node = max(1, nproc // nodes)
    job = environ.get("SLURM_JOB_ID", "0")
    host = socket.gethostname()
    return [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "--overlap",  # beside the batch step, which holds the engine
        f"--job-name=cockpit-{stage}",
        "bash",
        "-c",
        _PER_NODE,
        "cockpit-ddp",
        sys.executable,
        "--nnodes",
        str(nodes),
        "--nproc-per-node",
        str(per_node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{host}:{_free_port()}",
        "--rdzv-id",
        f"slurm-{job}-{stage}",
        *target,
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


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
    checkpoint, and torchrun ends cleanly. Before the ranks exist, torchrun gets it. Ranks on
    several nodes (srun): srun gets it and forwards it to every node's torchrun."""
    if isinstance(proc.args, list) and proc.args and proc.args[0] == "srun":
        proc.send_signal(signal.SIGTERM)
        return
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
