"""Creating runs, starting engine processes, and stopping them safely — torch-free.

An engine is started in a session of its own (``start_new_session``) with its output going
to the run's engine.log, so it outlives the terminal, the app and an SSH disconnect.
Stopping: SIGTERM to the engine (it stops at the next step boundary and records ``killed``),
then, after a grace period, SIGKILL to every process it started — found by walking the
process tree, because torchrun puts its workers in sessions of their own — and, should the
engine be gone already, through the pids the run recorded in workers.jsonl. A recorded pid is
only ever signalled after its start time matched, so a reused pid is never hit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from engine.torchfree import slots
from engine.torchfree.preset import Preset
from engine.torchfree.runfolder import (
    LIVE,
    RESERVE,
    RESERVE_BYTES,
    RUN_DIR_MODES,
    JsonlTail,
    RunFolder,
    WorkspaceError,
    check_proc,
    file_mode,
    new_run_id,
    prepare_workspace,
    release_reserve,
    remove_temp_files,
    sharing,
    write_bytes_private,
    write_error,
    write_json_atomic,
)

GRACE_S = 8.0  # SIGTERM, then SIGKILL: with the reaping after it, a kill stays under 10 s


class RunElsewhere(Exception):
    """The run's engine was started on another machine (a workspace on a shared file
    system): no process here is its, so only a cockpit on that machine can stop it."""

    def __init__(self, folder: RunFolder, host: str):
        self.run_id, self.host = folder.run_id, host
        super().__init__(
            f"{folder.run_id} runs on {host}, not on this machine ({socket.gethostname()}): "
            f"stop it there with `ssh {host} cockpit kill {folder.run_id}`"
        )


def elsewhere(folder: RunFolder) -> str | None:
    """The other machine a live run's engine was started on, or None (here, unrecorded, or
    the run is over)."""
    proc = check_proc(folder.proc())
    host = proc.get("host") if proc else None
    if not host or host == socket.gethostname():
        return None
    return host if folder.summary().get("status") in LIVE else None


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
    """Write a new run folder (run.json, preset.yaml, a 'queued' summary.json), private to
    its owner unless the workspace is shared (see runfolder.sharing). On a full disk or any
    other write error nothing is left behind and WorkspaceError says why in one sentence."""
    workspace = prepare_workspace(workspace)
    dir_mode = RUN_DIR_MODES[sharing(workspace)]
    for _ in range(20):
        run_id = new_run_id(preset.name)
        path = workspace / run_id
        try:
            path.mkdir(mode=0o700)
            os.chmod(path, dir_mode)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise WorkspaceError(f"cannot create a run: {write_error(e, path)}.", 1) from None
    else:  # pragma: no cover - 20 collisions of 16 random bits in one second
        raise RuntimeError("could not find a free run id")
    try:
        return _fill_run(
            RunFolder(path), preset, overrides, stages, parent, fork_step, warm_from, group, extra
        )
    except OSError as e:
        shutil.rmtree(path, ignore_errors=True)
        raise WorkspaceError(f"cannot create a run: {write_error(e)}.", 1) from None


def _fill_run(folder, preset, overrides, stages, parent, fork_step, warm_from, group, extra):
    run_id, path = folder.run_id, folder.path
    write_bytes_private(path / RESERVE, bytes(RESERVE_BYTES))  # first: a full disk fails here
    source = preset.path.resolve()
    sha = _sha256(source)
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
    write_bytes_private(folder.file("preset.yaml"), preset.to_yaml().encode())
    folder.write_summary(
        {
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
        }
    )
    return folder


def _sha256(path: Path) -> str | None:
    """The preset file's hash (regular files of preset size only: a fork's recorded path may
    point anywhere by now)."""
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def start_engine(folder: RunFolder) -> subprocess.Popen:
    """Start ``python -m engine RUN_DIR`` detached from this terminal; record its pid. A run
    whose run.json says ``launcher: slurm`` is submitted as a batch job instead (a JobHandle);
    one that says no launcher (the app's new-run dialog) follows the workspace's cockpit.yaml."""
    request = folder.request()
    if "launcher" not in request:
        from cockpit.launchers import choose

        chosen = choose(folder.path.parent)
        if chosen.get("launcher") == "slurm":
            request.update(chosen)
            write_json_atomic(folder.file("run.json"), request)
    if request.get("launcher") == "slurm":
        from cockpit.launchers.slurm import submit

        return submit(folder)  # type: ignore[return-value] - Popen's poll/wait/returncode
    env = os.environ.copy()
    env["PYTHONUNBUFFERED"] = "1"
    # the engine must import the same engine package as this cockpit, installed or not
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    slots.announce(folder)  # the run's place in the device queue, held while its engine boots
    log_fd = os.open(
        folder.file("engine.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, file_mode(folder.path)
    )
    with open(log_fd, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", str(folder.path.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = 0.0
    write_json_atomic(
        folder.file("proc.json"),
        {
            "pid": proc.pid,
            "pgid": proc.pid,
            "create_time": created,
            "host": socket.gethostname(),
        },
    )
    return proc


def engine_process(folder: RunFolder) -> psutil.Process | None:
    """The run's engine process, only if the recorded pid still is that process."""
    proc = folder.proc()
    if not proc or proc.get("host") not in (None, socket.gethostname()):
        return None
    if not _may_signal(proc["pid"]):
        return None
    try:
        p = psutil.Process(proc["pid"])
        if abs(p.create_time() - float(proc.get("create_time", 0))) > 1.0:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.Error, KeyError, ValueError):
        return None


def _may_signal(pid: int) -> bool:
    """Never init, this process, its parent (the shell or the app) or the leader of its own
    process group (the shell's job), whatever a (forged) record says."""
    return pid > 1 and pid not in (os.getpid(), os.getppid(), os.getpgrp())


def process_tree(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


def recorded_processes(folder: RunFolder) -> list[psutil.Process]:
    """The run's processes outside the engine's process group (torchrun and its ranks, from
    workers.jsonl), each only while its start time still matches the record."""
    out = []
    for row in JsonlTail(folder.file("workers.jsonl")).read_new():
        row = check_proc(row)
        if row is None or row.get("host") not in (None, socket.gethostname()):
            continue
        if not _may_signal(row["pid"]):
            continue
        try:
            q = psutil.Process(row["pid"])
            if (
                abs(q.create_time() - float(row.get("create_time", 0))) <= 1.0
                and q.status() != psutil.STATUS_ZOMBIE
            ):
                out.append(q)
        except (psutil.Error, KeyError, ValueError, TypeError):
            continue
    return out


def stop(folder: RunFolder, grace: float = GRACE_S, *, force: bool = False) -> bool:
    """Stop a run and everything it started. True when something was running.

    SIGTERM to the engine, wait up to ``grace`` seconds for it to finish its step and write
    ``killed``, then SIGKILL whatever of its tree is left (also its process group and the
    processes it recorded in workers.jsonl). A Slurm run is stopped with scancel, from any
    machine with Slurm's client tools (cockpit/launchers/slurm.py). A live run started on
    another machine raises RunElsewhere and is left as it is: marking it killed here would
    say it stopped while it trains on."""
    from cockpit.launchers import slurm as slurm_launcher

    if slurm_launcher.is_slurm_run(folder):
        return slurm_launcher.stop(folder)
    host = elsewhere(folder)
    if host:
        raise RunElsewhere(folder, host)
    p = engine_process(folder)
    if p is None:
        strays: list[psutil.Process] = []
        for q in recorded_processes(folder):  # the engine died first: its ranks may not have
            strays = _merge(strays, process_tree(q))
        if strays:
            kill_tree(strays)
        _tidy(folder)
        mark_killed_if_live(folder)
        return bool(strays)
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
    for q in recorded_processes(folder):
        tree = _merge(tree, process_tree(q))
    proc = folder.proc() or {}
    # the group only when it is the verified engine's own (started as a session leader): a
    # recorded pgid of any other group, leaderless or not, is never signalled
    pgid = proc.get("pgid") if proc.get("pgid") == p.pid else None
    kill_tree(tree, pgid=pgid, leader_created=proc.get("create_time"))
    _tidy(folder)
    mark_killed_if_live(folder)
    return True


def _tidy(folder: RunFolder) -> None:
    """Once the engine is gone: drop its half-written temp files and its disk reserve."""
    if engine_process(folder) is None:
        remove_temp_files(folder.path)
        release_reserve(folder.path)


def stop_many(
    folders: list[RunFolder], grace: float = GRACE_S
) -> list[tuple[bool | RunElsewhere, float]]:
    """Stop runs side by side, so N runs take as long as the slowest: (was running, seconds)
    each — or (RunElsewhere, 0) for a run another machine's cockpit must stop."""
    import threading

    out: list[tuple[bool | RunElsewhere, float]] = [(False, 0.0)] * len(folders)

    def one(i: int) -> None:
        t0 = time.monotonic()
        try:
            out[i] = (stop(folders[i], grace), time.monotonic() - t0)
        except RunElsewhere as e:
            out[i] = (e, 0.0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(folders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _merge(a: list[psutil.Process], b: list[psutil.Process]) -> list[psutil.Process]:
    seen = {x.pid for x in a}
    return a + [x for x in b if x.pid not in seen]


def kill_tree(
    tree: list[psutil.Process], pgid: int | None = None, leader_created: float | None = None
) -> None:
    """SIGKILL ``tree`` and whatever is left in the engine's process group, then reap."""
    if pgid:
        tree = _merge(tree, group_members(int(pgid), leader_created))
    tree = [q for q in tree if _may_signal(q.pid)]
    for q in tree:
        try:
            q.kill()  # psutil checks the start time first: a reused pid is left alone
        except psutil.Error:
            pass
    wait_gone(tree, timeout=5.0)


def wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Until each process has exited. A zombie counts as gone: its memory, GPU context and slot
    locks are already released, and reaping it is its parent's business (or init's)."""
    deadline = time.monotonic() + timeout
    while any(_running(q) for q in procs) and time.monotonic() < deadline:
        time.sleep(0.02)


def _running(q: psutil.Process) -> bool:
    try:
        return q.is_running() and q.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int, leader_created: float | None) -> list[psutil.Process]:
    """Processes in process group ``pgid`` — none when that id now belongs to a new group (its
    leader's start time differs from the engine's). While any process is still in our group,
    the kernel never hands its id to another process, so the members found are ours."""
    members = []
    for q in psutil.process_iter():
        try:
            if os.getpgid(q.pid) != pgid:
                continue
            if (
                q.pid == pgid
                and leader_created is not None
                and abs(q.create_time() - float(leader_created)) > 1.0
            ):
                return []
            members.append(q)
        except (psutil.Error, OSError):
            continue
    return members


def mark_killed_if_live(folder: RunFolder) -> None:
    s = folder.summary()
    if s.get("status") in LIVE:
        s["status"] = "killed"
        s["reason"] = s.get("reason") or "killed"
        s["ended"] = time.time()
        s["current_stage"] = None
        folder.write_summary(s)
