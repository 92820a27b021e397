"""The app against real engines: runs made by `cockpit run`, a launch from the `n` dialog, a
warm fork from `f`, a kill from `x`, and a live run's curves growing while we watch."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import psutil
import pytest
from textual.widgets import Checkbox, Input, TextArea

from cockpit.app.screens.confirm_kill import ConfirmKill
from cockpit.app.screens.fork import ForkDialog
from cockpit.app.screens.new_run import NewRunDialog
from cockpit.app.screens.run import RunScreen
from cockpit.app.widgets.curves import CurvesView, MetricPlot
from cockpit.app.widgets.runs_table import RunsTable
from cockpit.launch import engine_process
from engine.torchfree.runfolder import FINAL, RunFolder, iter_runs
from tests.app.conftest import histories_loaded, make_app, wait_until
from tests.conftest import ZOO, cockpit

pytestmark = pytest.mark.slow


def only_run(workspace: Path) -> RunFolder:
    (folder,) = list(iter_runs(workspace))
    return folder


def select_run(app, run_id: str) -> None:
    table = app.screen.query_one(RunsTable)
    table.move_cursor(row=table._row_keys.index(run_id))


def test_a_real_runs_curves_then_a_warm_fork_that_continues_them(tmp_path):
    """What a person does: look at a finished run's curves, fork it with another learning
    rate warm from its checkpoint, and watch the child continue the parent's curve."""
    workspace = tmp_path / "runs"
    done = cockpit(
        "run", str(ZOO / "blobs.yaml"), "--stages", "train", workspace=workspace, timeout=120
    )
    assert done.returncode == 0, done.stderr
    parent = only_run(workspace)  # 60 steps, checkpoints at 30 and 60, evals every 30

    async def go():
        app = make_app(workspace, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: len(app.runs) == 1, what="the run")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            stage = app.screen.query_one(CurvesView).current_stage()
            assert stage.name == "train" and stage.steps == 60 and len(stage.val) == 60
            assert {"accuracy", "macro_f1"} <= set(stage.metric_names())
            assert app.screen.query_one(MetricPlot).display
            await pilot.press("escape", "f")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ForkDialog), what="the fork dialog"
            )
            assert app.screen.query_one("#warm", Checkbox).value
            app.screen.query_one("#overrides", TextArea).text = "optimizer.lr=0.003"
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: len(app.runs) == 2, what="the fork")
            child = next(r for r in app.runs if r.run_id != parent.run_id)
            assert child.snapshot.parent == parent.run_id and child.snapshot.fork_step == 60
            assert child.snapshot.overrides == {"optimizer.lr": 0.003}
            await wait_until(
                pilot,
                lambda: app.run_state(child.run_id).snapshot.status in FINAL,
                timeout=60,
                what="the fork to finish",
            )
            assert app.run_state(child.run_id).snapshot.status == "passed"
            select_run(app, child.run_id)
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            stage = app.screen.query_one(CurvesView).current_stage()
            assert stage.fork_step == 60
            assert stage.inherited.train.raw.points(1000)[0] == [float(s) for s in range(1, 61)]
            assert stage.train.first_x == 61  # the child continues the parent's step count

    asyncio.run(go())


def test_n_launches_a_preset_that_runs_on_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ZOO, tmp_path / "presets")  # blobs.yaml and the zoo.py it imports
    workspace = tmp_path / "runs"

    async def go():
        app = make_app(workspace, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.samples, what="the app")
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, NewRunDialog), what="the dialog")
            dialog = app.screen
            assert [c.label for c in dialog.choices] == ["blobs"]
            dialog.query_one("#overrides", TextArea).text = "optimizer.lr=0.02\n# a comment"
            dialog.query_one("#stages", Input).value = "overfit_one"
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: len(app.runs) == 1, what="the new run")
            engine = engine_process(RunFolder(app.runs[0].snapshot.path))
            if engine is not None:  # still going: it leads a session of its own, apart from ours
                assert os.getsid(engine.pid) == engine.pid != os.getsid(0)
            await wait_until(
                pilot,
                lambda: app.runs[0].snapshot.status in FINAL,
                timeout=60,
                what="the run to finish",
            )
            snapshot = app.runs[0].snapshot
            assert snapshot.status == "passed", snapshot.reason
            assert snapshot.overrides == {"optimizer.lr": 0.02}
            assert [name for name, _ in snapshot.verdicts] == ["overfit_one"]

    asyncio.run(go())


def test_x_kills_a_live_engine_and_a_second_app_sees_it_live(tmp_path):
    workspace = tmp_path / "runs"
    started = cockpit(
        "run",
        str(ZOO / "blobs.yaml"),
        "--stages",
        "train",
        "--set",
        "train.steps=1000000",
        "--detach",
        workspace=workspace,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    folder = only_run(workspace)
    engine = engine_process(folder)
    assert engine is not None

    async def watch_then_kill():
        app = make_app(workspace, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(
                pilot,
                lambda: app.runs and app.runs[0].snapshot.step > 0,
                timeout=60,
                what="the first steps",
            )
            first = app.runs[0].snapshot.step
            await wait_until(pilot, lambda: app.runs[0].snapshot.step > first, what="more steps")
            await pilot.press("x")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ConfirmKill), what="the question"
            )
            await pilot.press("y")
            await wait_until(
                pilot,
                lambda: app.runs[0].snapshot.status == "killed",
                timeout=30,
                what="the run killed",
            )

    try:
        asyncio.run(watch_then_kill())
        assert not psutil.pid_exists(engine.pid) or engine.status() == psutil.STATUS_ZOMBIE
        assert folder.summary()["status"] == "killed"
        assert len(folder.steps()) > 0  # its data stays
    finally:
        if engine.is_running():
            engine.kill()
