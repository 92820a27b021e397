"""Every key of Contract 4 (and the views' own keys) driven through Pilot, on fixture
workspaces written with the run folder's writers."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import psutil
from rich.console import Console
from textual.widgets import Checkbox, Input, RichLog, Static, TabbedContent

from cockpit.app.screens.compare import CompareScreen, OverlayPlot
from cockpit.app.screens.confirm_kill import ConfirmKill
from cockpit.app.screens.fork import ForkDialog
from cockpit.app.screens.help import HelpScreen, help_table
from cockpit.app.screens.new_run import NewRunDialog
from cockpit.app.screens.run import RunScreen
from cockpit.app.screens.runs import RunsScreen
from cockpit.app.widgets.curves import CurvesView, LossPlot
from cockpit.app.widgets.details import RunDetails
from cockpit.app.widgets.gpu_panel import DevicePanel
from cockpit.app.widgets.runs_table import RunsTable
from cockpit.app.widgets.too_small import TooSmall
from tests.app.conftest import histories_loaded, make_app, settled, wait_until
from tests.app.workspaces import PRESET_YAML, T0, RunSpec, loss_rows, start_sleeper, write_run

RUNS = 7
TREE = ["passed", "failed", "live", "fork", "pruned", "crashed", "queued"]
"""The lab's runs in the table's lineage order (roots by age, the fork under its parent)."""


def text(widget: Static) -> str:
    return str(widget.render())


def table_of(app) -> RunsTable:
    return app.screen.query_one(RunsTable)


async def select(pilot, role: str) -> None:
    """Move the cursor to one of the lab's runs with j."""
    table = table_of(pilot.app)
    while table.cursor_row < TREE.index(role):
        await pilot.press("j")
    while table.cursor_row > TREE.index(role):
        await pilot.press("k")


def test_j_k_and_arrows_move_and_the_details_follow(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            table = table_of(app)
            assert table.selected_key() == ids["passed"]
            await pilot.press("j")
            assert table.selected_key() == ids["failed"]
            await pilot.press("down", "down")
            assert table.selected_key() == ids["fork"]
            await pilot.press("k")
            assert table.selected_key() == ids["live"]
            await pilot.press("up")
            assert table.selected_key() == ids["failed"]
            details = text(app.screen.query_one(RunDetails))
            assert ids["failed"] in details and "loss stuck at 1.38" in details

    asyncio.run(go())


def test_enter_opens_the_run_and_escape_goes_back(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "live")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            curves = app.screen.query_one(CurvesView)
            assert app.screen.run_id == ids["live"] and curves.stage == "train"
            assert app.screen.query_one(LossPlot).builds >= 1
            assert "1\u2009500 steps" in text(app.screen.query_one("#stage-bar", Static))
            await pilot.press("escape")
            await wait_until(
                pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list"
            )

    asyncio.run(go())


def test_n_opens_the_preset_picker_and_escape_cancels(lab):
    workspace, _ = lab
    Path("presets").mkdir()
    Path("presets/blobs.yaml").write_text(PRESET_YAML)
    Path("presets/other.yaml").write_text(PRESET_YAML)

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, NewRunDialog), what="the dialog")
            assert [c.label for c in app.screen.choices] == ["blobs", "other"]
            picker = app.screen.query_one("#presets")
            assert picker.highlighted == 0
            await pilot.press("j")  # Contract 4: j/k move in the picker too
            assert picker.highlighted == 1
            await pilot.press("k")
            assert picker.highlighted == 0
            await pilot.press("escape")
            await wait_until(
                pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list"
            )
            await pilot.pause(0.3)
            assert len(app.runs) == RUNS and len(list(workspace.iterdir())) == RUNS

    asyncio.run(go())


def test_bad_overrides_show_the_preset_error_sentence_in_the_dialog(lab):
    workspace, _ = lab
    Path("presets").mkdir()
    Path("presets/blobs.yaml").write_text(PRESET_YAML)

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, NewRunDialog), what="the dialog")
            dialog = app.screen
            await pilot.press("tab", *"optimzer.lr=1e-3", "ctrl+s")
            error = text(dialog.query_one("#error", Static))
            assert "'optimzer' is not a preset key — did you mean 'optimizer'?" in error
            assert "Traceback" not in error and app.screen is dialog
            dialog.query_one("#overrides").text = "no equals sign"
            await pilot.press("ctrl+s")
            assert "line 1 ('no equals sign'): expected KEY=VALUE" in text(
                dialog.query_one("#error", Static)
            )
            dialog.query_one("#overrides").text = ""
            dialog.query_one("#stages", Input).value = "overfit_on"
            await pilot.press("ctrl+s")
            assert "did you mean 'overfit_one'" in text(dialog.query_one("#error", Static))
            assert len(list(workspace.iterdir())) == RUNS  # nothing was started

    asyncio.run(go())


def test_f_forks_the_selected_run_with_a_warm_start_toggle(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "live")
            await pilot.press("f")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ForkDialog), what="the fork dialog"
            )
            dialog = app.screen
            assert dialog.parent_folder.run_id == ids["live"]
            warm = dialog.query_one("#warm", Checkbox)
            assert warm.value and not warm.disabled and "step 1\u2009500" in str(warm.label)
            await pilot.press(*"batch_size=-3", "ctrl+s")
            assert "batch_size must be" in text(dialog.query_one("#error", Static))
            await pilot.press("escape")
            await wait_until(
                pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list"
            )
            await select(pilot, "failed")  # no checkpoint: no warm start to offer
            await pilot.press("f")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ForkDialog), what="the fork dialog"
            )
            warm = app.screen.query_one("#warm", Checkbox)
            assert warm.disabled and not warm.value
            await pilot.press("escape")
            assert len(list(workspace.iterdir())) == RUNS

    asyncio.run(go())


def test_x_asks_n_keeps_y_kills_the_whole_run(lab):
    workspace, _ = lab
    victim = start_sleeper()
    write_run(
        workspace,
        RunSpec(
            "victim-20300101-000700-9999",
            status="running",
            created=T0 - 10,
            stage_names=["train"],
            current_stage="train",
            steps=loss_rows(range(1, 50), 0),
            engine_pid=victim.pid,
        ),
    )

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS + 1)
            table = table_of(app)
            while table.selected_key() != "victim-20300101-000700-9999":
                await pilot.press("j")
            await pilot.press("x")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ConfirmKill), what="the question"
            )
            await pilot.press("n")
            await wait_until(
                pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list"
            )
            assert victim.poll() is None  # n keeps it running
            await pilot.press("x")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ConfirmKill), what="the question"
            )
            await pilot.press("y")
            await wait_until(pilot, lambda: victim.poll() is not None, what="the engine to die")
            await wait_until(
                pilot,
                lambda: app.run_state(table.selected_key()).snapshot.status == "killed",
                what="the run marked killed",
            )
            await pilot.press("x")  # a dead run: nothing to ask
            await pilot.pause(0.2)
            assert isinstance(app.screen, RunsScreen)

    try:
        asyncio.run(go())
    finally:
        victim.kill()
        victim.wait()


def test_x_on_a_run_started_on_another_machine_says_where_to_stop_it(lab):
    # a workspace on a shared file system: the run trains on gpu-node-7, the app runs here
    from engine.torchfree.runfolder import write_json_atomic

    workspace, _ = lab
    remote = "remote-20300101-000800-9998"
    folder = write_run(
        workspace,
        RunSpec(
            remote,
            status="running",
            created=T0 - 10,
            stage_names=["train"],
            current_stage="train",
            steps=loss_rows(range(1, 50), 0),
        ),
    )
    write_json_atomic(
        folder.file("proc.json"), {"pid": 4242, "create_time": T0 - 10, "host": "gpu-node-7"}
    )

    async def go():
        app = make_app(workspace)
        said: list[str] = []
        app.notify = lambda message, **kw: said.append(str(message))
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS + 1)
            table = table_of(app)
            while table.selected_key() != remote:
                await pilot.press("j")
            await pilot.press("x")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ConfirmKill), what="the question"
            )
            await pilot.press("y")
            await wait_until(pilot, lambda: said, what="a word about the kill")
            assert "runs on gpu-node-7" in said[-1] and "ssh gpu-node-7 cockpit kill" in said[-1]
            assert not app.stopping  # not shown as stopping: nothing here stops it
            assert folder.summary()["status"] == "running"  # not marked killed

    asyncio.run(go())


def test_space_marks_and_unmarks(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("space")
            assert app.marked == {ids["passed"]}
            assert table_of(app).get_cell(ids["passed"], "run").plain.startswith("◆")
            await pilot.press("j", "space")
            assert app.marked == {ids["passed"], ids["failed"]}
            await pilot.press("space")
            assert app.marked == {ids["passed"]}
            assert table_of(app).get_cell(ids["failed"], "run").plain.startswith(" ")

    asyncio.run(go())


def test_l_toggles_the_log_scale_of_the_curves(lab):
    workspace, _ = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "live")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            plot = app.screen.query_one(LossPlot)
            builds = plot.builds
            await pilot.press("l")
            await pilot.pause(0.1)
            assert app.settings.log_scale and plot.settings.log_scale and plot.builds > builds
            assert "0.1" in plot.text()  # a log axis labels its decades
            await pilot.press("l")
            assert not app.settings.log_scale

    asyncio.run(go())


def test_question_mark_lists_every_key(lab):
    workspace, _ = lab
    console = Console(width=120, record=True)
    console.print(help_table())
    listed = console.export_text()
    for key, what in [
        ("j k ↑ ↓", "move"),
        ("enter", "open"),
        ("n", "new run"),
        ("f", "fork"),
        ("x", "kill"),
        ("y", "yes, kill it"),
        ("space", "mark"),
        ("l", "log scale"),
        ("?", "help"),
        ("q", "quit"),
        ("ctrl+s", "start"),
        ("esc", "cancel"),
    ]:
        assert re.search(rf"(^|\s){re.escape(key)}\s+{re.escape(what)}", listed, re.M), key

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("question_mark")
            await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")
            await pilot.press("escape")
            await wait_until(
                pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list"
            )

    asyncio.run(go())


def test_q_quits_and_leaves_runs_running(lab, sleeper):
    workspace, _ = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("q")
            await pilot.pause(0.2)
            assert not app.is_running

    asyncio.run(go())
    assert psutil.Process(sleeper).is_running()  # the live run's engine stands


def test_slash_filters_and_escape_clears(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("slash", *"prun")
            assert table_of(app).row_count == 1 and table_of(app).selected_key() == ids["pruned"]
            await pilot.press("enter")  # keeps the filter, back to the table
            assert table_of(app).has_focus and table_of(app).row_count == 1
            await pilot.press("escape")
            assert table_of(app).row_count == RUNS
            await pilot.press("slash", *"lr-sweep running")
            assert [table_of(app).selected_key()] == [ids["live"]] and table_of(app).row_count == 1

    asyncio.run(go())


def test_s_sorts_and_shift_s_reverses(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("s")  # by status: running first
            assert table_of(app).coordinate_to_cell_key((0, 0)).row_key.value == ids["live"]
            await pilot.press("s", "s")  # by train loss: lowest first
            first = table_of(app).coordinate_to_cell_key((0, 0)).row_key.value
            assert first in (ids["live"], ids["fork"])
            await pilot.press("S")
            assert (
                table_of(app).coordinate_to_cell_key((0, 0)).row_key.value == ids["passed"]
            )  # 1.297, the highest

    asyncio.run(go())


def test_c_compares_marked_runs(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(120, 36)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "live")
            await pilot.press("space", "j", "space", "c")
            await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
            screen = app.screen
            assert screen.group == "(marked)" and screen.table.row_count == 2
            await histories_loaded(pilot)
            plot = screen.query_one(OverlayPlot)
            assert [h.run_id for h in plot.histories] == [ids["live"], ids["fork"]]
            legend = text(screen.query_one("#overlay-legend", Static))
            assert "blobs·bbbb" in legend and "blobs·dddd" in legend
            assert screen.metric == "accuracy"  # the main metric ranks first
            await pilot.press("r")
            assert screen.metric == "val_loss"
            await pilot.press("g")
            assert screen.group == "(all runs)"
            await pilot.press("g")
            assert screen.group == "lr-sweep" and screen.table.row_count == 4
            overrides = [
                screen.table.get_cell(ids[r], "changes").plain for r in ("live", "fork", "pruned")
            ]
            assert overrides == ["optimizer.lr=0.001", "optimizer.lr=0.0003", "optimizer.lr=0.1"]
            await pilot.press("v")
            assert plot.kind == "val"
            await pilot.press("escape")
            await wait_until(
                pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list"
            )

    asyncio.run(go())


def test_run_view_stage_smoothing_tab_and_marker_keys(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await pilot.press("enter")  # the passed run: a whole ladder
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            curves = app.screen.query_one(CurvesView)
            assert curves.stage == "speed"  # the latest stage that logged steps
            await pilot.press("left_square_bracket")
            assert curves.stage == "generalize" and not curves.follow_latest
            await pilot.press("left_square_bracket", "left_square_bracket", "left_square_bracket")
            assert curves.stage == "overfit_one"
            await pilot.press("right_square_bracket")
            assert curves.stage == "overfit_few"
            history = app._histories[ids["passed"]]
            await pilot.press("plus")
            assert app.settings.smoothing == 0.95
            await wait_until(pilot, lambda: history.beta == 0.95, what="the history to re-smooth")
            await pilot.press("minus", "minus")
            assert app.settings.smoothing == 0.8
            await pilot.press("b")
            assert (
                app.settings.marker == "block"
                and curves.query_one(LossPlot).settings.marker == "block"
            )
            tabs = app.screen.query_one(TabbedContent)
            for key, tab in (("2", "ladder"), ("3", "log"), ("4", "preset"), ("1", "curves")):
                await pilot.press(key)
                assert tabs.active == tab

    asyncio.run(go())


def test_the_log_tab_shows_a_crash_traceback_and_the_ladder_its_reason(lab):
    workspace, _ = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "crashed")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await pilot.press("3")
            log = app.screen.query_one(RichLog)
            await wait_until(
                pilot,
                lambda: any("RuntimeError: mat1" in line.text for line in log.lines),
                what="the traceback",
            )
            assert any("Traceback (most recent call last)" in line.text for line in log.lines)
            header = text(app.screen.query_one("#run-header", Static))
            assert "error: init: crashed: RuntimeError" in header

    asyncio.run(go())


def test_pruned_and_queued_runs_say_why(lab):
    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            table = table_of(app)
            assert table.get_cell(ids["queued"], "status").plain == "◌ queued #2"
            assert table.get_cell(ids["pruned"], "status").plain == "✂ pruned"
            await select(pilot, "pruned")
            details = text(app.screen.query_one(RunDetails))
            assert (
                "pruned: val_loss 0.91 at step 500 is worse than the median 0.42 of 2 peers"
                in details
            )
            await select(pilot, "queued")
            assert "queued #2 · 2nd in line for a CPU slot" in text(
                app.screen.query_one(RunDetails)
            )

    asyncio.run(go())


def test_gpu_panel_verdict_and_g_cycles_what_it_draws(lab):
    workspace, _ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            panel = app.screen.query_one(DevicePanel)
            verdicts = text(panel.query_one("#device-verdicts", Static))
            assert "blobs·bbbb: data-bound: GPU idle" in verdicts
            assert "while the loop waits on the loader" in verdicts
            assert "1 other process" in text(panel.query_one("#device-legend", Static))
            await pilot.press("g")
            assert panel.plot.view == "memory"
            await pilot.press("g", "g")
            assert panel.plot.view == "util"

    asyncio.run(go())


def test_without_a_gpu_the_panel_says_so_and_shows_the_cpu(lab):
    workspace, _ = lab

    async def go():
        app = make_app(workspace, gpu=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            panel = app.screen.query_one(DevicePanel)
            title = text(panel.query_one("#device-title", Static))
            # what the plot shows before why: a narrow panel cuts the reason, not the CPU figure
            assert "· CPU load instead · CPU " in title
            assert title.index("CPU load instead") < title.index("no GPU here (NVML Shared")
            assert "CPU load" in text(panel.query_one("#device-legend", Static))

    asyncio.run(go())


def test_a_small_terminal_gets_a_notice(lab):
    workspace, _ = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(70, 20)) as pilot:
            await settled(pilot, RUNS)
            notice = app.screen.query_one(TooSmall)
            assert notice.display and "at least 80×24" in str(notice.render())
            assert "this one is 70×20" in str(notice.render())
            await pilot.resize_terminal(80, 24)
            await pilot.pause(0.2)
            assert not notice.display

    asyncio.run(go())


def test_plot_redraws_are_coalesced(lab):
    workspace, _ = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "live")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            plot = app.screen.query_one(LossPlot)
            await wait_until(pilot, lambda: plot.builds > 0, what="the first build")
            builds, skipped = plot.builds, plot.skipped
            for _ in range(50):  # a burst of requests, nothing new to show: one look, no build
                plot.request_redraw()
            await wait_until(pilot, lambda: plot.skipped > skipped, what="the look")
            assert plot.builds == builds
            plot._visible = "something else was drawn"
            for _ in range(50):  # a burst that changes what is visible: coalesced
                plot.request_redraw()
            await wait_until(pilot, lambda: plot.builds > builds, what="the rebuild")
            await pilot.pause(0.8)
            assert 1 <= plot.builds - builds <= 2

    asyncio.run(go())
