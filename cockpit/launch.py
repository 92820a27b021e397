"""Creating runs, starting engine processes, and stopping them safely — torch-free.

An engine is started in a session of its own (``start_new_session``) with its output going
to the run's engine.log, so it outlives the terminal, the app and an SSH disconnect.
Stopping: SIGTERM to the engine (it stops at the next step boundary and records ``killed``),
then, after a grace period, SIGKILL to every process it started — found by walking the
process tree, because torchrun puts its workers in sessions of their own. A recorded pid is
only ever signalled after its start time matched, so a reused pid is never hit.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from engine.preset import Preset
from engine.runfolder import LIVE, RunFolder, new_run_id, write_json_atomic

GRACE_S = 10.0


def create_run(
    workspace: Path,
    preset: Preset,
    *,
    overrides: dict[str, Any] | None = None,
    stages: list[str] | None = None,
    parent: str | None = None,
    fork_step: int | None = None,
    warm_from: str | None = None,
    group: str | None = None,
    extra: dict[str, Any] | None = None,
) -> RunFolder:
    """Write a new run folder (run.json, preset.yaml, a 'queued' summary.json)."""
    workspace.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        run_id = new_run_id(preset.name)
        path = workspace / run_id
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 20 collisions of 16 random bits in one second
        raise RuntimeError("could not find a free run id")
    folder = RunFolder(path)
    source = preset.path.resolve()
    sha = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else None
    now = time.time()
    request = {
        "run_id": run_id,
        "preset_path": str(source),
        "preset_dir": str(source.parent),
        "preset_sha256": sha,
        "overrides": overrides or {},
        "stages": stages,
        "parent": parent,
        "fork_step": fork_step,
        "warm_from": warm_from,
        "gpus": preset.get("gpus"),
        "group": group,
        "created": now,
        "cwd": os.getcwd(),
        **(extra or {}),
    }
    write_json_atomic(folder.file("run.json"), request)
    folder.file("preset.yaml").write_text(preset.to_yaml())
    folder.write_summary({
        "run_id": run_id,
        "preset": preset.name,
        "status": "queued",
        "parent": parent,
        "fork_step": fork_step,
        "overrides": overrides or {},
        "stages": [],
        "stage_names": stages or preset.stages(),
        "group": group,
        "created": now,
    })
    return folder


def start_engine(folder: RunFolder) -> subprocess.Popen:
    """Start ``python -m engine RUN_DIR`` detached from this terminal; record its pid."""
    env = os.environ.copy()
    env["PYTHONUNBUFFERED"] = "1"
    # the engine must import the same engine package as this cockpit, installed or not
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(folder.file("engine.log"), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", str(folder.path.resolve())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
        )
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = 0.0
    write_json_atomic(folder.file("proc.json"), {
        "pid": proc.pid, "pgid": proc.pid, "create_time": created, "host": socket.gethostname(),
    })
    return proc


def engine_process(folder: RunFolder) -> psutil.Process | None:
    """The run's engine process, only if the recorded pid still is that process."""
    proc = folder.proc()
    if not proc or proc.get("host") not in (None, socket.gethostname()):
        return None
    try:
        p = psutil.Process(int(proc["pid"]))
        if abs(p.create_time() - float(proc.get("create_time", 0))) > 1.0:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.Error, KeyError, ValueError):
        return None


def process_tree(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


def stop(folder: RunFolder, grace: float = GRACE_S, *, force: bool = False) -> bool:
    """Stop a run and everything it started. True when something was running.

    SIGTERM to the engine, wait up to ``grace`` seconds for it to finish its step and write
    ``killed``, then SIGKILL whatever of its tree is left (also its process group)."""
    p = engine_process(folder)
    if p is None:
        mark_killed_if_live(folder)
        return False
    tree = process_tree(p)
    if not force:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
            tree = _merge(tree, process_tree(p))
            time.sleep(0.05)
    kill_tree(tree, pgid=(folder.proc() or {}).get("pgid"))
    mark_killed_if_live(folder)
    return True


def _merge(a: list[psutil.Process], b: list[psutil.Process]) -> list[psutil.Process]:
    seen = {x.pid for x in a}
    return a + [x for x in b if x.pid not in seen]


def kill_tree(tree: list[psutil.Process], pgid: int | None = None) -> None:
    for q in tree:
        try:
            q.kill()
        except psutil.Error:
            pass
    if pgid:
        try:
            os.killpg(int(pgid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
    psutil.wait_procs(tree, timeout=5)


def mark_killed_if_live(folder: RunFolder) -> None:
    s = folder.summary()
    if s.get("status") in LIVE:
        s["status"] = "killed"
        s["reason"] = s.get("reason") or "killed"
        s["ended"] = time.time()
        s["current_stage"] = None
        folder.write_summary(s)
