"""One run: its curves, its ladder, its log and its preset."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Footer, TabbedContent, TabPane

from cockpit.app import keys
from cockpit.app.formatting import count, display_status, status_text
from cockpit.app.messages import RunState
from cockpit.app.screens.base import CockpitScreen
from cockpit.app.settings import ViewSettings
from cockpit.app.widgets.batch_view import BatchView
from cockpit.app.widgets.curves import CurvesView
from cockpit.app.widgets.details import lineage_text, reason_text
from cockpit.app.widgets.ladder import LadderView
from cockpit.app.widgets.live_text import LiveText
from cockpit.app.widgets.log_view import LogView
from cockpit.app.widgets.plot import TICK_FOLD_S, Cadence, redraw_interval
from cockpit.app.widgets.preset_view import PresetView
from cockpit.app.widgets.runs_table import queue_places
from engine.torchfree.runfolder import RunFolder


def header_text(state: RunState, runs: tuple[RunState, ...]) -> Text:
    s = state.snapshot
    text = Text()
    text += status_text(display_status(s))
    text.append(f"  {s.run_id}", style="bold")
    text.append(f" · {s.preset}", style="dim")
    if s.device:
        text.append(f" · {s.device}", style="dim")
    if s.step:
        text.append(f" · step {count(s.step)}", style="dim")
    text.append("\n")
    text += reason_text(state, queue_places(runs).get(s.run_id))
    lineage = lineage_text(state, runs)
    if lineage:
        text.append("  ")
        text += lineage
    return text


class RunScreen(CockpitScreen):
    """Tabs: curves (1), ladder (2), log (3), preset (4), batch (5)."""

    BINDINGS = keys.RUN_VIEW

    def __init__(self, run_id: str, folder: RunFolder) -> None:
        super().__init__()
        self.run_id = run_id
        self.folder = folder
        self._shown_summary: tuple = ()
        self._news: set[str] = set()
        """What arrived since the view last showed it: "runs" (the header), "history"."""
        self.cadence = Cadence(self, self._show_news, lambda: redraw_interval(self.app))
        """New steps and the header's numbers are shown together, at most every 0.75 s:
        one repaint instead of one per message (the histories are polled four times a
        second, the runs once), and a new point is still on screen within a second."""

    def compose_body(self) -> ComposeResult:
        yield LiveText(id="run-header")
        with TabbedContent(initial="curves"):
            with TabPane("curves", id="curves"):
                yield CurvesView(self.cockpit.settings)
            with TabPane("ladder", id="ladder"), VerticalScroll():
                yield LadderView()
            with TabPane("log", id="log"):
                yield LogView(self.folder)
            with TabPane("preset", id="preset"), VerticalScroll():
                yield PresetView()
            with TabPane("batch", id="batch"), VerticalScroll():
                yield BatchView(self.folder)
        yield Footer(compact=True)

    def selected_run_id(self) -> str | None:
        return self.run_id

    def on_mount(self) -> None:
        super().on_mount()
        app = self.cockpit
        app.runs_changed.subscribe(self, self.runs_changed, immediate=True)
        app.history_changed.subscribe(self, self.history_changed, immediate=True)
        history = app.acquire_history(self.run_id, self)
        if history is not None:
            self.query_one(CurvesView).show_history(history)
        self.query_one(PresetView).show(self.folder)
        self.show_run(app.runs)
        app.watcher.set_focus(frozenset([self.run_id]))

    def on_unmount(self) -> None:
        self.cockpit.release_history(self.run_id, self)
        self.cockpit.watcher.set_focus(None)

    # the other runs are off screen while this one is shown: the watcher reads them less often
    def on_screen_resume(self) -> None:
        self.cockpit.watcher.set_focus(frozenset([self.run_id]))

    def on_screen_suspend(self) -> None:
        self.cockpit.watcher.set_focus(None)

    def runs_changed(self, runs: tuple[RunState, ...]) -> None:
        self._news.add("runs")
        self.cadence.request(within=TICK_FOLD_S)  # its history's news follow in this tick

    def history_changed(self, run_id: str) -> None:
        if run_id == self.run_id:
            self._news.add("history")
            self.cadence.request()

    def _show_news(self) -> None:
        news, self._news = self._news, set()
        if "runs" in news:
            self.show_run(self.cockpit.runs)
        if "history" in news:
            self.query_one(CurvesView).history_changed(throttled=False)

    def show_run(self, runs: tuple[RunState, ...]) -> None:
        """The header and the ladder, from the runs as the watcher last saw them."""
        state = next((r for r in runs if r.run_id == self.run_id), None)
        if state is None:
            self.query_one("#run-header", LiveText).show(
                Text(f"{self.run_id}: the run folder is gone", style="bold #f07070")
            )
            return
        self.query_one("#run-header", LiveText).show(header_text(state, runs))
        s = state.snapshot
        seen = (s.status, s.stage, tuple(s.verdicts), s.reason)
        if seen != self._shown_summary:  # the ladder only changes when a verdict lands
            self._shown_summary = seen
            self.query_one(LadderView).show(self.folder.summary())

    def apply_settings(self, settings: ViewSettings) -> None:
        self.query_one(CurvesView).apply_settings(settings)

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        self.query_one(LogView).set_following(event.pane.id == "log")

    # ---- keys --------------------------------------------------------------------------
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_stage(self, delta: int) -> None:
        self.query_one(TabbedContent).active = "curves"
        self.query_one(CurvesView).step_stage(delta)

    def action_smoothing(self, delta: int) -> None:
        self.cockpit.change_smoothing(delta)

    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name

    def action_scroll(self, lines: int) -> None:
        pane = self.query_one(TabbedContent).active_pane
        if pane is None:
            return
        for scroller in pane.query("VerticalScroll, LogView"):
            scroller.scroll_relative(y=lines, animate=False)
            return
