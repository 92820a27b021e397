"""What the watcher reads per tick, and how little: one scan then one poll of the watched
histories per tick; a live run's moving files are re-read without asking the OS about its
engine until the liveness check is due; only the files that moved are read again."""

from __future__ import annotations

import threading

import pytest

from cockpit.app import watcher as watcher_module
from cockpit.app.history import RunHistory
from cockpit.app.messages import HistoryUpdated, RunsUpdated
from cockpit.app.watcher import FOCUSED_TICK, LIVENESS_S, RunTracker, WorkspaceWatcher
from engine.torchfree import runfolder
from engine.torchfree.runfolder import JsonlAppender, RunFolder, StepsAppender
from tests.app.workspaces import T0, RunSpec, loss_rows, write_run

LIVE_ID = "live-20300101-000100-bbbb"


@pytest.fixture
def live(tmp_path, sleeper) -> RunFolder:
    return write_run(
        tmp_path,
        RunSpec(
            LIVE_ID,
            status="running",
            current_stage="train",
            stage_names=["train"],
            steps=loss_rows(range(1, 101), 0),
            evals=[{"step": 100, "stage": "train", "val_loss": 0.5, "accuracy": 0.8}],
            telemetry=[{"t": T0 - 1, "cpu": 50.0, "data_wait": 0.25, "gpu": {"util": 40.0}}],
            engine_pid=sleeper,
        ),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def counted(monkeypatch):
    """Every question to the OS about an engine, and every read of a run's last eval."""
    calls = {"alive": 0, "last_eval": 0}
    real_alive, real_eval = runfolder.process_alive, RunFolder.last_eval

    def alive(proc):
        calls["alive"] += 1
        return real_alive(proc)

    def last_eval(self):
        calls["last_eval"] += 1
        return real_eval(self)

    monkeypatch.setattr(runfolder, "process_alive", alive)
    monkeypatch.setattr(RunFolder, "last_eval", last_eval)
    clock = Clock()
    monkeypatch.setattr(watcher_module.time, "monotonic", clock)
    return calls, clock


def append_steps(folder: RunFolder, first: int, n: int = 5) -> None:
    out = StepsAppender(folder.file("steps.bin"))
    out.append_many(loss_rows(range(first, first + n), 0))
    out.close()


def test_moving_files_are_read_without_asking_the_os_until_the_check_is_due(live, counted):
    calls, clock = counted
    tracker = RunTracker(live)
    assert tracker.poll(T0)  # the first read asks
    assert calls["alive"] == 1 and tracker.state.snapshot.status == "running"
    for i in range(4):  # the engine writes steps: it lives; no question for LIVENESS_S
        clock.now += LIVENESS_S / 5
        append_steps(live, 101 + 5 * i)
        assert tracker.poll(T0)
        assert tracker.state.snapshot.step == 105 + 5 * i
    assert calls["alive"] == 1
    clock.now += LIVENESS_S / 5 + 0.01  # due: asked again, moving files or not
    append_steps(live, 121)
    tracker.poll(T0)
    assert calls["alive"] == 2


def test_an_engine_that_died_is_seen_at_the_next_check_and_asked_about_at_every_read(
    live, counted, monkeypatch
):
    calls, clock = counted
    tracker = RunTracker(live)
    tracker.poll(T0)
    monkeypatch.setattr(
        runfolder,
        "process_alive",
        lambda proc: calls.__setitem__("alive", calls["alive"] + 1) or False,
    )
    clock.now += 1.0
    append_steps(live, 101)  # written just before it died: still assumed alive
    tracker.poll(T0)
    assert tracker.state.snapshot.status == "running"
    clock.now += LIVENESS_S  # files still: the due check finds it gone
    assert tracker.poll(T0)
    assert tracker.state.snapshot.status == "error"
    assert "gone without a word" in tracker.state.snapshot.reason
    asked = calls["alive"]
    clock.now += 0.5
    append_steps(live, 106)  # something writes into a dead run's folder: asked again
    tracker.poll(T0)
    assert calls["alive"] == asked + 1 and tracker.state.snapshot.status == "error"


def test_only_what_moved_is_read_again(live, counted):
    calls, clock = counted
    tracker = RunTracker(live)
    tracker.poll(T0)
    assert calls["last_eval"] == 1
    clock.now += 0.5
    append_steps(live, 101)
    tracker.poll(T0)
    assert calls["last_eval"] == 1  # evals.jsonl did not move
    out = JsonlAppender(live.file("evals.jsonl"))
    out.append({"step": 105, "stage": "train", "val_loss": 0.4, "accuracy": 0.9})
    out.close()
    clock.now += 0.5
    assert tracker.poll(T0)
    assert calls["last_eval"] == 2
    assert tracker.state.last_eval["accuracy"] == 0.9 and tracker.state.snapshot.metric == 0.9
    clock.now += 0.5
    assert not tracker.poll(T0)  # nothing moved, nothing due: nothing read
    assert calls["last_eval"] == 2


def test_the_trackers_snapshot_is_the_one_the_folder_reads_itself(live):
    tracker = RunTracker(live)
    tracker.poll(T0)
    out = JsonlAppender(live.file("telemetry.jsonl"))
    out.append({"t": T0, "cpu": 50.0, "data_wait": 0.5, "gpu": {"util": 77.0}})
    out.close()
    append_steps(live, 101)
    tracker.poll(T0)
    assert tracker.state.snapshot.to_json() == live.snapshot().to_json()
    assert tracker.state.snapshot.gpu_util == 77.0
    assert tracker.state.last_eval == live.last_eval()


def test_a_tick_is_a_scan_then_a_poll_of_the_watched_histories(live, tmp_path, monkeypatch):
    posted: list = []
    scans = threading.Event()
    watcher = WorkspaceWatcher(tmp_path, posted.append, interval=0.02)
    history = RunHistory(live)
    watcher.watch(history)
    order: list[str] = []
    real_scan, real_poll = watcher.scan, history.poll

    def scan():
        order.append("scan")
        real_scan()
        if order.count("scan") >= 4:
            scans.set()

    def poll():
        order.append("poll")
        return real_poll()

    monkeypatch.setattr(watcher, "scan", scan)
    monkeypatch.setattr(history, "poll", poll)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    assert scans.wait(10)
    watcher.stop()
    thread.join(10)
    pairs = order[: 2 * (len(order) // 2)]
    assert pairs == ["scan", "poll"] * (len(pairs) // 2)  # one poll per scan, right after it
    kinds = [type(m) for m in posted[:2]]
    assert kinds == [RunsUpdated, HistoryUpdated]  # the runs, then the history, in one tick


def test_a_view_of_one_run_ticks_a_little_faster_than_the_list(tmp_path):
    watcher = WorkspaceWatcher(tmp_path, lambda m: None, interval=0.5)
    assert watcher.tick_s() == 1.0
    watcher.set_focus(frozenset(["a"]))
    assert watcher.tick_s() == pytest.approx(FOCUSED_TICK) and FOCUSED_TICK < 1.0
    watcher.set_focus(None)
    assert watcher.tick_s() == 1.0


def test_the_runs_list_shows_moving_numbers_every_two_seconds_and_a_new_status_at_once(lab):
    """nvitop's pace for numbers that move on their own (a step, a loss); what changed in
    kind (a status, a stage, a verdict) is not held back."""
    import asyncio
    import dataclasses
    import time

    from cockpit.app.screens.runs import NUMBERS_WAIT_S, RunsScreen
    from cockpit.app.widgets.plot import TICK_FOLD_S
    from tests.app.conftest import make_app, settled

    workspace, ids = lab

    def with_live(runs, **changes):
        return tuple(
            dataclasses.replace(r, snapshot=dataclasses.replace(r.snapshot, **changes))
            if r.run_id == ids["live"]
            else r
            for r in runs
        )

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, 7)
            screen = app.screen
            assert isinstance(screen, RunsScreen)
            app.watcher.stop()  # the test posts the news itself
            await pilot.pause(0.3)
            screen.cadence.now()  # a pass just happened: the next waits for the cadence
            runs = app.runs
            step = runs[[r.run_id for r in runs].index(ids["live"])].snapshot.step
            screen.runs_changed(with_live(runs, step=step + 5))
            assert screen.cadence._pending is not None
            assert screen.cadence._due - time.monotonic() > NUMBERS_WAIT_S - 0.2  # numbers: 2 s
            screen.runs_changed(with_live(runs, step=step + 10, status="failed"))
            assert screen.cadence._due - time.monotonic() <= max(
                TICK_FOLD_S, screen.cadence.interval()
            )  # a new status: as soon as the cadence allows

    asyncio.run(go())
