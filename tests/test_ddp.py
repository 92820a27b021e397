"""Multi-GPU through torchrun, on CPU with gloo and 2 processes: the train stage under DDP with
rank-0-only logging, the multi_gpu check (and a planted DDP bug it must catch), kill with no
rank left behind, and ranks that exit by themselves when their engine dies."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from cockpit import launch
from engine import checkpoint
from engine.torchfree.runfolder import JsonlTail, RunFolder, iter_runs
from tests.conftest import ZOO, cockpit, wait_for

BLOBS = ZOO / "blobs.yaml"
CPU = {"COCKPIT_FAKE_GPUS": "0", "COCKPIT_DDP_TIMEOUT_S": "60"}
LONG = [
    "--set",
    "gpus=2",
    "--stages",
    "train",
    "--set",
    "num_workers=1",
    "--set",
    "train={steps: 100000, eval_every: 100, checkpoint_every: 100}",
    "--set",
    "data._target_=zoo.blobs_slow",
    "--set",
    "data.delay=0.0005",
]

pytestmark = pytest.mark.slow


def only_run(ws) -> RunFolder:
    (folder,) = iter_runs(ws)
    return folder


def stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


def test_gpus_2_trains_under_ddp_and_passes_multi_gpu(workspace):
    r = cockpit(
        "run",
        str(BLOBS),
        "--set",
        "gpus=2",
        "--set",
        "stages=[train]",
        "--set",
        "train={steps: 60, eval_every: 20, checkpoint_every: 30}",
        workspace=workspace,
        env=CPU,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    folder = only_run(workspace)
    s = folder.summary()
    assert s["stage_names"] == ["train", "multi_gpu"]  # gpus > 1 ends the ladder with the DDP check
    assert s["world_size"] == 2
    train = stage(s, "train")
    assert (
        train["reason"].endswith("(DDP: 2 processes, gloo)") and train["metrics"]["world_size"] == 2
    )
    steps = folder.steps()
    assert list(steps["step"]) == list(range(1, 61))  # every step once: rank 0 alone logs
    assert sum(1 for v in steps["val_loss"] if v == v) == 60  # a random val batch each step
    assert [e["step"] for e in folder.evals()] == [20, 40, 60]  # the last step evaluated once
    state = checkpoint.load(folder.latest_checkpoint()["path"], torch.device("cpu"))
    assert state["step"] == 60 and not any(k.startswith("module.") for k in state["model"])
    check = stage(s, "multi_gpu")
    m = check["metrics"]
    assert check["status"] == "pass", check["reason"]
    assert m["world_size"] == 2 and m["global_batch"] == 64 and m["param_max_diff"] <= 1e-6
    assert (
        m["max_loss_gap"] <= 1e-3
        and m["scaling"] > 0
        and m["efficiency"] == pytest.approx(m["scaling"] / 2)
    )
    assert {c["name"]: c["status"] for c in check["checks"]} == {
        "ranks_identical": "pass",
        "matches_single_process": "pass",
    }
    roles = [row["role"] for row in JsonlTail(folder.file("workers.jsonl")).read_new()]
    assert sorted(roles) == sorted(["torchrun", "rank 0", "rank 1"] * 2)


def test_multi_gpu_catches_a_summed_loss(workspace):
    r = cockpit(
        "run",
        str(BLOBS),
        "--set",
        "gpus=2",
        "--stages",
        "multi_gpu",
        "--set",
        "loss={_target_: torch.nn.CrossEntropyLoss, reduction: sum}",
        workspace=workspace,
        env=CPU,
    )
    assert r.returncode == 1
    check = stage(only_run(workspace).summary(), "multi_gpu")
    assert check["status"] == "fail" and check["reason"].startswith(
        "DDP's loss drifts from one process"
    )
    assert "reduction='sum'" in check["reason"]


def test_kill_stops_every_rank_through_torchruns_own_rendezvous(workspace):
    env = {
        **CPU,
        "COCKPIT_TORCHRUN_ARGS": "--nnodes 1 --rdzv-backend c10d --rdzv-endpoint localhost:0",
    }
    assert (
        cockpit("run", str(BLOBS), *LONG, "--detach", workspace=workspace, env=env).returncode == 0
    )
    folder = only_run(workspace)
    wait_for(lambda: len(folder.steps()) > 30)
    assert "--rdzv-backend c10d" in folder.log_tail()
    tree = launch.process_tree(launch.engine_process(folder))
    ranks = launch.recorded_processes(folder)
    assert len(ranks) == 3 and all(p in tree for p in ranks)  # torchrun and the two ranks
    assert all(os.getsid(p.pid) == p.pid for p in ranks if p.name() != "pt_elastic")  # own sessions
    r = cockpit("kill", folder.run_id, workspace=workspace)
    assert r.returncode == 0 and "killed in" in r.stdout
    assert [p.pid for p in tree if launch._running(p)] == []
    s = folder.summary()
    assert s["status"] == "killed"
    steps = list(folder.steps()["step"])
    assert steps == list(range(1, len(steps) + 1))
    assert folder.latest_checkpoint()["step"] == steps[-1]  # rank 0 saved where the ranks stopped


def test_ranks_exit_by_themselves_when_the_engine_dies(workspace):
    assert (
        cockpit("run", str(BLOBS), *LONG, "--detach", workspace=workspace, env=CPU).returncode == 0
    )
    folder = only_run(workspace)
    wait_for(lambda: len(folder.steps()) > 30)
    engine = launch.engine_process(folder)
    tree = launch.process_tree(engine)
    os.kill(engine.pid, signal.SIGKILL)  # no SIGTERM, no cleanup: only the ranks' watchdog is left
    wait_for(lambda: not any(launch._running(p) for p in tree), timeout=15)
    assert folder.state()["status"] == "error"
