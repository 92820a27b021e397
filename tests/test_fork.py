"""`cockpit fork`: a warm child continues its parent's curve and step count with the optimizer
state restored; a cold child starts over; mistakes exit 2 with one sentence."""

from __future__ import annotations

import statistics

import pytest

from engine.torchfree.runfolder import iter_runs
from tests.conftest import ZOO, cockpit

BLOBS = ZOO / "blobs.yaml"
PARENT = ["--stages", "train", "--set", "train={steps: 150, eval_every: 50, checkpoint_every: 50}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = tmp_path_factory.mktemp("fork") / "runs"
    r = cockpit("run", str(BLOBS), *PARENT, workspace=ws)
    assert r.returncode == 0, r.stdout + r.stderr
    return ws, next(iter_runs(ws))


@pytest.mark.slow
def test_a_warm_fork_continues_the_parents_loss_and_steps(trained):
    ws, parent = trained
    warm = cockpit(
        "fork",
        parent.run_id,
        "--warm",
        "--set",
        "optimizer.lr=3e-3",
        "--set",
        "train.steps=30",
        workspace=ws,
    )
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert f"forked from {parent.run_id}, warm from its step 150" in warm.stdout
    cold = cockpit(
        "fork", parent.run_id, "--set", "train.steps=30", "--stages", "train", workspace=ws
    )
    assert cold.returncode == 0, cold.stdout + cold.stderr
    _, warm_run, cold_run = list(iter_runs(ws))
    s = warm_run.summary()
    assert (s["parent"], s["fork_step"]) == (parent.run_id, 150)
    # the parent's own overrides carry over, then the fork's
    assert s["overrides"] == {
        **parent.summary()["overrides"],
        "optimizer.lr": 3e-3,
        "train.steps": 30,
    }
    assert (
        s["stages"][0]["checks"][0]["detail"]
        == "restored model weights and optimizer state from step 150"
    )
    assert list(warm_run.steps()["step"]) == list(range(151, 181))  # the curve goes on where it was
    assert cold_run.summary()["fork_step"] == 0 and cold_run.steps()["step"][0] == 1
    parent_last = statistics.mean(list(parent.steps()["train_loss"])[-10:])
    warm_first = statistics.mean(list(warm_run.steps()["train_loss"])[:5])
    cold_first = statistics.mean(list(cold_run.steps()["train_loss"])[:5])
    assert warm_first < 3 * parent_last + 0.05  # about where the parent left off ...
    assert warm_first < cold_first / 5  # ... far below a fresh start


def test_fork_mistakes_exit_2(trained, workspace):
    ws, parent = trained
    unknown = cockpit("fork", "no-such-run", workspace=ws)
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr
    bad_key = cockpit("fork", parent.run_id, "--set", "optimzer.lr=1", workspace=ws)
    assert bad_key.returncode == 2 and "did you mean 'optimizer'?" in bad_key.stderr
    for r in (unknown, bad_key):
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_run_recorded_by_a_script_cannot_be_forked_and_says_why(workspace):
    import cockpit.track as track

    with track.start(name="my-script", config={"lr": 0.1}, workspace=workspace) as run:
        run.log(1, train_loss=1.0)
    r = cockpit("fork", run.folder.run_id, "--set", "optimizer.lr=0.01", workspace=workspace)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "recorded by your own script (cockpit.track)" in r.stderr
    assert "Traceback" not in r.stderr
