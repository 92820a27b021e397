"""Seams held end to end: what a real engine run writes, read back by the real readers.

The app's tests build their own fixture files, and the engine's tests check its rows with
``>= 0``; neither would notice the writer and the readers disagreeing about a column (say
``data_s`` and ``step_s`` swapped in steps.bin). Here one real run — started by the CLI, with
a data loader that sleeps per sample so that the data wait is known from below — is read by
every reader a user relies on: ``RunFolder`` / ``StepsTail`` (scripts, ``cockpit ls``), the
app's vectorised ``StepsReader`` and ``RunHistory``, ``cockpit ls --json``, and the pruning
rule's ``GroupPeers`` (which reads the group's evals.jsonl).
"""

from __future__ import annotations

import json
import math

import pytest

from cockpit.app.history import RunHistory, StepsReader
from engine.torchfree.pruning import GroupPeers
from engine.torchfree.runfolder import STEP_COLUMNS, RunFolder, StepsTail, iter_runs
from tests.conftest import ZOO, cockpit

DELAY = 0.01  # seconds zoo.SlowDataset sleeps in each __getitem__
BATCH = 4  # samples per step, read one by one in the training process (num_workers: 0)
STEPS = 24
EVAL_EVERY = 8


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    """One real ablation run (an ablation, so that it has a group for the pruning reader)."""
    ws = tmp_path_factory.mktemp("seams") / "runs"
    proc = cockpit(
        "ablate",
        str(ZOO / "blobs.yaml"),
        "--grid",
        f"data.delay={DELAY}",
        "--set",
        "data._target_=zoo.blobs_slow",
        "--set",
        f"batch_size={BATCH}",
        "--set",
        f"train.steps={STEPS}",
        "--set",
        f"train.eval_every={EVAL_EVERY}",
        "--set",
        "train.checkpoint_every=0",
        workspace=ws,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (folder,) = list(iter_runs(ws))
    return ws, folder


pytestmark = pytest.mark.slow


def _check_times(data_s, step_s):
    """The loader sleeps DELAY per sample: each step waited at least BATCH * DELAY on data
    (``time.sleep`` never returns early), and the step's own time contains its data wait."""
    assert len(data_s) == len(step_s) == STEPS
    for d, s in zip(data_s, step_s):
        assert d >= 0.9 * BATCH * DELAY, (d, s)  # 0.9: perf_counter vs sleep's own clock
        assert d < s, (d, s)  # step_s is the whole step, data wait included


def test_runfolder_and_steps_tail_read_what_the_engine_wrote(slow_run):
    _ws, folder = slow_run
    header = json.loads(folder.file("steps.json").read_text())
    assert tuple(header["columns"]) == STEP_COLUMNS
    cols = folder.steps()
    assert list(cols["step"]) == [float(i) for i in range(1, STEPS + 1)]
    _check_times(cols["data_s"], cols["step_s"])
    assert all(math.isfinite(x) and x > 0 for x in cols["train_loss"])
    assert all(math.isnan(g) for g in cols["gpu_s"])  # CPU: no device time
    assert set(cols["lr"]) == {1e-2}  # the preset's Adam lr, no scheduler
    tail = StepsTail(folder.file("steps.bin")).read_new()
    assert list(tail["data_s"]) == list(cols["data_s"])
    assert list(tail["step_s"]) == list(cols["step_s"])
    last = folder.last_steps(5)
    assert list(last["step"]) == [float(i) for i in range(STEPS - 4, STEPS + 1)]


def test_the_apps_readers_agree_with_the_run_folder(slow_run):
    _ws, folder = slow_run
    cols = folder.steps()
    (chunk,) = list(StepsReader(folder.file("steps.bin"), ("step", "data_s", "step_s")).read_new())
    assert list(chunk["step"]) == list(cols["step"])
    _check_times(list(chunk["data_s"]), list(chunk["step_s"]))
    history = RunHistory(folder)
    assert history.poll()
    assert history.stages_with_data() == ["train"]
    train = history.stages["train"]
    assert train.steps == STEPS
    assert train.train.last() == cols["train_loss"][-1]
    assert train.train.first_x == 1.0 and train.train.last_x == float(STEPS)
    vals = [v for v in cols["val_loss"] if not math.isnan(v)]
    assert len(train.val) == len(vals) and train.val.last() == vals[-1]
    steps, acc = train.eval_series("accuracy")
    assert steps[-1] == float(STEPS) and all(0.0 <= a <= 1.0 for a in acc)


def test_ls_json_data_wait_is_a_share_of_the_step_time(slow_run):
    ws, folder = slow_run
    proc = cockpit("ls", "--json", workspace=ws)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["run_id"] == folder.run_id and row["status"] == "passed"
    assert row["step"] == STEPS
    # data_wait = sum(data_s) / sum(step_s) over the last rows: a share, never above 1
    cols = folder.steps()
    assert 0.0 < row["data_wait"] < 1.0, row["data_wait"]
    assert row["data_wait"] == pytest.approx(sum(cols["data_s"]) / sum(cols["step_s"]))
    assert row["train_loss"] == folder.steps()["train_loss"][-1]


def test_pruning_reads_the_groups_evaluations_as_the_engine_wrote_them(slow_run):
    ws, folder = slow_run
    group = json.loads(folder.file("run.json").read_text())["group"]
    evals = [json.loads(line) for line in folder.file("evals.jsonl").read_text().splitlines()]
    peers = GroupPeers(ws, group, me="a-peer-of-the-group")
    peers.refresh()
    assert list(peers.rows) == [folder.run_id]
    judged = [e for e in evals if e["stage"] == "train"]
    # every eval_every steps, then the final evaluation (at STEPS again: today the train
    # stage logs it even when the periodic one ran at that step)
    periodic = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert [e["step"] for e in judged][: len(periodic)] == periodic
    assert judged[-1]["step"] == STEPS
    for e in judged:
        # the peer keeps its latest evaluation at each step
        latest = [x for x in judged if x["step"] == e["step"]][-1]
        assert peers.values_at(e["step"], "val_loss") == [latest["val_loss"]]
        assert peers.values_at(e["step"], "accuracy") == [latest["accuracy"]]
    # a run outside the group is never a peer
    assert GroupPeers(ws, "another-group", me="x").values_at(STEPS, "val_loss") == []
    again = RunFolder(folder.path)
    assert again.last_eval()["step"] == STEPS
