"""`cockpit kill`: mid-step, with DataLoader workers, leaves no process behind, keeps the data,
marks the run killed and frees its slot at once; and it never signals a process that is not
the run's own (reused pids, reused process groups), even when the engine died first."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from cockpit import launch
from engine.torchfree.runfolder import JsonlAppender, RunFolder, iter_runs, write_json_atomic
from tests.conftest import ZOO, cockpit, wait_for

BLOBS = ZOO / "blobs.yaml"
SLOW_WITH_WORKERS = [
    "--stages",
    "train",
    "--set",
    "train={steps: 100000, eval_every: 50, checkpoint_every: 50}",
    "--set",
    "data._target_=zoo.blobs_slow",
    "--set",
    "data.delay=0.0005",
    "--set",
    "num_workers=2",
]


def alive(procs: list[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if launch._running(p)]


@pytest.mark.slow
def test_kill_mid_step_leaves_nothing_keeps_the_data_and_frees_the_slot(workspace):
    env = {"COCKPIT_CPU_SLOTS": "1", "COCKPIT_FAKE_GPUS": "0"}
    assert (
        cockpit(
            "run", str(BLOBS), *SLOW_WITH_WORKERS, "--detach", workspace=workspace, env=env
        ).returncode
        == 0
    )
    assert (
        cockpit(
            "run",
            str(BLOBS),
            "--stages",
            "train",
            "--set",
            "train.steps=20",
            "--detach",
            workspace=workspace,
            env=env,
        ).returncode
        == 0
    )
    victim, next_in_line = list(iter_runs(workspace))
    wait_for(lambda: len(victim.steps()) > 60)
    engine = launch.engine_process(victim)
    tree = launch.process_tree(engine)
    assert sum(p.name() == "pt_data_worker" for p in tree) >= 2  # the DataLoader workers
    assert next_in_line.summary()["status"] == "queued"
    logged = len(victim.steps())
    r = cockpit("kill", victim.run_id, workspace=workspace)
    assert r.returncode == 0 and "killed in" in r.stdout and "its slot free" in r.stdout
    assert alive(tree) == []
    s = victim.summary()
    assert s["status"] == "killed" and s["reason"] == "stopped during train"
    steps = victim.steps()
    assert len(steps) >= logged and list(steps["step"]) == list(range(1, len(steps) + 1))
    assert victim.latest_checkpoint()["step"] == len(steps)  # saved at the step it stopped on
    wait_for(lambda: next_in_line.summary().get("status") in ("running", "passed"), timeout=10)
    again = cockpit("kill", victim.run_id, workspace=workspace)
    assert "not running (killed)" in again.stdout


def stranger() -> psutil.Process:
    """A process that is not ours: started in the background by a shell that exits at once."""
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
    )
    return psutil.Process(int(out.stdout))


def test_kill_never_signals_a_reused_pid(workspace):
    folder = RunFolder(workspace / "old-run")
    folder.path.mkdir()
    write_json_atomic(folder.file("summary.json"), {"status": "running"})
    other = stranger()
    try:
        # the run's recorded pids now belong to someone else (other start time)
        write_json_atomic(
            folder.file("proc.json"),
            {"pid": other.pid, "pgid": other.pid, "create_time": other.create_time() - 100},
        )
        JsonlAppender(folder.file("workers.jsonl")).append(
            {"pid": other.pid, "create_time": other.create_time() - 100, "role": "rank 0"}
        )
        assert launch.stop(folder, grace=0.5) is False
        assert launch._running(other)
        assert folder.summary()["status"] == "killed"
    finally:
        other.kill()


def test_kill_finds_the_ranks_when_the_engine_died_first(workspace):
    folder = RunFolder(workspace / "ddp-run")
    folder.path.mkdir()
    write_json_atomic(folder.file("summary.json"), {"status": "running"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_json_atomic(
        folder.file("proc.json"), {"pid": dead.pid, "pgid": dead.pid, "create_time": 1.0}
    )
    # a "rank" in a session of its own, with a child of its own (a DataLoader worker)
    rank = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    rank_proc = psutil.Process(rank.pid)
    worker = wait_for(lambda: rank_proc.children())[0]
    JsonlAppender(folder.file("workers.jsonl")).append(
        {
            "pid": rank.pid,
            "create_time": rank_proc.create_time(),
            "host": os.uname().nodename,
            "role": "rank 1",
        }
    )
    assert launch.stop(folder, grace=0.5) is True
    rank.wait(timeout=10)
    assert alive([worker]) == []


def test_a_reused_process_group_id_is_left_alone():
    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        created = psutil.Process(leader.pid).create_time()
        assert [p.pid for p in launch.group_members(leader.pid, created)] == [leader.pid]
        assert launch.group_members(leader.pid, created - 100) == []
    finally:
        leader.kill()
        leader.wait()
