"""The median pruning rule (engine/torchfree/pruning.py): who is compared with whom, at which step, and
what a pruned run records — also for a run trained under DDP, where rank 0 decides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cockpit.launch import create_run, start_engine
from engine.torchfree import preset as presets
from engine.torchfree.preset import PresetError, PruneSettings
from engine.torchfree.pruning import Decision, GroupPeers, MedianPruner, median_to_beat, settings_of
from engine.torchfree.runfolder import JsonlAppender, write_json_atomic
from tests.conftest import ZOO


def peer(ws: Path, name: str, group: str, values: dict[int, float], stage: str = "train") -> None:
    (ws / name).mkdir()
    write_json_atomic(ws / name / "run.json", {"group": group})
    evaluate(ws, name, values, stage)


def evaluate(ws: Path, name: str, values: dict[int, float], stage: str = "train") -> None:
    out = JsonlAppender(ws / name / "evals.jsonl")
    for step, v in values.items():
        out.append({"step": step, "stage": stage, "val_loss": v, "accuracy": 1 - v})


def pruner(ws: Path, decisions: list, **settings) -> MedianPruner:
    s = PruneSettings(
        **{"rule": "median", "warmup_steps": 10, "every": 10, "min_peers": 2, **settings}
    )
    higher = s.metric == "accuracy"
    return MedianPruner(s, GroupPeers(ws, "g", "me"), higher, decisions.append)


def test_the_median_to_beat():
    assert median_to_beat(1.0, [0.5, 0.7, 2.0], higher_is_better=False, min_peers=2) == 0.7
    assert median_to_beat(0.6, [0.5, 0.7, 2.0], higher_is_better=False, min_peers=2) is None
    assert median_to_beat(0.6, [0.5, 0.7], higher_is_better=True, min_peers=2) is None
    assert median_to_beat(0.5, [0.55, 0.7], higher_is_better=True, min_peers=2) == pytest.approx(
        0.625
    )
    assert median_to_beat(9.0, [0.5], higher_is_better=False, min_peers=2) is None  # too few peers


def test_a_run_behind_its_peers_at_the_same_step_is_pruned(workspace):
    peer(workspace, "a", "g", {10: 0.9, 20: 0.5})
    peer(workspace, "b", "g", {10: 1.0, 20: 0.6})
    peer(workspace, "stranger", "other", {10: 9.0, 20: 9.0})
    peer(workspace, "generalize-only", "g", {20: 0.1}, stage="generalize")
    decisions: list[Decision] = []
    p = pruner(workspace, decisions)
    p(5, {"val_loss": 1.4})  # before warmup: never judged
    p(10, {"val_loss": 0.95})  # between its peers: the median is 0.95, not worse
    assert decisions == []
    p(20, {"val_loss": 1.3})  # best so far 0.95 > median 0.55 at step 20
    (d,) = decisions
    assert (d.value, d.step, d.median, d.peers, d.at_step) == (0.95, 20, pytest.approx(0.55), 2, 20)
    assert d.reason == "pruned: val_loss 0.95 at step 20 is worse than the median 0.55 of 2 peers"
    assert d.to_json()["reason"] == d.reason


def test_a_run_ahead_of_its_peers_is_judged_once_they_catch_up(workspace):
    peer(workspace, "a", "g", {})
    peer(workspace, "b", "g", {})
    decisions: list[Decision] = []
    p = pruner(workspace, decisions, metric="accuracy")
    p(10, {"accuracy": 0.1})  # the peers have not got to step 10 yet: nothing to compare with
    assert decisions == []
    evaluate(workspace, "a", {10: 0.3})  # accuracy 0.7
    evaluate(workspace, "b", {10: 0.2})  # accuracy 0.8
    p(20, {"accuracy": 0.2})  # nobody at step 20 yet: judged at step 10, where both are now
    assert [(d.step, d.at_step, d.value, d.median) for d in decisions] == [
        (10, 20, 0.1, pytest.approx(0.75))
    ]


def test_settings_name_a_metric_the_task_reports():
    base = presets.load(ZOO / "blobs.yaml", {"prune.rule": "median", "prune.metric": "mae"})
    with pytest.raises(
        PresetError, match=r"prune\.metric 'mae' is not measured for classification runs"
    ):
        settings_of(base)
    typo = presets.load(ZOO / "blobs.yaml", {"prune.rule": "medain"})
    with pytest.raises(PresetError, match=r"prune\.rule must be median or none, got 'medain'"):
        settings_of(typo)


@pytest.mark.slow
def test_a_ddp_run_is_pruned_by_its_rank_0(workspace, monkeypatch):
    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "0")
    monkeypatch.setenv("COCKPIT_DDP_TIMEOUT_S", "60")
    for name in ("a", "b"):
        peer(workspace, name, "g", {step: 0.01 for step in range(10, 1000, 10)})
    preset = presets.load(
        ZOO / "blobs.yaml",
        {
            "gpus": 2,
            "optimizer.lr": 1e-9,  # learns nothing: its val loss stays above the peers'
            "train": {"steps": 1000, "eval_every": 10, "checkpoint_every": 100},
            "prune": {"rule": "median", "warmup_steps": 10, "every": 10, "min_peers": 2},
        },
    )
    folder = create_run(workspace, preset, stages=["train"], group="g")
    proc = start_engine(folder)
    assert proc.wait(timeout=120) == 1
    s = folder.summary()
    assert s["status"] == "killed" and s["reason"].startswith("pruned: val_loss")
    assert s["pruned"]["peers"] == 2 and s["pruned"]["median"] == 0.01
    assert len(folder.steps()) < 100  # stopped long before its 1000 steps
    assert folder.latest_checkpoint() is not None
