"""Boundaries, not only extremes: a case just inside and just outside each line a verdict
rests on, so that moving a threshold (or deleting a check) breaks a test.

The planted bugs in tests/test_zoo.py sit far past their lines (a val set that overlaps train
completely); these sit next to them. Where a line is a setting, the cases are built from the
setting's default (``engine/torchfree/ladder.py``), so a deliberate change of default moves
the cases with it while a moved comparison still fails.
"""

from __future__ import annotations

import math

import pytest

from tests.conftest import ZOO, check, run_inprocess, stage

BLOBS = ZOO / "blobs.yaml"
OVERLAP_FAIL = 0.05  # engine/stages/init.py: a val set 5% or more in train fails
VAL = 256  # zoo.blobs' val set


def _init(workspace, data: dict, **more) -> dict:
    overrides = {f"data.{k}": v for k, v in data.items()} | more
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=overrides, stages=["init"])
    return stage(summary, "init")


# ---------------------------------------------------------------- train/val overlap


@pytest.mark.parametrize(
    ("shared", "status"),
    [
        (0, "pass"),
        (math.ceil(OVERLAP_FAIL * VAL) - 1, "warn"),  # 12 of 256 = 4.7%: just inside
        (math.ceil(OVERLAP_FAIL * VAL), "fail"),  # 13 of 256 = 5.1%: just outside
    ],
)
def test_overlap_fails_from_five_percent_of_val(workspace, shared, status):
    rec = _init(workspace, {"_target_": "edges.blobs_sharing", "shared": shared})
    got = check(rec, "train_val_overlap")
    assert got["status"] == status, got
    assert rec["metrics"]["overlap_fraction"] == pytest.approx(shared / VAL)
    if shared:
        assert f"{shared} of {VAL} val inputs also appear in train" in got["detail"]


# ---------------------------------------------------------------- generalize


@pytest.mark.slow
def test_a_falling_val_loss_does_not_pass_while_the_metric_stays_at_the_baseline(workspace):
    """Val loss well below the input-blind loss, accuracy exactly the majority class's: the
    model calibrated to what the input says but never predicts better than the prior. Only
    the "beats the input-blind baseline" check stands between this and a pass."""
    overrides = {
        "data": {"_target_": "edges.calibrated_not_accurate"},
        "generalize.steps": 150,
        "generalize.eval_every": 150,
        "generalize.label_test": False,
    }
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=overrides, stages=["generalize"])
    rec = stage(summary, "generalize")
    m = rec["metrics"]
    assert check(rec, "val_loss_falls")["status"] == "pass", rec
    assert m["val_loss_end"] < m["baseline_val_loss"] - 0.1  # 1.00 vs 1.18 nats
    assert m["accuracy"] <= m["baseline_accuracy"] + 0.01
    beats = check(rec, "beats_baseline")
    assert beats["status"] == "fail", beats
    assert "within noise of" in beats["detail"] and "majority class" in beats["detail"]
    assert rec["status"] != "pass", rec["reason"]


# ---------------------------------------------------------------- pruning
# engine/torchfree/pruning.py: the median rule, its warmup, its cadence and its quorum.


def _peers(ws, values_by_peer: dict[str, dict[int, float]], group: str = "g"):
    from engine.torchfree.runfolder import JsonlAppender, write_json_atomic

    for name, values in values_by_peer.items():
        (ws / name).mkdir()
        write_json_atomic(ws / name / "run.json", {"group": group})
        out = JsonlAppender(ws / name / "evals.jsonl")
        for step, v in values.items():
            out.append({"step": step, "stage": "train", "val_loss": v, "accuracy": 1 - v})


def _pruner(ws, decisions: list, **settings):
    from engine.torchfree.preset import PruneSettings
    from engine.torchfree.pruning import GroupPeers, MedianPruner

    s = PruneSettings(**{"rule": "median", **settings})
    return s, MedianPruner(s, GroupPeers(ws, "g", "me"), s.metric == "accuracy", decisions.append)


def test_the_median_itself_is_not_worse_than_the_median():
    from engine.torchfree.pruning import median_to_beat

    peers = [0.4, 0.5, 0.6]
    assert median_to_beat(0.5, peers, higher_is_better=False, min_peers=3) is None
    assert median_to_beat(0.5 + 1e-9, peers, higher_is_better=False, min_peers=3) == 0.5
    assert median_to_beat(0.5, peers, higher_is_better=True, min_peers=3) is None
    assert median_to_beat(0.5 - 1e-9, peers, higher_is_better=True, min_peers=3) == 0.5
    # better than the median is never pruned, in either direction
    assert median_to_beat(0.1, peers, higher_is_better=False, min_peers=3) is None
    assert median_to_beat(0.9, peers, higher_is_better=True, min_peers=3) is None


def test_the_quorum_of_peers_is_min_peers_and_at_least_one():
    from engine.torchfree.pruning import median_to_beat

    assert median_to_beat(9.0, [1.0, 2.0], higher_is_better=False, min_peers=2) == 1.5
    assert median_to_beat(9.0, [1.0], higher_is_better=False, min_peers=2) is None
    assert median_to_beat(9.0, [1.0, 2.0, 3.0], higher_is_better=False, min_peers=4) is None
    assert median_to_beat(9.0, [1.0], higher_is_better=False, min_peers=0) == 1.0
    assert median_to_beat(9.0, [], higher_is_better=False, min_peers=0) is None


def test_no_run_is_judged_before_the_warmup_step(workspace):
    from engine.torchfree.preset import PruneSettings

    warm = PruneSettings().warmup_steps  # the default: a deliberate change moves the cases
    _peers(workspace, {"a": {warm - 1: 0.1, warm: 0.1}, "b": {warm - 1: 0.2, warm: 0.2}})
    decisions: list = []
    _s, p = _pruner(workspace, decisions, min_peers=2)
    p(warm - 1, {"val_loss": 5.0})  # far behind, but one step before the warmup ends
    assert decisions == []
    p(warm, {"val_loss": 5.0})  # at the warmup step: judged, and behind
    (d,) = decisions
    # the step judged is the warmup step itself: the earlier evaluation does not count
    assert (d.step, d.at_step, d.value, d.median, d.peers) == (
        warm,
        warm,
        5.0,
        0.15000000000000002,
        2,
    )


def test_a_run_is_judged_every_n_steps_not_more_often(workspace):
    from engine.torchfree.preset import PruneSettings

    s = PruneSettings()
    warm, every = s.warmup_steps, s.every
    # the peers have evaluations one step before the next judgement, and at it
    _peers(
        workspace,
        {
            "a": {warm + every - 1: 0.1, warm + every: 0.1},
            "b": {warm + every - 1: 0.2, warm + every: 0.2},
        },
    )
    decisions: list = []
    _s, p = _pruner(workspace, decisions, min_peers=2)
    p(warm, {"val_loss": 9.0})  # judged (the clock starts), but no peer is at this step
    p(warm + every - 1, {"val_loss": 9.0})  # far behind — and not judged: one step early
    assert decisions == []
    p(warm + every, {"val_loss": 9.0})
    (d,) = decisions
    assert (d.step, d.at_step, d.median) == (warm + every, warm + every, pytest.approx(0.15))


def test_the_run_is_judged_by_its_best_value_up_to_the_step(workspace):
    _peers(workspace, {"a": {10: 0.5, 20: 0.5}, "b": {10: 0.7, 20: 0.7}})
    decisions: list = []
    _s, p = _pruner(workspace, decisions, warmup_steps=10, every=10, min_peers=2)
    p(10, {"val_loss": 0.55})  # 0.55 < 0.6: ahead
    p(20, {"val_loss": 0.65})  # worse now, but its best (0.55) still beats the median 0.6
    assert decisions == []
    decisions_acc: list = []
    _s, p = _pruner(
        workspace, decisions_acc, metric="accuracy", warmup_steps=10, every=10, min_peers=2
    )
    p(10, {"accuracy": 0.39})  # peers' accuracy 0.5 and 0.3: median 0.4, 0.39 is behind
    (d,) = decisions_acc
    assert d.metric == "accuracy" and d.median == pytest.approx(0.4) and d.value == 0.39


def test_peers_are_the_groups_train_evaluations_only(workspace):
    import math

    from engine.torchfree.pruning import GroupPeers
    from engine.torchfree.runfolder import JsonlAppender, write_json_atomic

    _peers(workspace, {"a": {10: 0.5}, "b": {10: 0.7}, "me": {10: 9.0}})
    _peers(workspace, {"x": {10: 0.0}}, group="other")
    (workspace / "c").mkdir()
    write_json_atomic(workspace / "c" / "run.json", {"group": "g"})
    out = JsonlAppender(workspace / "c" / "evals.jsonl")
    out.append({"step": 10, "stage": "generalize", "val_loss": 0.0})  # another stage
    out.append({"step": 10.0, "stage": "train", "val_loss": 0.0})  # not an int step
    out.append({"step": 10, "stage": "train", "val_loss": math.nan})  # NaN never counts
    (workspace / "not-yet").mkdir()  # no run.json yet: looked at again next time
    peers = GroupPeers(workspace, "g", "me")
    peers.refresh()
    assert sorted(peers.values_at(10, "val_loss")) == [0.5, 0.7]
    assert sorted(peers.values_at(10, "accuracy")) == pytest.approx([0.3, 0.5])
    assert peers.values_at(20, "val_loss") == []
    assert "x" in peers.outsiders and "not-yet" not in peers.outsiders
    write_json_atomic(workspace / "not-yet" / "run.json", {"group": "g"})
    JsonlAppender(workspace / "not-yet" / "evals.jsonl").append(
        {"step": 10, "stage": "train", "val_loss": 0.6}
    )
    peers.refresh()
    assert sorted(peers.values_at(10, "val_loss")) == [0.5, 0.6, 0.7]
    # an evaluation appended later is read incrementally
    JsonlAppender(workspace / "a" / "evals.jsonl").append(
        {"step": 20, "stage": "train", "val_loss": 0.4}
    )
    peers.refresh()
    assert peers.values_at(20, "val_loss") == [0.4]


def test_a_missing_workspace_has_no_peers(tmp_path):
    from engine.torchfree.pruning import GroupPeers

    peers = GroupPeers(tmp_path / "gone", "g", "me")
    peers.refresh()
    assert peers.values_at(10, "val_loss") == []


def test_prune_settings_per_task():
    from engine.torchfree import preset as presets
    from engine.torchfree.preset import PresetError
    from engine.torchfree.pruning import settings_of

    ok = presets.load(BLOBS, {"prune.rule": "median", "prune.metric": "accuracy"})
    assert settings_of(ok).metric == "accuracy"
    off = presets.load(BLOBS, {"prune.rule": "none", "prune.metric": "miou"})
    assert settings_of(off).rule == "none"  # an unused metric is not checked
    with pytest.raises(PresetError, match=r"one of val_loss, accuracy, macro_f1"):
        settings_of(presets.load(BLOBS, {"prune.rule": "median", "prune.metric": "miou"}))
    reg = presets.load(
        ZOO / "blobs.yaml",
        {"task": "regression", "prune.rule": "median", "prune.metric": "mae"},
    )
    assert settings_of(reg).metric == "mae"


def test_the_pruning_reason_in_numbers():
    from engine.torchfree.pruning import Decision

    d = Decision("val_loss", 0.00012345, 300, 0.0, 3, 310)
    assert d.reason == "pruned: val_loss 1.23e-04 at step 300 is worse than the median 0 of 3 peers"
    assert Decision("accuracy", 0.001, 1, 12.3456, 2, 1).reason.startswith(
        "pruned: accuracy 0.001 at step 1 is worse than the median 12.3 of 2"
    )
    j = d.to_json()
    assert j["rule"] == "median" and j["at_step"] == 310 and j["peers"] == 3


def test_attach_listens_only_for_a_pruning_group_member(workspace):
    import types

    from engine.torchfree import preset as presets
    from engine.torchfree.pruning import MedianPruner, attach

    def ctx(overrides):
        requests: list = []
        c = types.SimpleNamespace(
            preset=presets.load(BLOBS, overrides),
            folder=types.SimpleNamespace(path=workspace / "me", run_id="me"),
            eval_listeners=[],
            stop=types.SimpleNamespace(request=lambda **kw: requests.append(kw)),
        )
        return c, requests

    c, _ = ctx({"prune.rule": "median"})
    assert attach(c, {}) is None and c.eval_listeners == []  # not in a group
    c, _ = ctx({"prune.rule": "none"})
    assert attach(c, {"group": "g"}) is None and c.eval_listeners == []
    c, requests = ctx(
        {"prune": {"rule": "median", "metric": "accuracy", "warmup_steps": 1, "every": 1}}
    )
    _peers(workspace, {"a": {1: 0.1}, "b": {1: 0.3}})
    p = attach(c, {"group": "g"})
    assert isinstance(p, MedianPruner) and c.eval_listeners == [p]
    assert p.higher is True  # accuracy: higher is better
    p(1, {"accuracy": 0.5})  # peers 0.9 and 0.7: behind
    (req,) = requests
    assert req["pruned"]["reason"].startswith("pruned: accuracy 0.5 at step 1")


# ---------------------------------------------------------------- data-bound share
# engine/torchfree/ladder.py's is_data_bound (the speed verdict and the app's GPU panel) and
# the speed stage's use of it: the real loop's median share of a step spent waiting on data.


def test_is_data_bound_above_the_share_not_at_it():
    from engine.torchfree.ladder import SpeedSettings, is_data_bound

    limit = SpeedSettings().data_bound
    assert is_data_bound(math.nextafter(limit, 1.0))
    assert not is_data_bound(limit)
    assert not is_data_bound(math.nextafter(limit, 0.0))
    assert is_data_bound(0.5, limit=0.4) and not is_data_bound(0.4, limit=0.4)


def _speed(workspace, monkeypatch, shares: list[float], step_s: float | None = None) -> dict:
    """The speed stage with its real-loop measurement replaced by rows of known shares."""
    import engine.stages.speed as speed
    from engine.loop import LoopResult, Row
    from engine.torchfree.ladder import SpeedSettings

    s = SpeedSettings()
    step_s = s.max_batch_s if step_s is None else step_s

    def fake_loop(ctx, model, optimizer, batches, *, steps, **kw):
        rows = [
            Row(
                step=i + 1,
                time=0.0,
                train_loss=1.0,
                val_loss=1.0,
                data_s=share * step_s,
                step_s=step_s,
                gpu_s=math.nan,
                lr=1e-3,
            )
            for i, share in enumerate(shares)
        ]
        return LoopResult(rows=rows)

    monkeypatch.setattr(speed, "train_loop", fake_loop)
    # the step measured alone is as slow as the loop's: the loop's time is the step's own
    monkeypatch.setattr(speed, "_time_compute", lambda *a, **k: step_s)
    more = {"speed.batches": 2, "speed.seconds": 2}
    if "compare_precision" in {f for f in SpeedSettings.__dataclass_fields__}:
        more["speed.compare_precision"] = False
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=more, stages=["speed"])
    return stage(summary, "speed")


def test_speed_is_compute_bound_at_the_data_bound_share(workspace, monkeypatch):
    from engine.torchfree.ladder import SpeedSettings

    limit = SpeedSettings().data_bound
    # the first step pays for start-up and is left out: its share must not decide
    rec = _speed(workspace, monkeypatch, [0.99, limit, limit, limit])
    assert rec["metrics"]["data_wait_share"] == pytest.approx(limit)
    assert check(rec, "data_wait")["status"] == "pass"
    assert rec["metrics"]["data_bound"] == 0.0
    assert rec["status"] == "pass" and rec["reason"].startswith("compute-bound")
    # one step at 1.0 s is the limit itself: not over it
    assert check(rec, "batch_time")["status"] == "pass"


def test_speed_is_data_bound_just_above_the_share(workspace, monkeypatch):
    from engine.torchfree.ladder import SpeedSettings

    limit = SpeedSettings().data_bound
    above = limit + 0.01
    rec = _speed(workspace, monkeypatch, [0.0, above, above, limit])  # median of the last 3
    assert rec["metrics"]["data_wait_share"] == pytest.approx(above)
    wait = check(rec, "data_wait")
    assert wait["status"] == "warn" and wait["detail"].startswith("data-bound")
    assert f"{100 * above:.0f}% of the time" in wait["detail"]
    assert "set num_workers (now 0" in wait["detail"]  # the advice names the knob
    assert rec["metrics"]["data_bound"] == 1.0
    assert rec["status"] == "warn" and "data-bound" in rec["reason"]


def test_speed_fails_a_batch_just_over_the_time_limit(workspace, monkeypatch):
    from engine.torchfree.ladder import SpeedSettings

    limit = SpeedSettings().max_batch_s
    rec = _speed(workspace, monkeypatch, [0.1, 0.1, 0.1], step_s=math.nextafter(limit, 2 * limit))
    got = check(rec, "batch_time")
    assert got["status"] == "fail" and f"over {limit:g} s" in got["detail"]
    assert rec["status"] == "fail"


# ---------------------------------------------------------------- slots
# engine/torchfree/slots: what a run asks for, whether it can ever fit, how many CPU runs go.


def test_what_a_preset_asks_for():
    from engine.torchfree.slots.leases import demand

    two = [0, 1]
    assert demand({"gpus": 1}, two, 4) == ("gpu", 1)
    assert demand({"gpus": 2}, two, 4) == ("gpu", 2)
    assert demand({"gpus": 0}, two, 4) == ("cpu", 1)  # gpus: 0 trains on a CPU slot
    assert demand({}, two, 4) == ("gpu", 1)  # the default is one GPU
    assert demand({"gpus": 1, "device": "cpu"}, two, 4) == ("cpu", 1)
    assert demand({"gpus": 0, "device": "cuda:1"}, two, 4) == ("gpu", 1)  # cuda needs one
    assert demand({"gpus": 1}, [], 4) == ("cpu", 1)  # no GPU here: a CPU slot
    # DDP on CPUs: a slot per process, at most all of them
    assert demand({"gpus": 3}, [], 4) == ("cpu", 3)
    assert demand({"gpus": 4}, [], 4) == ("cpu", 4)
    assert demand({"gpus": 5}, [], 4) == ("cpu", 4)
    assert demand({"gpus": "2"}, two, 4) == ("gpu", 1)  # not an int: the default
    assert demand({"gpus": -1}, two, 4) == ("gpu", 1)


def test_a_run_fits_with_exactly_the_machines_gpus():
    from engine.torchfree.slots import SlotError
    from engine.torchfree.slots.leases import check_fits

    check_fits("gpu", 2, [0, 1])  # all of them: fits
    check_fits("cpu", 64, [])  # CPU slots are capped by demand(), never refused
    with pytest.raises(SlotError, match=r"asks for gpus: 3, but this machine has 2 GPUs \(0, 1\)"):
        check_fits("gpu", 3, [0, 1])
    with pytest.raises(SlotError, match=r"gpus: 1, but this machine has 0 GPUs"):
        check_fits("gpu", 1, [])


def test_cpu_slots_from_one_up(tmp_path):
    from engine.torchfree.slots import SlotError
    from engine.torchfree.slots.devices import CPU_SLOTS_ENV, cpu_slot_count, physical_cores

    assert cpu_slot_count(tmp_path, {CPU_SLOTS_ENV: "1"}) == 1
    assert cpu_slot_count(tmp_path, {CPU_SLOTS_ENV: " 3 "}) == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(SlotError, match=r"expected a whole number of runs ≥ 1"):
            cpu_slot_count(tmp_path, {CPU_SLOTS_ENV: bad})
    assert cpu_slot_count(tmp_path, {}) == max(1, physical_cores() // 2)
    (tmp_path / "cockpit.yaml").write_text("cpu_slots: 2\n")
    assert cpu_slot_count(tmp_path, {}) == 2
    assert cpu_slot_count(tmp_path, {CPU_SLOTS_ENV: "5"}) == 5  # the env wins
    (tmp_path / "cockpit.yaml").write_text("cpu_slots: 0\n")
    with pytest.raises(SlotError, match=r"cockpit.yaml: cpu_slots is '0'"):
        cpu_slot_count(tmp_path, {})
    (tmp_path / "cockpit.yaml").write_text("cpu_slots: [\n")
    with pytest.raises(SlotError, match=r"not valid YAML"):
        cpu_slot_count(tmp_path, {})


def test_what_a_waiting_run_is_said_to_wait_for():
    from engine.torchfree.slots.leases import Ask

    def ask(kind, need):
        return Ask("r", 0.0, kind, need)

    assert ask("gpu", 1).what() == "1 GPU"
    assert ask("gpu", 2).what() == "2 GPUs"
    assert ask("cpu", 1).what() == "a CPU slot"
    assert ask("cpu", 2).what() == "2 CPU slots"


def test_a_bad_prune_section_is_named_by_its_line_or_its_override(tmp_path):
    from engine.torchfree import preset as presets
    from engine.torchfree.preset import PresetError
    from engine.torchfree.pruning import settings_of

    text = BLOBS.read_text()
    path = tmp_path / "p.yaml"
    n = len(text.splitlines())
    path.write_text(text + "prune:\n  rule: median\n  metric: miou\n")
    with pytest.raises(PresetError) as e:
        settings_of(presets.load(path))
    assert str(e.value).startswith(f"{path}, line {n + 3}: prune.metric 'miou'")
    path.write_text(text + "prune:\n  rule: medain\n")
    with pytest.raises(PresetError) as e:
        settings_of(presets.load(path))
    assert str(e.value).startswith(f"{path}, line {n + 2}: prune.rule must be median or none")
    with pytest.raises(PresetError) as e:
        settings_of(presets.load(BLOBS, {"prune.rule": "medain"}))
    assert str(e.value).startswith(f"{BLOBS} (--set prune.rule=medain): prune.rule")


def test_a_folder_without_run_json_does_not_hide_the_peers_after_it(workspace, monkeypatch):
    """The workspace is scanned in whatever order the file system gives: a run folder still
    being created (no run.json yet) must not end the scan."""
    import os

    from engine.torchfree import pruning
    from engine.torchfree.pruning import GroupPeers

    _peers(workspace, {"a": {10: 0.5}, "b": {10: 0.7}})
    (workspace / "0-being-created").mkdir()
    real = os.scandir

    def in_name_order(path):
        with real(path) as it:
            return sorted(it, key=lambda e: e.name)

    monkeypatch.setattr(pruning.os, "scandir", in_name_order)
    peers = GroupPeers(workspace, "g", "me")
    peers.refresh()
    assert sorted(peers.values_at(10, "val_loss")) == [0.5, 0.7]


def test_an_evaluation_without_the_metric_or_with_nan_is_not_judged(workspace):
    _peers(workspace, {"a": {10: 0.5, 20: 0.5}, "b": {10: 0.7, 20: 0.7}})
    decisions: list = []
    _s, p = _pruner(workspace, decisions, warmup_steps=10, every=10, min_peers=2)
    p(10, {"accuracy": 0.9})  # no val_loss in this evaluation: nothing to judge by
    p(20, {"val_loss": math.nan})  # a diverged evaluation is not a value
    assert decisions == [] and p.history == {}


def test_one_peer_is_a_quorum_when_min_peers_is_one(workspace):
    _peers(workspace, {"a": {10: 0.5}})
    decisions: list = []
    _s, p = _pruner(workspace, decisions, warmup_steps=10, every=10, min_peers=1)
    p(10, {"val_loss": 0.6})
    (d,) = decisions
    assert (d.peers, d.median) == (1, 0.5)


def test_the_best_accuracy_so_far_is_the_highest(workspace):
    _peers(workspace, {"a": {10: 0.5, 20: 0.5}, "b": {10: 0.7, 20: 0.7}})  # accuracy .5/.3
    decisions: list = []
    _s, p = _pruner(workspace, decisions, metric="accuracy", warmup_steps=10, every=10, min_peers=2)
    p(10, {"accuracy": 0.6})  # ahead of the median 0.4
    p(20, {"accuracy": 0.2})  # behind now, but its best (0.6) is still ahead
    assert decisions == []


def test_a_run_is_never_its_own_peer(workspace):
    import types

    from engine.torchfree import preset as presets
    from engine.torchfree.pruning import attach

    # the run itself, in the group, with a far better value than its one peer
    _peers(workspace, {"me": {1: 0.0}, "a": {1: 0.5}})
    requests: list = []
    c = types.SimpleNamespace(
        preset=presets.load(
            BLOBS, {"prune": {"rule": "median", "warmup_steps": 1, "every": 1, "min_peers": 2}}
        ),
        folder=types.SimpleNamespace(path=workspace / "me", run_id="me"),
        eval_listeners=[],
        stop=types.SimpleNamespace(request=lambda **kw: requests.append(kw)),
    )
    p = attach(c, {"group": "g"})
    p(1, {"val_loss": 0.9})  # one peer only (itself does not count): no quorum of 2
    assert requests == []


# ---------------------------------------------------------------- loss at init, imbalance
# engine/stages/init.py: the loss at init against ln C, within InitSettings.loss_tolerance;
# classes imbalanced above InitSettings.imbalance_ratio (largest count / smallest).


def _logit_for(loss: float, classes: int = 4) -> float:
    """The edges.ConstantLogits logit whose cross-entropy on class-1 targets is ``loss``."""
    return -math.log((math.exp(loss) - 1) / (classes - 1))


@pytest.mark.parametrize(
    ("side", "delta", "status"),
    [
        ("above", -0.01, "pass"),  # just inside the tolerance, above ln C
        ("above", +0.01, "warn"),  # just outside: confidently wrong from the start
        ("below", -0.01, "pass"),
        ("below", +0.01, "warn"),  # far below: do the targets leak into the inputs?
    ],
)
def test_loss_at_init_within_its_tolerance_of_ln_c(workspace, side, delta, status):
    from engine.torchfree.ladder import InitSettings

    tol = InitSettings().loss_tolerance
    expected = math.log(4)
    off = (tol + delta) * (1 if side == "above" else -1)
    loss = expected * (1 + off)
    overrides = {
        "model": {"_target_": "edges.ConstantLogits", "logit": _logit_for(loss)},
        "data": {"_target_": "edges.one_label"},
    }
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=overrides, stages=["init"])
    rec = stage(summary, "init")
    assert rec["metrics"]["loss_at_init"] == pytest.approx(loss, rel=1e-5)
    got = check(rec, "loss_at_init")
    assert got["status"] == status, got
    if status == "warn":
        words = "confidently wrong" if side == "above" else "far below the expected"
        assert words in got["detail"]


@pytest.mark.parametrize(("extra", "status"), [(0, "pass"), (1, "warn")])
def test_classes_imbalanced_above_the_ratio(workspace, extra, status):
    from engine.torchfree.ladder import InitSettings

    ratio = InitSettings().imbalance_ratio
    small = 40
    big = (
        math.floor(ratio * small) + extra
    )  # at the ratio (or the largest count under it), then one more
    overrides = {"data": {"_target_": "edges.counts", "per_class": [big, small, small, small]}}
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=overrides, stages=["init"])
    rec = stage(summary, "init")
    assert rec["metrics"]["imbalance_ratio"] == pytest.approx(big / small)
    got = check(rec, "class_balance")
    assert got["status"] == status, got
    if status == "warn":
        assert f"({big / small:.1f}×)" in got["detail"] and "class 0 has" in got["detail"]


# ---------------------------------------------------------------- batch leak
# engine/stages/batch_independence.py: a leak (another sample's gradient relative to the
# sample's own) above BatchIndependenceSettings.tolerance fails gradient_isolation.


@pytest.mark.parametrize(("factor", "status"), [(0.8, "pass"), (1.25, "fail")])
def test_a_batch_leak_fails_just_above_the_tolerance(workspace, factor, status):
    from engine.torchfree.ladder import BatchIndependenceSettings

    s = BatchIndependenceSettings()
    rel = s.tolerance * factor
    k = rel / (1 - rel)  # leak/own = k / (1 + k), k = mix / batch
    overrides = {"model": {"_target_": "edges.BatchMix", "mix": k * s.batch}}
    _code, summary, _ = run_inprocess(
        BLOBS, workspace, overrides=overrides, stages=["batch_independence"]
    )
    rec = stage(summary, "batch_independence")
    assert rec["metrics"]["leak"] == pytest.approx(rel, rel=1e-3)
    got = check(rec, "gradient_isolation")
    assert got["status"] == status, got
    if status == "fail":
        assert "depends on sample" in got["detail"]


# ---------------------------------------------------------------- overfit reach
# engine/stages/overfit.py: memorised once the loss is within OverfitSettings.reach of its
# floor, as a fraction of the start's distance to it. The training loop is replaced by one
# that replays a curve of known losses through the stage's own stop rule.


def _overfit(workspace, monkeypatch, losses: list[float]) -> dict:
    import engine.stages.overfit as overfit
    from engine.loop import LoopResult, Row

    def fake_loop(ctx, model, optimizer, batches, *, steps, until=None, **kw):
        result = LoopResult()
        for i, loss in enumerate(losses[:steps]):
            row = Row(
                step=i + 1,
                time=0.0,
                train_loss=loss,
                val_loss=math.nan,
                data_s=0.0,
                step_s=0.01,
                gpu_s=math.nan,
                lr=1e-2,
            )
            result.rows.append(row)
            if until is not None and until(row):
                result.stopped = "target"
                break
        result.seconds = 0.01 * len(result.rows)
        return result

    monkeypatch.setattr(overfit, "train_loop", fake_loop)
    more = {"overfit_one.floor": 0.0, "overfit_one.steps": len(losses)}
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=more, stages=["overfit_one"])
    return stage(summary, "overfit_one")


def test_overfit_passes_at_exactly_its_reach(workspace, monkeypatch):
    from engine.torchfree.ladder import OverfitSettings

    reach = OverfitSettings().reach
    curve = [1.0, 0.5, 0.2, 0.1, 0.05, reach]  # start 1.0, floor 0: the target is `reach`
    rec = _overfit(workspace, monkeypatch, curve)
    got = check(rec, "loss_reaches_zero")
    assert got["status"] == "pass", got
    assert got["detail"].startswith("memorised one sample")
    assert rec["metrics"]["steps"] == len(curve)


def test_overfit_does_not_pass_just_short_of_its_reach(workspace, monkeypatch):
    from engine.torchfree.ladder import OverfitSettings

    reach = OverfitSettings().reach
    flat = [1.0, 0.5, 0.2, 0.1, 0.05] + [reach * 1.05] * 40  # stalls just above the target
    rec = _overfit(workspace, monkeypatch, flat)
    got = check(rec, "loss_reaches_zero")
    assert got["status"] != "pass", got
    assert rec["status"] != "pass"
    assert rec["metrics"]["steps"] == len(flat)  # never stopped early: the target was not met


# ---------------------------------------------------------------- a stage's verdict
# engine/stages/base.py: a stage's verdict is its worst check, its reason that check's detail.


def test_the_verdict_is_the_worst_check_and_counts_the_others():
    from engine.stages.base import Check, from_checks, worst

    ok = Check("a", "pass", "fine")
    skip = Check("s", "skip", "not needed")
    w1, w2, w3 = (Check(f"w{i}", "warn", f"warning {i}") for i in (1, 2, 3))
    f1 = Check("f1", "fail", "broken")
    assert worst([]) == "pass" and worst([ok, skip]) in ("pass", "skip")
    assert worst([ok, w1]) == "warn" and worst([w1, f1, ok]) == "fail"
    v = from_checks([ok], {"x": 1.0}, "all good")
    assert (v.status, v.reason, v.metrics) == ("pass", "all good", {"x": 1.0})
    assert from_checks([ok, w1], {}, "all good").reason == "warning 1"
    assert from_checks([w1, w2], {}, "").reason == "warning 1 (+1 more warn)"
    assert from_checks([w1, w2, w3], {}, "").reason == "warning 1 (+2 more warns)"
    v = from_checks([w1, f1, w2], {}, "")
    assert (v.status, v.reason) == ("fail", "broken")  # the warnings are not counted with it
    assert v.checks == [w1, f1, w2]


def test_a_verdict_round_trips_through_json_without_non_finite_numbers():
    import json

    from engine.stages.base import Check, Verdict, crash_verdict, mean

    v = Verdict("warn", "why", [Check("c", "warn", "d")], {"a": 1.5, "b": math.nan, "n": 3})
    j = v.to_json()
    assert j == {
        "status": "warn",
        "reason": "why",
        "checks": [{"name": "c", "status": "warn", "detail": "d"}],
        "metrics": {"a": 1.5, "b": None, "n": 3.0},
    }
    json.dumps(j, allow_nan=False)  # summary.json holds no NaN
    back = Verdict.from_json(j)
    assert (back.status, back.reason, back.checks, back.metrics) == (
        "warn",
        "why",
        [Check("c", "warn", "d")],
        {"a": 1.5, "n": 3.0},
    )
    c = crash_verdict({"world": 2, "error": "RuntimeError: boom"})
    assert c.status == "fail" and c.checks[0].name == "ddp_runs"
    assert c.reason == "DDP on 2 processes crashed: RuntimeError: boom (traceback in engine.log)"
    assert mean([1.0, None, math.nan, 3.0]) == 2.0 and math.isnan(mean([]))


def test_what_ls_says_about_the_slots(workspace, monkeypatch):
    from engine.torchfree import slots
    from tests.test_slots import fake_run, take

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "0")
    monkeypatch.setenv(slots.CPU_SLOTS_ENV, "2")
    assert slots.describe_slots(workspace) == (
        f"CPU slots: 0 of 2 busy  (set with ${slots.CPU_SLOTS_ENV} or cpu_slots: in "
        f"{workspace / 'cockpit.yaml'})"
    )
    lease = take(fake_run(workspace, "one", gpus=0))
    assert lease.describe() == "CPU slot 0"
    (view, free) = slots.slot_views(workspace)
    assert view.to_json() == {
        "kind": "cpu",
        "index": 0,
        "run_id": "one",
        "since": view.since,
        "foreign": [],
    }
    assert view.since is not None and free.run_id is None and free.index == 1
    assert slots.describe_slots(workspace).startswith("CPU slots: 1 of 2 busy  (set with")
    lease.release()
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "3")
    a = take(fake_run(workspace, "a"))
    pair = take(fake_run(workspace, "pair", gpus=2))
    assert (a.describe(), pair.describe()) == ("GPU 0", "GPUs 1,2")
    assert slots.describe_slots(workspace) == "GPUs: 0 a · 1 pair · 2 pair"
    pair.release()
    assert slots.describe_slots(workspace) == "GPUs: 0 a · 1 free · 2 free"
    a.release()


# ---------------------------------------------------------------- generalize's two lines
# engine/stages/generalize.py: the val loss must beat the input-blind loss by
# GeneralizeSettings.margin (and its noise); the metric must clear the baseline by its
# confidence interval (GeneralizeSettings.confidence).


def _generalize_stage():
    from engine.stages.generalize import GeneralizeStage
    from engine.torchfree.ladder import GeneralizeSettings

    return GeneralizeStage(GeneralizeSettings()), GeneralizeSettings()


def test_val_loss_must_beat_the_blind_loss_by_the_margin():
    stage_, s = _generalize_stage()
    base = 1.2
    need = s.margin * base
    below = stage_.check_val_loss({"val_loss": base - need * 1.01}, base, {}, 100)
    at = stage_.check_val_loss({"val_loss": base - need * 0.99}, base, {}, 100)
    assert below.status == "pass" and at.status == "fail", (below, at)
    assert "did not fall below the input-blind baseline" in at.detail and "needed" in at.detail
    # the noise, when larger than the margin, is the line instead
    se = need  # 2 * se = twice the margin
    noisy = stage_.check_val_loss({"val_loss": base - need * 1.5, "val_loss_se": se}, base, {}, 100)
    clear = stage_.check_val_loss({"val_loss": base - 2.01 * se, "val_loss_se": se}, base, {}, 100)
    assert noisy.status == "fail" and clear.status == "pass", (noisy, clear)


def test_accuracy_must_clear_the_baseline_by_its_interval():
    import torch

    from engine.stages.generalize import interval

    stage_, s = _generalize_stage()
    n, got = 1000, 0.60
    per_sample = torch.ones(n)
    half = interval("accuracy", per_sample, got, s.confidence)
    assert 0.02 < half < 0.04  # the binomial half-width at 95% for 1000 samples
    for ref, status in ((got - half * 1.01, "pass"), (got - half * 0.99, "fail")):
        metrics: dict = {}
        check_, _shown = stage_.check_beats_baseline(
            "accuracy", {"accuracy": got}, {"accuracy": ref}, per_sample, metrics
        )
        assert check_.status == status, (ref, check_)
        assert metrics["accuracy_ci"] == pytest.approx(half)
    # mae: lower is better, the same line below the baseline
    for ref, status in ((0.5 + 1e-9, "pass"), (0.5, "fail")):
        check_, _ = stage_.check_beats_baseline(
            "mae", {"mae": 0.5}, {"mae": ref}, torch.full((50,), 0.5), {}
        )
        assert check_.status == status, (ref, check_)


@pytest.mark.parametrize("factor, status", [(0.97, "warn"), (1.03, "pass")])
def test_inputs_are_tiny_just_under_the_scale_not_at_it(factor, status):
    import torch

    from engine.diagnosis.datastats import check_scale, tiny
    from engine.torchfree.ladder import InitSettings

    s = InitSettings()
    # every feature's |mean| + spread at factor × tiny_scale: mean 0.5 of it, spread 0.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    x = s.tiny_scale * factor * 0.5 * (x + 1.0)
    got = check_scale(x, s)
    assert got.status == status, got.detail
    assert (tiny(x, s) is not None) == (status == "warn")
    if status == "warn":
        assert got.detail.startswith("train inputs are tiny:")


@pytest.mark.parametrize("moved, status", [(0.49, "pass"), (0.51, "warn")])
def test_split_classes_warn_just_past_the_shift_not_before(moved, status):
    # train: half class 0, half class 1; val: the same, with `moved` of it turned into class 2
    # (a class train also holds, so only the shift decides): total variation = moved
    from types import SimpleNamespace

    import torch
    from torch.utils.data import TensorDataset

    from engine.diagnosis.datastats import check_split_classes
    from engine.torchfree.ladder import InitSettings

    s = InitSettings()
    assert s.split_class_shift == 0.5
    n = 200
    yt = torch.tensor([0, 1] * (n // 2) + [2])  # one sample of class 2: not unseen
    k = round(moved * n)
    yv = torch.cat([torch.tensor([0, 1] * ((n - k) // 2)), torch.full((k,), 2)])
    ctx = SimpleNamespace(
        data=SimpleNamespace(
            train=TensorDataset(torch.zeros(len(yt), 2), yt),
            val=TensorDataset(torch.zeros(len(yv), 2), yv),
        ),
        preset={},
    )
    metrics: dict = {}
    got = check_split_classes(ctx, "classification", 3, metrics, s)
    assert got.status == status, (got.detail, metrics)
    assert metrics["split_class_shift"] == pytest.approx(moved, abs=0.01)


@pytest.mark.parametrize(
    "ratio, shift, status",
    [(1.9, 0.0, "pass"), (2.1, 0.0, "warn"), (3.9, 0.0, "warn"), (4.1, 0.0, "fail"),
     (1.0, 2.9, "pass"), (1.0, 3.1, "warn"), (2.1, 3.1, "fail")],
)  # fmt: skip
def test_regression_val_targets_off_trains_scale_at_the_split_thresholds(ratio, shift, status):
    from types import SimpleNamespace

    import torch
    from torch.utils.data import TensorDataset

    from engine.diagnosis.datastats import check_target_splits
    from engine.torchfree.ladder import InitSettings

    s = InitSettings()
    assert (s.split_scale_warn, s.split_scale_fail, s.split_shift_fail) == (2, 4, 3)
    base = torch.randn(256, generator=torch.Generator().manual_seed(1)).double()
    base = (base - base.mean()) / base.std()  # mean 0, spread 1 exactly
    ctx = SimpleNamespace(
        data=SimpleNamespace(
            train=TensorDataset(torch.zeros(256, 2), base.float()),
            val=TensorDataset(torch.zeros(256, 2), (base * ratio + shift).float()),
        ),
        preset={},
    )
    got = check_target_splits(ctx, "regression", s)
    assert got.status == status, got.detail
    assert check_target_splits(ctx, "classification", s) is None
