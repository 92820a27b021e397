"""The app's data side without a screen: decimation, smoothing, incremental histories, the
lineage tree, the bottleneck verdict, overrides parsing, the watcher."""

from __future__ import annotations

import math
import random
from array import array

import pytest

from cockpit.app import formatting as fmt
from cockpit.app.envelope import Envelope
from cockpit.app.history import RunHistory, debiased_ema
from cockpit.app.lineage import tree_order
from cockpit.app.messages import RunState
from cockpit.app.presets import discover_presets, parse_overrides, parse_stages
from cockpit.app.settings import SMOOTHING_STEPS, ViewSettings
from cockpit.app.verdict import bottleneck, mean_since
from cockpit.app.watcher import WorkspaceWatcher
from engine.torchfree.preset import PresetError
from engine.torchfree.runfolder import JsonlAppender, RunFolder, StepsAppender
from tests.app.workspaces import T0, RunSpec, loss_rows, write_run

# ---- the envelope ------------------------------------------------------------------------------


def test_envelope_keeps_every_extreme_and_bounds_the_points():
    rng = random.Random(0)
    ys = [rng.random() for _ in range(200_000)]
    ys[123_457] = 50.0  # one spike among 200k points
    ys[7] = -3.0
    env = Envelope(max_blocks=512)
    for start in range(0, len(ys), 999):  # arrives in odd-sized chunks, as a live run's do
        env.extend(array("d", range(start, min(start + 999, len(ys)))), ys[start : start + 999])
    xs, out = env.points(100)
    assert len(xs) <= 2 * 102
    assert max(out) == 50.0 and xs[out.index(50.0)] == 123_457
    assert min(out) == -3.0 and xs[out.index(-3.0)] == 7
    assert xs == sorted(xs)
    assert len(env.lo_y) < 512 and env.count == len(ys)


def test_envelope_of_a_short_series_is_the_series():
    env = Envelope()
    env.extend([1.0, 2.0, 3.0], [0.5, 0.25, 0.125])
    assert env.points(80) == ([1.0, 2.0, 3.0], [0.5, 0.25, 0.125])


def test_a_long_history_read_at_once_starts_at_its_block_size():
    env = Envelope(max_blocks=64)
    env.extend(array("d", range(10_000)), array("d", range(10_000)))
    assert 16 <= len(env.lo_y) <= 32
    _xs, ys = env.points(10)
    assert ys[0] == 0 and ys[-1] == 9_999


# ---- smoothing ---------------------------------------------------------------------------------


def test_debiased_ema_starts_at_the_first_value_and_continues_across_chunks():
    ys = [2.0, 2.0, 2.0, 0.0, 0.0]
    whole, _ = debiased_ema(ys, 0.9, (0.0, 0))
    assert whole[0] == pytest.approx(2.0)  # no pull towards zero at the start
    assert whole[2] == pytest.approx(2.0)
    head, state = debiased_ema(ys[:2], 0.9, (0.0, 0))
    tail, _ = debiased_ema(ys[2:], 0.9, state)
    assert list(head) + list(tail) == pytest.approx(list(whole))


def test_no_smoothing_is_the_raw_series():
    out, state = debiased_ema([3.0, 1.0], 0.0, (0.0, 0))
    assert list(out) == [3.0, 1.0] and state == (1.0, 2)


def test_smoothing_steps_walk_and_clamp():
    s = ViewSettings(smoothing=0.9)
    assert s.smoother(1).smoothing == 0.95
    assert s.smoother(-100).smoothing == SMOOTHING_STEPS[0]
    assert s.smoother(100).smoothing == SMOOTHING_STEPS[-1]


def test_markers_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("COCKPIT_MARKERS", "block")
    assert ViewSettings.from_env().plotext_marker == "hd"
    monkeypatch.setenv("COCKPIT_MARKERS", "nonsense")
    assert ViewSettings.from_env().marker == "braille"
    assert ViewSettings().next_marker().marker == "block"


# ---- histories ---------------------------------------------------------------------------------


def test_history_reads_only_new_records_and_keeps_stages_apart(workspace):
    folder = write_run(
        workspace,
        RunSpec(
            "r-1",
            status="running",
            stage_names=["overfit_one", "train"],
            steps=loss_rows(range(1, 101), 0),
        ),
    )
    history = RunHistory(folder, beta=0.9)
    assert history.poll() and history.loaded
    assert history.stages["overfit_one"].steps == 100
    assert history.latest_stage() == "overfit_one"
    assert not history.poll()  # nothing new: nothing read, nothing redrawn
    out = StepsAppender(folder.file("steps.bin"))
    out.append_many(loss_rows(range(1, 31), 1, val_every=3))
    out.write(b"\x00" * 20)  # half a record still being written
    assert history.poll()
    train = history.stages["train"]
    assert train.steps == 30 and len(train.val) == 10  # val loss only on steps with a val batch
    assert history.latest_stage() == "train"
    assert history._steps.offset == 130 * 72  # the half record waits for its other half


def test_history_evals_and_metric_names(workspace):
    folder = write_run(
        workspace,
        RunSpec(
            "r-2",
            stage_names=["train"],
            steps=loss_rows(range(1, 11), 0),
            evals=[
                {
                    "step": 10,
                    "stage": "train",
                    "val_loss": 0.5,
                    "accuracy": 0.8,
                    "macro_f1": 0.7,
                    "val_loss_se": 0.1,
                }
            ],
        ),
    )
    history = RunHistory(folder)
    history.poll()
    stage = history.stages["train"]
    assert stage.metric_names() == ["accuracy", "macro_f1"]
    assert stage.eval_series("val_loss") == ([10.0], [0.5])


def test_a_warm_fork_draws_its_parents_history_up_to_the_fork(workspace):
    write_run(
        workspace,
        RunSpec(
            "parent",
            stage_names=["generalize", "train"],
            steps=loss_rows(range(1, 51), 0) + loss_rows(range(1, 201), 1),
        ),
    )
    write_run(
        workspace,
        RunSpec(
            "child",
            stage_names=["train"],
            parent="parent",
            fork_step=120,
            steps=loss_rows(range(121, 161), 0),
        ),
    )
    write_run(
        workspace,
        RunSpec(
            "grandchild",
            stage_names=["train"],
            parent="child",
            fork_step=150,
            steps=loss_rows(range(151, 171), 0),
        ),
    )
    child = RunHistory(RunFolder(workspace / "child"))
    child.poll()
    stage = child.stages["train"]
    assert stage.fork_step == 120 and stage.steps == 40
    inherited = stage.inherited.train
    assert inherited.raw.points(1000)[0] == [float(s) for s in range(1, 121)]  # not generalize
    assert (inherited.first_x, inherited.last_x, len(inherited)) == (1, 120, 120)
    grand = RunHistory(RunFolder(workspace / "grandchild"))
    grand.poll()
    inherited = grand.stages["train"].inherited.train
    assert (inherited.first_x, inherited.last_x, len(inherited)) == (1, 150, 150)


def test_changing_the_smoothing_recomputes_the_smoothed_curves(workspace):
    folder = write_run(
        workspace, RunSpec("r-3", stage_names=["train"], steps=loss_rows(range(1, 301), 0))
    )
    history = RunHistory(folder, beta=0.0)
    history.poll()
    raw_last = history.stages["train"].train.smoothed_last()
    history.request_smoothing(0.99)
    assert history.poll()
    stage = history.stages["train"]
    assert stage.train.beta == 0.99
    assert stage.train.smoothed_last() != pytest.approx(raw_last)
    assert stage.train.raw.count == 300


# ---- the runs table's helpers --------------------------------------------------------------


def test_lineage_puts_forks_under_their_parents(lab):
    workspace, ids = lab
    watcher = WorkspaceWatcher(workspace, lambda m: None, clock=lambda: T0)
    watcher.scan()
    states = [t.state for t in watcher.trackers.values()]
    ordered = tree_order(states)
    names = [state.run_id for state, _ in ordered]
    assert names.index(ids["fork"]) == names.index(ids["live"]) + 1
    assert dict((s.run_id, p) for s, p in ordered)[ids["fork"]] == "└ "


def test_tree_prefixes_for_siblings_and_grandchildren():
    def state(run_id, parent=None, created=0.0):
        from engine.torchfree.runfolder import RunSnapshot

        return RunState(
            RunSnapshot(run_id, None, "p", "passed", parent=parent, created=created), None
        )

    runs = [state("a"), state("b", "a", 1), state("c", "a", 2), state("d", "b", 3)]
    assert [(s.run_id, p) for s, p in tree_order(runs)] == [
        ("a", ""),
        ("b", "├ "),
        ("d", "│ └ "),
        ("c", "└ "),
    ]


def test_watcher_sees_states_queue_places_and_data_wait(lab):
    workspace, ids = lab
    posted = []
    watcher = WorkspaceWatcher(workspace, posted.append, clock=lambda: T0)
    watcher.scan()
    states = {s.run_id: s for s in posted[-1].runs}
    assert len(states) == 7
    assert states[ids["live"]].snapshot.status == "running"  # its 'engine' (a sleep) is alive
    assert states[ids["queued"]].queue_position == 2
    assert states[ids["live"]].gpu_index == 0
    assert mean_since(states[ids["live"]].waits, T0 - 60) == pytest.approx(0.6, abs=0.05)
    assert fmt.is_pruned(states[ids["pruned"]].snapshot)
    posted.clear()
    watcher.scan()
    assert not posted  # nothing changed: nothing posted
    out = JsonlAppender(workspace / ids["live"] / "evals.jsonl")
    out.append({"step": 1750, "stage": "train", "accuracy": 0.97})
    watcher.scan()
    assert (
        posted and {s.run_id: s for s in posted[-1].runs}[ids["live"]].last_eval["accuracy"] == 0.97
    )


# ---- verdicts, formats, presets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("wait", "util", "start"),
    [
        (0.62, 38.0, "data-bound: GPU idle 62% of the time while the loop waits on the loader"),
        (0.05, 97.0, "compute-bound: GPU busy 97%"),
        (0.05, 30.0, "host-bound: GPU idle 70%"),
        (0.5, 95.0, "GPU busy 95% yet the loop waits"),
        (0.4, None, "data-bound: the loop waits on the loader 40%"),
        (0.01, None, "compute-bound"),
        (None, 50.0, "no telemetry"),
    ],
)
def test_bottleneck_verdicts(wait, util, start):
    assert bottleneck(wait, util).startswith(start)


def test_numbers_fit_their_cells():
    for x in (0.8243, 0.01234, 4.7e-4, 123456.0, 12.3456, 0.0):
        assert len(fmt.compact_number(x)) <= 6
    assert fmt.compact_number(math.nan) == "-"
    assert fmt.compact_count(1_234_567) == "1.23M"
    assert fmt.short_id("quickstart-20261130-005256-2134") == "quickstart·2134"
    assert fmt.short_id("odd-name") == "odd-name"
    assert fmt.metric("accuracy", 0.97) == "acc .97"


def test_overrides_box_parses_lines_and_names_the_bad_one():
    assert parse_overrides("optimizer.lr=3e-4\n\n# a comment\nbatch_size=64") == {
        "optimizer.lr": 3e-4,
        "batch_size": 64,
    }
    with pytest.raises(PresetError, match=r"line 2 \('oops'\): expected KEY=VALUE"):
        parse_overrides("optimizer.lr=1e-3\noops")
    assert parse_stages(" train ") == ["train"] and parse_stages("") is None
    with pytest.raises(PresetError, match="did you mean 'overfit_one'"):
        parse_stages("overfit_on")


def test_presets_are_found_in_presets_folders_and_in_runs(tmp_path, monkeypatch):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "a.yaml").write_text("name: a\n")
    workspace = tmp_path / "ws"
    (workspace / "presets").mkdir(parents=True)
    (workspace / "presets" / "b.yml").write_text("name: b\n")
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("name: c\n")
    folder = write_run(workspace, RunSpec("r-9"))
    request = folder.request()
    request["preset_path"] = str(elsewhere)
    from engine.torchfree.runfolder import write_json_atomic

    write_json_atomic(folder.file("run.json"), request)
    found = discover_presets(workspace, cwd=tmp_path)
    assert [(c.label, c.origin) for c in found] == [
        ("a", "./presets"),
        ("b", "workspace"),
        ("elsewhere", "used by r-9"),
    ]
