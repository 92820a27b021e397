"""Snapshots of the main screens on the fixture workspace (frozen clock, fake GPU).

After a deliberate change of the look: ``pytest tests/app/test_snapshots.py --snapshot-update``
and review the SVGs (the failure report shows both sides)."""

from __future__ import annotations

from tests.app.conftest import histories_loaded, make_app, settled, wait_until

RUNS = 7


async def ready(pilot) -> None:
    await settled(pilot, RUNS)


async def in_run_view(pilot, downs: int, tab: str | None = None) -> None:
    from cockpit.app.screens.run import RunScreen

    await settled(pilot, RUNS)
    for _ in range(downs):
        await pilot.press("j")
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, RunScreen), what="the run view")
    await histories_loaded(pilot)
    if tab:
        await pilot.press(tab)
        await pilot.pause(0.3)


def test_runs_screen_80x24(lab, snap_compare):
    workspace, _ = lab
    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=ready)


def test_runs_screen_wide_with_preview(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        await settled(pilot, RUNS)
        await pilot.press("j", "j")
        await wait_until(pilot, lambda: pilot.app._histories, what="the preview's history")
        await histories_loaded(pilot)

    assert snap_compare(make_app(workspace), terminal_size=(160, 48), run_before=before)


def test_run_view_curves_of_a_warm_fork(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        await in_run_view(pilot, downs=3)

    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=before)


def test_run_view_log_scale(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        await in_run_view(pilot, downs=2)
        await pilot.press("l")
        await pilot.pause(0.3)

    assert snap_compare(make_app(workspace), terminal_size=(100, 30), run_before=before)


def test_run_view_ladder_of_a_failed_run(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        await in_run_view(pilot, downs=1, tab="2")

    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=before)


def test_compare_view(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        from cockpit.app.screens.compare import CompareScreen

        await settled(pilot, RUNS)
        await pilot.press("j", "j", "space", "j", "space", "c")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, CompareScreen), what="compare")
        await pilot.press("g", "g")  # the lr-sweep group
        await histories_loaded(pilot)

    assert snap_compare(make_app(workspace), terminal_size=(100, 30), run_before=before)


def test_fork_dialog(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        from cockpit.app.screens.fork import ForkDialog

        await settled(pilot, RUNS)
        await pilot.press("j", "j", "f")
        await wait_until(
            pilot, lambda: isinstance(pilot.app.screen, ForkDialog), what="the fork dialog"
        )
        await pilot.press(*"optimizer.lr=3e-3")
        await pilot.pause(0.2)

    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=before)


def test_kill_confirmation(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        from cockpit.app.screens.confirm_kill import ConfirmKill

        await settled(pilot, RUNS)
        await pilot.press("j", "j", "x")
        await wait_until(
            pilot, lambda: isinstance(pilot.app.screen, ConfirmKill), what="the question"
        )
        await pilot.pause(0.2)

    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=before)


def test_help(lab, snap_compare):
    workspace, _ = lab

    async def before(pilot):
        await settled(pilot, RUNS)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(make_app(workspace), terminal_size=(100, 40), run_before=before)


def test_too_small(lab, snap_compare):
    workspace, _ = lab
    assert snap_compare(make_app(workspace), terminal_size=(60, 16), run_before=ready)
