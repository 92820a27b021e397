"""cockpit/launch.py in this process: the run folder a new run gets, the engine started detached
with its pid recorded, and stopping — against real processes started here, each in a session
of its own with a proc.json written the way start_engine writes one.

What a user relies on: `cockpit kill` stops the run and everything it started (late workers,
orphans left in its process group, ranks recorded in workers.jsonl), gives the engine its grace
to finish the step, marks the run killed, and never signals a process that is not the run's own
(a reused pid, a forged or reused process group, this process or its parent). tests/test_kill.py
does the same end to end through `cockpit kill`; these tests are the ones the mutation
benchmark can see (benchmarks/mutation.py, module ``kill``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from cockpit import launch
from engine.torchfree import preset as presets
from engine.torchfree.runfolder import (
    RESERVE,
    RESERVE_BYTES,
    JsonlAppender,
    RunFolder,
    WorkspaceError,
    write_json_atomic,
)
from tests.conftest import ROOT, ZOO, wait_for

BLOBS = ZOO / "blobs.yaml"

# A stand-in engine: installs its SIGTERM behaviour, says it is ready, then idles.
ENGINE = r"""
import os, signal, subprocess, sys, time
mode, out = sys.argv[1], sys.argv[2]

def on_term(*_):
    if mode in ("finish-step", "slow-step"):  # the engine finishes its step, writes killed
        time.sleep(0.3 if mode == "finish-step" else 2.0)
        with open(out, "w") as f:
            f.write("finished")
        sys.exit(0)
    if mode == "late-worker":  # a worker started while stopping, outside the engine's tree
        w = subprocess.Popen(["sleep", "60"], start_new_session=True)
        with open(out, "w") as f:
            f.write(str(w.pid))
        time.sleep(0.5)
        sys.exit(0)
    if mode.startswith("wait-for:"):  # exits cleanly once another run got its SIGTERM too
        with open(out, "w") as f:
            f.write("termed")
        while not os.path.exists(mode.split(":", 1)[1]):
            time.sleep(0.02)
        with open(out, "w") as f:
            f.write("finished")
        sys.exit(0)

if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode in ("finish-step", "slow-step", "late-worker") or mode.startswith("wait-for:"):
    signal.signal(signal.SIGTERM, on_term)
if mode == "orphan":  # a process left in the engine's group whose parent is gone
    subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $! > " + out])
with open(out + ".ready", "w") as f:
    f.write("1")
while True:
    time.sleep(0.05)
"""


class Engine:
    """A stand-in engine for a run folder: its own session, proc.json as start_engine writes."""

    def __init__(self, folder: RunFolder, mode: str = "plain", *, record: bool = True):
        self.folder = folder
        self.out = folder.path / f"engine-{mode.split(':')[0]}.out"
        script = folder.path.parent / "fake_engine.py"
        if not script.exists():
            script.write_text(ENGINE)
        self.popen = subprocess.Popen(
            [sys.executable, str(script), mode, str(self.out)], start_new_session=True
        )
        self.proc = psutil.Process(self.popen.pid)
        wait_for(lambda: Path(str(self.out) + ".ready").exists(), timeout=30)
        if record:
            write_json_atomic(folder.file("proc.json"), self.record())

    def record(self, **changes) -> dict:
        rec = {
            "pid": self.popen.pid,
            "pgid": self.popen.pid,
            "create_time": self.proc.create_time(),
            "host": socket.gethostname(),
        }
        return {**rec, **changes}

    def written(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def running(self) -> bool:
        return launch._running(self.proc)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


@pytest.fixture
def engines():
    started: list[Engine] = []

    def start(folder: RunFolder, mode: str = "plain", **kw) -> Engine:
        e = Engine(folder, mode, **kw)
        started.append(e)
        return e

    yield start
    for e in started:
        e.close()


@pytest.fixture
def others():
    """Processes that are not a run's (cleaned up after the test)."""
    started: list[subprocess.Popen] = []

    def start(*argv: str, **kw) -> psutil.Process:
        p = subprocess.Popen(list(argv or ["sleep", "60"]), **kw)
        started.append(p)
        return psutil.Process(p.pid)

    yield start
    for p in started:
        if p.poll() is None:
            launch.kill_tree(launch.process_tree(psutil.Process(p.pid)))
        p.wait(timeout=10)


def a_run(workspace: Path, name: str = "run", status: str = "running", **summary) -> RunFolder:
    folder = RunFolder(workspace / name)
    folder.path.mkdir()
    folder.write_summary({"run_id": name, "status": status, **summary})
    return folder


def gone(p: psutil.Process) -> bool:
    return not launch._running(p)


def a_zombie(others) -> psutil.Process:
    z = others(sys.executable, "-c", "pass")
    wait_for(lambda: z.status() == psutil.STATUS_ZOMBIE, timeout=30)
    return z


# ---------------------------------------------------------------- create_run


def test_a_new_run_folder_holds_the_request_the_preset_and_a_queued_summary(workspace):
    preset = presets.load(BLOBS, {"train.steps": 5})
    before = time.time()
    folder = launch.create_run(
        workspace,
        preset,
        overrides={"train.steps": 5},
        stages=["init", "train"],
        parent="parent-run",
        fork_step=3,
        warm_from="parent-run/checkpoints/step_3.pt",
        group="sweep",
        extra={"launcher": "local", "group_parallel": 2},
    )
    assert folder.path.parent == workspace and folder.run_id.startswith(f"{preset.name}-")
    assert (folder.path.stat().st_mode & 0o7777) == 0o700  # private to its owner
    request = json.loads(folder.file("run.json").read_text())
    source = BLOBS.resolve()
    assert request == {
        "run_id": folder.run_id,
        "preset_path": str(source),
        "preset_dir": str(source.parent),
        "preset_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "overrides": {"train.steps": 5},
        "stages": ["init", "train"],
        "parent": "parent-run",
        "fork_step": 3,
        "warm_from": "parent-run/checkpoints/step_3.pt",
        "gpus": preset.get("gpus"),
        "group": "sweep",
        "created": request["created"],
        "cwd": os.getcwd(),
        "launcher": "local",
        "group_parallel": 2,
    }
    assert before <= request["created"] <= time.time()
    assert folder.file("preset.yaml").read_text() == preset.to_yaml()
    assert (folder.file("preset.yaml").stat().st_mode & 0o777) == 0o600
    assert folder.summary() == {
        "run_id": folder.run_id,
        "preset": preset.name,
        "status": "queued",
        "parent": "parent-run",
        "fork_step": 3,
        "overrides": {"train.steps": 5},
        "stages": [],
        "stage_names": ["init", "train"],
        "group": "sweep",
        "created": request["created"],
    }
    # room kept for the engine's last words on a full disk
    assert folder.file(RESERVE).stat().st_size == RESERVE_BYTES


def test_a_run_without_options_gets_the_presets_ladder_and_empty_overrides(workspace):
    preset = presets.load(BLOBS)
    folder = launch.create_run(workspace, preset)
    request, summary = folder.request(), folder.summary()
    assert request["overrides"] == {} and summary["overrides"] == {}
    assert request["stages"] is None  # the engine walks the preset's own ladder
    assert summary["stage_names"] == preset.stages() and summary["stages"] == []
    for key in ("parent", "fork_step", "warm_from", "group"):
        assert request[key] is None
    assert summary["parent"] is None and summary["group"] is None
    assert "launcher" not in request  # start_engine follows the workspace's cockpit.yaml


def test_a_shared_workspace_gives_its_group_read_access(workspace, monkeypatch):
    monkeypatch.setenv("COCKPIT_SHARE", "group")
    folder = launch.create_run(workspace, presets.load(BLOBS))
    assert (folder.path.stat().st_mode & 0o7777) == 0o2750


def test_a_taken_run_id_is_skipped_and_left_alone(workspace, monkeypatch):
    taken = workspace / "blobs-taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("someone's run")
    ids = iter(["blobs-taken", "blobs-free"])
    monkeypatch.setattr(launch, "new_run_id", lambda name: next(ids))
    folder = launch.create_run(workspace, presets.load(BLOBS))
    assert folder.run_id == "blobs-free" and folder.summary()["status"] == "queued"
    assert sorted(p.name for p in taken.iterdir()) == ["mine.txt"]


def test_a_full_disk_when_creating_the_folder_is_one_sentence(workspace, monkeypatch):
    real_mkdir = Path.mkdir

    def full(self, *a, **kw):
        if self.parent == workspace:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(WorkspaceError) as e:
        launch.create_run(workspace, presets.load(BLOBS))
    assert str(e.value).startswith("cannot create a run: no space left on device on ")
    assert str(workspace) in str(e.value) and str(e.value).endswith(".")
    assert e.value.code == 1  # a failed write, not a wrong --workspace (2)
    assert list(workspace.iterdir()) == []


def test_a_full_disk_while_writing_leaves_no_half_run_behind(workspace, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(launch, "write_bytes_private", full)
    with pytest.raises(WorkspaceError) as e:
        launch.create_run(workspace, presets.load(BLOBS))
    assert str(e.value).startswith("cannot create a run: no space left on device on ")
    assert RESERVE in str(e.value) and str(e.value).endswith(".") and e.value.code == 1
    assert [p.name for p in workspace.iterdir() if not p.name.startswith(".")] == []


def test_the_preset_hash_only_for_a_regular_file_of_preset_size(tmp_path):
    small = tmp_path / "p.yaml"
    small.write_bytes(b"x" * (1 << 20))  # the largest preset there is
    assert launch._sha256(small) == hashlib.sha256(small.read_bytes()).hexdigest()
    big = tmp_path / "big.yaml"
    big.write_bytes(b"x" * ((1 << 20) + 1))
    assert launch._sha256(big) is None
    assert launch._sha256(tmp_path) is None  # a folder
    assert launch._sha256(tmp_path / "gone.yaml") is None  # a fork's parent preset moved away
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert launch._sha256(fifo) is None  # reading it would block


def test_an_unreadable_preset_has_no_hash(tmp_path, monkeypatch):
    p = tmp_path / "p.yaml"
    p.write_text("name: x\n")

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert launch._sha256(p) is None


# ---------------------------------------------------------------- start_engine

FAKE_PYTHON = """#!/bin/sh
echo "argv: $*"
echo "PYTHONPATH=$PYTHONPATH"
echo "PYTHONUNBUFFERED=$PYTHONUNBUFFERED"
echo "to stderr" >&2
if [ -e "/proc/$$/fd/$OPEN_IN_THE_APP" ]; then echo "holds the app's file"; fi
if read line; then echo "stdin: $line"; else echo "stdin: closed"; fi
exec sleep 60
"""


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    """``sys.executable`` replaced by a script that logs how it was started, then sleeps."""
    exe = tmp_path / "python"
    exe.write_text(FAKE_PYTHON)
    exe.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(exe))
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@contextlib.contextmanager
def typed_stdin(text: str):
    """This process's stdin (fd 0) reads ``text``, as if typed into its terminal."""
    saved = os.dup(0)
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def _log(folder: RunFolder) -> str:
    return wait_for(
        lambda: "stdin:" in (text := folder.file("engine.log").read_text()) and text, timeout=30
    )


@pytest.mark.parametrize("pythonpath", [None, "/elsewhere/lib"])
def test_the_engine_starts_detached_logging_to_the_run_with_its_pid_recorded(
    workspace, fake_python, monkeypatch, pythonpath
):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # set by the engine's launcher only
    if pythonpath is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", pythonpath)
    folder = launch.create_run(workspace, presets.load(BLOBS))
    # a file the app holds open, inheritable (a C library's, say): the engine must not hold it
    held = os.open(folder.file("run.json"), os.O_RDONLY)
    os.set_inheritable(held, True)
    monkeypatch.setenv("OPEN_IN_THE_APP", str(held))
    earlier = "" if pythonpath is None else "an earlier line\n"  # a fork's, a restart's
    if earlier:
        folder.file("engine.log").write_text(earlier)
    try:
        with typed_stdin("a line typed into the terminal\n"):
            proc = launch.start_engine(folder)
    finally:
        os.close(held)
    fake_python.append(proc)
    log = _log(folder)
    assert log.startswith(earlier + "argv: ")  # appended to, never truncated
    assert f"argv: -m engine {folder.path.resolve()}\n" in log
    root = str(ROOT.resolve())
    want = root if pythonpath is None else root + os.pathsep + pythonpath
    assert f"PYTHONPATH={want}\n" in log  # the engine imports this cockpit's engine package
    assert "PYTHONUNBUFFERED=1\n" in log and "to stderr\n" in log  # both streams, unbuffered
    assert "stdin: closed\n" in log  # never reads the terminal
    assert "holds the app's file" not in log
    if not earlier:  # a new log is as private as its run
        assert (folder.file("engine.log").stat().st_mode & 0o777) == 0o600
    # a session of its own: it outlives the terminal and the app
    assert os.getsid(proc.pid) == proc.pid and os.getpgid(proc.pid) == proc.pid
    assert folder.proc() == {
        "pid": proc.pid,
        "pgid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "host": socket.gethostname(),
    }
    assert launch.engine_process(folder).pid == proc.pid
    # its place in the device queue is held while it boots
    queue = workspace / ".slots" / socket.gethostname() / "queue"
    assert any(folder.run_id in p.name for p in queue.iterdir())
    assert launch.stop(folder, grace=5) is True
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert folder.summary()["status"] == "killed"


def test_a_run_without_a_launcher_follows_the_workspaces_slurm_setting(workspace, monkeypatch):
    from cockpit.launchers import slurm

    (workspace / "cockpit.yaml").write_text("launcher: slurm\nslurm: {partition: gpu}\n")
    monkeypatch.setattr(slurm, "check_client", lambda: None)
    submitted = []
    monkeypatch.setattr(slurm, "submit", lambda f: submitted.append(f.request()) or "job")
    folder = launch.create_run(workspace, presets.load(BLOBS))
    assert launch.start_engine(folder) == "job"
    assert submitted[0]["launcher"] == "slurm" and submitted[0]["slurm"] == {"partition": "gpu"}
    assert folder.request()["launcher"] == "slurm"  # recorded: kill and ls know it is a job
    assert not folder.file("proc.json").exists()


def test_a_run_that_chose_its_launcher_keeps_it(workspace, monkeypatch, fake_python):
    from cockpit.launchers import slurm

    (workspace / "cockpit.yaml").write_text("launcher: slurm\n")
    monkeypatch.setattr(slurm, "check_client", lambda: None)
    submitted = []
    monkeypatch.setattr(slurm, "submit", lambda f: submitted.append(f) or "job")
    folder = launch.create_run(workspace, presets.load(BLOBS), extra={"launcher": "local"})
    proc = launch.start_engine(folder)
    fake_python.append(proc)
    assert submitted == [] and folder.proc()["pid"] == proc.pid
    assert folder.request()["launcher"] == "local"
    queued = launch.create_run(workspace, presets.load(BLOBS), extra={"launcher": "slurm"})
    assert launch.start_engine(queued) == "job" and submitted == [queued]


# ---------------------------------------------------------------- which process is the run's


def test_the_engine_is_the_recorded_pid_only_while_its_start_time_matches(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder)
    assert launch.engine_process(folder).pid == e.proc.pid
    created = e.proc.create_time()
    for shift, found in [(1.0, True), (-1.0, True), (1.5, False), (-1.5, False), (100, False)]:
        write_json_atomic(folder.file("proc.json"), e.record(create_time=created + shift))
        assert (launch.engine_process(folder) is not None) is found, shift
    # a record without a start time: its pid may be anyone's by now
    write_json_atomic(folder.file("proc.json"), {"pid": e.proc.pid, "pgid": e.proc.pid})
    assert launch.engine_process(folder) is None


def test_the_engine_is_found_from_a_record_without_a_host(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder)
    write_json_atomic(folder.file("proc.json"), e.record(host=None))
    assert launch.engine_process(folder).pid == e.proc.pid


def test_an_engine_on_another_host_is_not_looked_for_here(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder)
    write_json_atomic(folder.file("proc.json"), e.record(host="elsewhere"))
    assert launch.engine_process(folder) is None
    with pytest.raises(launch.RunElsewhere, match="run runs on elsewhere, not on this machine"):
        launch.stop(folder, grace=0.5)
    assert e.running()
    # not marked killed: the engine over there trains on and writes its own status
    assert folder.summary()["status"] == "running"
    [(why, seconds)] = launch.stop_many([folder], grace=0.5)
    assert isinstance(why, launch.RunElsewhere) and why.host == "elsewhere" and seconds == 0
    assert "ssh elsewhere cockpit kill run" in str(why)


def test_a_finished_run_from_another_host_is_simply_not_running(workspace, engines):
    folder = a_run(workspace, status="passed")
    e = engines(folder)
    write_json_atomic(folder.file("proc.json"), e.record(host="elsewhere"))
    assert launch.stop(folder, grace=0.5) is False
    assert folder.summary()["status"] == "passed"


def test_no_engine_without_a_usable_record(workspace, others):
    folder = a_run(workspace)
    assert launch.engine_process(folder) is None  # no proc.json
    write_json_atomic(folder.file("proc.json"), {"pid": "12", "create_time": 0})
    assert launch.engine_process(folder) is None
    z = a_zombie(others)  # exited, not yet reaped by its parent
    write_json_atomic(folder.file("proc.json"), {"pid": z.pid, "create_time": z.create_time()})
    assert launch.engine_process(folder) is None


def test_a_forged_record_never_names_init_this_process_or_its_parent(workspace, engines):
    folder = a_run(workspace)
    rank = engines(folder, record=False)
    for pid in (os.getpid(), os.getppid(), os.getpgrp(), 1):
        try:  # the shell that leads our process group may be gone
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = 0.0
        write_json_atomic(folder.file("proc.json"), {"pid": pid, "create_time": created})
        assert launch.engine_process(folder) is None, pid
        JsonlAppender(folder.file("workers.jsonl")).append({"pid": pid, "create_time": created})
    JsonlAppender(folder.file("workers.jsonl")).append(rank.record(role="rank 0"))
    assert [q.pid for q in launch.recorded_processes(folder)] == [rank.proc.pid]  # only it
    assert launch._may_signal(2)  # any other pid, once its start time matched
    assert not launch._may_signal(1) and not launch._may_signal(0)


def test_a_forged_record_naming_the_app_is_not_signalled(workspace, engines, monkeypatch):
    """The app (this process's parent, say) recorded as the engine, as a rank, in a tree."""
    folder = a_run(workspace)
    e = engines(folder)
    monkeypatch.setattr(os, "getppid", lambda: e.proc.pid)  # e plays the parent
    JsonlAppender(folder.file("workers.jsonl")).append(e.record(role="rank 0"))
    assert launch.engine_process(folder) is None and launch.recorded_processes(folder) == []
    assert launch.stop(folder, grace=0.5) is False
    launch.kill_tree([e.proc], pgid=e.proc.pid, leader_created=e.proc.create_time())
    assert e.running()
    assert folder.summary()["status"] == "killed"


def test_the_recorded_ranks_are_those_whose_start_time_still_matches(workspace, engines, others):
    folder = a_run(workspace)
    ranks = [engines(folder, "plain", record=False) for _ in range(3)]
    z = a_zombie(others)
    log = JsonlAppender(folder.file("workers.jsonl"))
    log.append({"pid": "not a pid", "role": "rank 9"})  # a bad row does not end the list
    dead = others(sys.executable, "-c", "pass")
    dead.wait(timeout=30)
    log.append({"pid": dead.pid, "create_time": 1.0, "role": "rank 8, exited"})  # nor a gone pid
    log.append(ranks[0].record(role="rank 0"))
    log.append(ranks[1].record(role="rank 1", create_time=ranks[1].proc.create_time() - 1.5))
    log.append(ranks[1].record(role="rank 1 again", host="elsewhere"))
    log.append({"pid": z.pid, "create_time": z.create_time(), "role": "exited"})
    log.append(
        ranks[2].record(role="rank 2", host=None, create_time=ranks[2].proc.create_time() + 1.0)
    )
    found = [q.pid for q in launch.recorded_processes(folder)]
    assert found == [ranks[0].proc.pid, ranks[2].proc.pid]


def test_a_rank_without_a_start_time_is_never_claimed(workspace, engines):
    folder = a_run(workspace)
    rank = engines(folder, record=False)
    JsonlAppender(folder.file("workers.jsonl")).append({"pid": rank.proc.pid, "role": "rank 0"})
    assert launch.recorded_processes(folder) == []


def test_the_process_tree_holds_children_and_grandchildren(others):
    top = others("sh", "-c", "sh -c 'sleep 60 & wait' & wait")
    tree = wait_for(lambda: len(t := launch.process_tree(top)) >= 3 and t, timeout=30)
    assert tree[0].pid == top.pid and len({q.pid for q in tree}) == 3
    assert any(q.name() == "sleep" for q in tree)


def test_the_process_tree_of_a_process_gone_is_itself(others):
    p = others(sys.executable, "-c", "pass")
    p.wait(timeout=30)
    assert [q.pid for q in launch.process_tree(p)] == [p.pid]


# ---------------------------------------------------------------- stop


def test_stop_gives_the_engine_its_grace_to_finish_the_step(workspace, engines):
    folder = a_run(workspace, current_stage="train")
    e = engines(folder, "finish-step")
    assert launch.stop(folder, grace=20) is True
    assert e.written() == "finished"  # SIGTERM, then it finished its step before the SIGKILL
    assert e.popen.wait(timeout=10) == 0 and gone(e.proc)
    s = folder.summary()
    assert s["status"] == "killed" and s["reason"] == "killed" and s["current_stage"] is None


def test_stop_waits_no_longer_than_the_engine_takes(workspace, engines):
    """An engine that exits at once on SIGTERM (a zombie of ours until reaped) ends the wait:
    a grace this long would make the test hang otherwise."""
    folder = a_run(workspace)
    e = engines(folder)
    done = threading.Event()
    threading.Thread(
        target=lambda: (launch.stop(folder, grace=600), done.set()), daemon=True
    ).start()
    assert done.wait(timeout=120)
    assert e.popen.wait(timeout=10) == -signal.SIGTERM


def test_force_kills_without_waiting_for_the_step(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder, "finish-step")
    assert launch.stop(folder, grace=20, force=True) is True
    assert e.popen.wait(timeout=10) == -signal.SIGKILL
    assert e.written() == ""
    assert folder.summary()["status"] == "killed"


def test_an_engine_ignoring_sigterm_is_killed_after_the_grace(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder, "ignore-term")
    assert launch.stop(folder, grace=0.5) is True
    assert e.popen.wait(timeout=10) == -signal.SIGKILL


def test_a_worker_started_while_stopping_is_killed_too(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder, "late-worker")
    assert launch.stop(folder, grace=20) is True
    worker = psutil.Process(int(e.written()))
    assert gone(worker)


def test_an_orphan_left_in_the_engines_group_is_killed(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder, "orphan")
    orphan = psutil.Process(int(wait_for(e.written, timeout=30)))
    assert orphan not in launch.process_tree(e.proc)  # its parent exited: only its group says
    assert launch.stop(folder, grace=20) is True
    wait_for(lambda: gone(orphan), timeout=10)


def test_a_forged_process_group_is_never_signalled(workspace, engines):
    """proc.json names the engine, but its pgid is another session's: that group is spared."""
    folder = a_run(workspace)
    e = engines(folder)
    bystander = engines(a_run(workspace, "other-run"), "orphan")
    orphan = psutil.Process(int(wait_for(bystander.written, timeout=30)))
    write_json_atomic(folder.file("proc.json"), e.record(pgid=bystander.proc.pid))
    assert launch.stop(folder, grace=20) is True
    assert gone(e.proc) and bystander.running() and launch._running(orphan)
    orphan.kill()


def test_the_engines_group_is_spared_when_its_id_went_to_a_new_group(workspace, engines):
    """The leader's start time recorded with the group says whether the group is still ours."""
    folder = a_run(workspace)
    e = engines(folder, "orphan")
    orphan = psutil.Process(int(wait_for(e.written, timeout=30)))
    assert launch.group_members(e.proc.pid, e.proc.create_time() + 1.0)  # within a second
    assert launch.group_members(e.proc.pid, e.proc.create_time() + 1.5) == []
    members = {q.pid for q in launch.group_members(e.proc.pid, None)}
    assert members == {e.proc.pid, orphan.pid}
    launch.kill_tree([e.proc], pgid=e.proc.pid, leader_created=e.proc.create_time() - 100)
    assert gone(e.proc) and launch._running(orphan)
    launch.kill_tree([], pgid=e.proc.pid, leader_created=None)  # the leader gone: members only
    wait_for(lambda: gone(orphan), timeout=10)


def test_a_process_that_exits_during_the_group_scan_does_not_end_it(
    workspace, engines, monkeypatch
):
    folder = a_run(workspace)
    e = engines(folder, "orphan")
    orphan = psutil.Process(int(wait_for(e.written, timeout=30)))
    real = os.getpgid

    def getpgid(pid):
        if pid == 1:  # the first process listed: gone by the time its group is asked
            raise ProcessLookupError(errno.ESRCH, "No such process")
        return real(pid)

    monkeypatch.setattr(os, "getpgid", getpgid)
    members = {q.pid for q in launch.group_members(e.proc.pid, e.proc.create_time())}
    assert members == {e.proc.pid, orphan.pid}


def test_kill_tree_without_a_group_kills_the_tree_only(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder, "orphan")
    orphan = psutil.Process(int(wait_for(e.written, timeout=30)))
    launch.kill_tree(launch.process_tree(e.proc))
    assert gone(e.proc) and launch._running(orphan)
    orphan.kill()


def test_the_ranks_of_a_dead_engine_are_stopped_through_their_records(workspace, engines, others):
    folder = a_run(workspace, reason="stopped during train")
    dead = others(sys.executable, "-c", "pass")
    dead.wait(timeout=30)
    write_json_atomic(folder.file("proc.json"), {"pid": dead.pid, "create_time": 1.0})
    ranks = [engines(folder, "orphan", record=False), engines(folder, record=False)]
    worker = psutil.Process(int(wait_for(ranks[0].written, timeout=30)))  # not in a rank's tree
    child = others("sleep", "60")  # a stranger: not recorded
    log = JsonlAppender(folder.file("workers.jsonl"))
    for i, r in enumerate(ranks):
        log.append(r.record(role=f"rank {i}"))
    (folder.path / ".summary.json.123.tmp").write_text("{")  # a dead writer's leftovers
    folder.file(RESERVE).write_bytes(b"\0")
    assert launch.stop(folder, grace=0.5) is True
    assert not any(r.running() for r in ranks)
    assert launch._running(worker) and launch._running(child)  # the group kill is the engine's
    worker.kill()
    s = folder.summary()
    assert s["status"] == "killed" and s["reason"] == "stopped during train"  # kept
    assert not folder.file(RESERVE).exists()
    assert not (folder.path / ".summary.json.123.tmp").exists()


def test_a_ranks_children_go_with_it(workspace, engines, others):
    folder = a_run(workspace)
    rank = others("sh", "-c", "sleep 60 & wait", start_new_session=True)
    worker = wait_for(rank.children, timeout=30)[0]
    JsonlAppender(folder.file("workers.jsonl")).append(
        {"pid": rank.pid, "create_time": rank.create_time(), "role": "rank 1"}
    )
    e = engines(folder)
    assert launch.stop(folder, grace=20) is True
    assert gone(rank) and gone(worker) and gone(e.proc)


def test_stopping_a_run_that_is_not_running(workspace):
    ended = a_run(workspace, "passed-run", status="passed", reason="all stages passed")
    ended.file(RESERVE).write_bytes(b"\0")
    assert launch.stop(ended, grace=0.5) is False
    assert ended.summary() == {
        "run_id": "passed-run",
        "status": "passed",
        "reason": "all stages passed",
    }  # an ended run keeps its verdict
    assert not ended.file(RESERVE).exists()
    queued = a_run(workspace, "queued-run", status="queued")
    before = time.time()
    assert launch.stop(queued, grace=0.5) is False
    s = queued.summary()
    assert s["status"] == "killed" and s["reason"] == "killed"
    assert before <= s["ended"] <= time.time() and s["current_stage"] is None


def test_the_disk_reserve_is_kept_while_the_engine_lives(workspace, engines, monkeypatch):
    folder = a_run(workspace)
    folder.file(RESERVE).write_bytes(b"\0")
    e = engines(folder, "ignore-term")
    monkeypatch.setattr(launch, "kill_tree", lambda *a, **k: None)  # a kill that failed
    launch.stop(folder, grace=0.2)
    assert e.running() and folder.file(RESERVE).exists()


def test_a_slurm_run_is_stopped_through_slurm(workspace, monkeypatch):
    from cockpit.launchers import slurm

    folder = a_run(workspace)
    write_json_atomic(folder.file("slurm.json"), {"job_id": "12"})
    asked = []
    monkeypatch.setattr(slurm, "stop", lambda f: asked.append(f.path) or True)
    assert launch.stop(folder) is True and asked == [folder.path]
    assert folder.summary()["status"] == "running"  # slurm's stop says when it ended


# ---------------------------------------------------------------- stop_many


def test_stop_many_stops_runs_side_by_side_and_says_which_ran(workspace, engines):
    """Each engine exits cleanly only once the other run got its SIGTERM too: stopping one run
    after the other would SIGKILL the first after its grace."""
    a, b = a_run(workspace, "a"), a_run(workspace, "b")
    ended = a_run(workspace, "c", status="passed")
    ea = engines(a, f"wait-for:{b.path / 'engine-wait-for.out'}")
    eb = engines(b, f"wait-for:{a.path / 'engine-wait-for.out'}")
    t0 = time.monotonic()
    out = launch.stop_many([a, ended, b], grace=20)
    took = time.monotonic() - t0
    assert [ran for ran, _ in out] == [True, False, True]
    assert ea.written() == "finished" and eb.written() == "finished"
    assert all(0 <= seconds <= took for _, seconds in out)
    assert a.summary()["status"] == b.summary()["status"] == "killed"
    assert ended.summary()["status"] == "passed"


def test_stop_many_gives_each_run_the_grace_asked_for(workspace, engines):
    folder = a_run(workspace)
    e = engines(folder, "slow-step")  # its step takes 2 s to finish
    [(ran, _)] = launch.stop_many([folder], grace=0.3)
    assert ran and e.popen.wait(timeout=10) == -signal.SIGKILL and e.written() == ""


def test_stop_many_of_nothing(workspace):
    assert launch.stop_many([]) == []


# ---------------------------------------------------------------- waiting


def test_wait_gone_counts_a_zombie_as_gone_and_gives_up_at_its_timeout(others):
    z = a_zombie(others)
    launch.wait_gone([z], timeout=600)  # would hang if a zombie counted as running
    alive = others("sleep", "60")
    launch.wait_gone([alive], timeout=0.3)  # returns, though it still runs
    assert launch._running(alive)


def test_a_killed_tree_is_gone_when_kill_tree_returns(others):
    procs = [others("sleep", "60") for _ in range(3)]
    launch.kill_tree(procs)
    assert [q.pid for q in procs if launch._running(q)] == []


def test_a_process_that_vanishes_while_asked_counts_as_gone(others, monkeypatch):
    p = others("sleep", "60")

    def vanished(self):
        raise psutil.NoSuchProcess(self.pid)

    monkeypatch.setattr(psutil.Process, "status", vanished)
    assert not launch._running(p)
    launch.wait_gone([p], timeout=600)  # returns at once: nothing left to wait for
