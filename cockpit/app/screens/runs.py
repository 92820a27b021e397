"""The first screen: every run, the highlighted one's ladder, and GPU vs data wait."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input

from cockpit.app import keys
from cockpit.app.formatting import display_status, overrides_text, status_text
from cockpit.app.lineage import tree_order
from cockpit.app.messages import DeviceSample, RunState
from cockpit.app.screens.base import CockpitScreen
from cockpit.app.settings import ViewSettings
from cockpit.app.widgets.details import RunDetails
from cockpit.app.widgets.gpu_panel import DevicePanel
from cockpit.app.widgets.live_text import LiveText
from cockpit.app.widgets.plot import TICK_FOLD_S, Cadence, redraw_interval
from cockpit.app.widgets.preview import RunPreview
from cockpit.app.widgets.runs_table import SORTS, RunsTable, queue_places, run_cells, sort_runs
from cockpit.app.widgets.too_small import TooSmall

PREVIEW_FROM = 124
"""Terminal width from which the highlighted run's curves show beside the GPU panel."""
PREVIEW_DELAY_S = 0.3
"""Wait for the cursor to rest before loading a run's history for the preview."""
NUMBERS_WAIT_S = 2.0
"""Numbers that move on their own — a live run's step, losses, data wait, GPU use, and the
device samples — are shown at most every 2 s (nvitop's pace; both come once a second, out of
step, and shown together cost one repaint instead of two); what changes in kind — a status,
a stage, a verdict, a run that came or went — is shown at once, and so is anything the user
does. A preview of a live run's curves keeps its pace (a new point within a second)."""


def matches(state: RunState, needle: str) -> bool:
    """The filter: a case-insensitive substring of the id, preset, status, stage, group or overrides."""
    s = state.snapshot
    hay = " ".join(
        [
            s.run_id,
            s.preset,
            display_status(s),
            s.stage,
            s.group or "",
            overrides_text(s.overrides),
            s.parent or "",
        ]
    ).lower()
    return all(word in hay for word in needle.lower().split())


def run_kinds(runs: tuple[RunState, ...]) -> tuple:
    """What the runs are, without the numbers that move on their own."""
    return tuple(
        (
            r.run_id,
            r.snapshot.status,
            r.snapshot.stage,
            tuple(r.snapshot.verdicts),
            r.snapshot.reason,
            r.queue_position,
        )
        for r in runs
    )


class RunsScreen(CockpitScreen):
    """Runs table, details of the highlighted run, GPU vs data wait (and a preview when wide)."""

    BINDINGS = keys.RUNS_LIST

    def __init__(self) -> None:
        super().__init__()
        self.sort = "tree"
        self.reverse = False
        self.filter_text = ""
        self._stale = False
        self._preview_id: str | None = None
        self._preview_timer: Timer | None = None
        self._shape: tuple = ()
        self._kinds: tuple = ()
        """(runs, loading) as last shown: a change of either is shown without waiting."""
        self._panels = False
        """The GPU panel, the preview and the footer are mounted once the first frame (the
        bar, the table, the details) is out; until then nothing draws into them."""
        self._news: set[str] = set()
        """What arrived since the screen last showed it: "runs", "devices", "history"."""
        self.cadence = Cadence(self, self._show_news, lambda: redraw_interval(self.app))
        """The runs, the device samples and the preview's new points are shown together, at
        most every 0.75 s: one repaint per update instead of one per message."""

    def compose_body(self) -> ComposeResult:
        yield LiveText(id="bar")
        yield RunsTable(id="runs")
        yield RunDetails(id="details")
        yield Horizontal(id="bottom")  # its panels come with the second frame (_mount_panels)
        yield Input(
            placeholder="filter: words in the id, preset, status, stage, group or overrides",
            id="filter",
            compact=True,
        )

    async def _mount_panels(self) -> None:
        """The GPU panel, the preview and the footer: a dozen widgets whose styling and
        layout were a third of the first frame's work, mounted in the frame after it (their
        place is kept: the layout does not move when they arrive)."""
        app = self.cockpit
        settings = app.settings
        await self.query_one("#bottom", Horizontal).mount(
            RunPreview(settings, id="preview"), DevicePanel(settings, app.clock, id="devices")
        )
        await self.mount(Footer(compact=True), before=self.query_one(TooSmall))
        self.refresh_bindings()  # a footer mounted late has missed the first announcement
        self._panels = True
        panel = self.query_one(DevicePanel)
        panel.show_runs(app.runs)
        panel.show_samples(app.samples, app.device_note)
        if self.size.width >= PREVIEW_FROM and self._preview_id is None:
            self._load_preview()

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#filter", Input).cursor_blink = False
        app = self.cockpit
        app.runs_changed.subscribe(self, self.runs_changed, immediate=True)
        app.devices_changed.subscribe(self, self.devices_changed, immediate=True)
        app.history_changed.subscribe(self, self.history_changed, immediate=True)
        self.show_runs()
        self.table.focus()
        self.call_after_refresh(self._mount_panels)

    def on_screen_resume(self) -> None:
        if self._stale:
            self.show_runs()
            if not self._panels:
                return
            self.query_one(DevicePanel).show_samples(self.cockpit.samples, self.cockpit.device_note)
            if self._preview_id is not None:
                self.query_one(RunPreview).history_changed()

    def selected_run_id(self) -> str | None:
        return self.table.selected_key()

    # ---- data in -----------------------------------------------------------------------
    def runs_changed(self, runs: tuple[RunState, ...]) -> None:
        if not self.on_top:
            self._stale = True  # a hidden table is not worth updating; catch up on resume
            return
        self._news.add("runs")
        shape = (len(runs), self.cockpit.loading)
        kinds = run_kinds(runs)
        if shape != self._shape:  # runs came or went, a large workspace read further: now
            self._shape, self._kinds = shape, kinds
            self.cadence.now()
        elif kinds != self._kinds:  # with the preview's news of this tick, if any
            self._kinds = kinds
            self.cadence.request(within=TICK_FOLD_S)
        else:  # only numbers moved
            self.cadence.request(within=NUMBERS_WAIT_S)

    def devices_changed(self, sample: tuple[tuple[DeviceSample, ...], str | None]) -> None:
        if not self.on_top:
            self._stale = True
            return
        self._news.add("devices")
        self.cadence.request(within=NUMBERS_WAIT_S)

    def history_changed(self, run_id: str) -> None:
        if run_id != self._preview_id:
            return
        if not self.on_top:
            self._stale = True
            return
        self._news.add("history")
        self.cadence.request()

    def _show_news(self) -> None:
        news, self._news = self._news, set()
        if not self.on_top:  # covered since the news came: caught up on resume
            self._stale = self._stale or bool(news)
            return
        app = self.cockpit
        if not self._panels:
            if "runs" in news:
                self.show_runs()
            return  # the panels show the newest state when they are mounted
        panel = self.query_one(DevicePanel)
        if "runs" in news:
            self.show_runs()
        if "devices" in news:
            panel.show_samples(app.samples, app.device_note)
        if "history" in news:
            self.query_one(RunPreview).history_changed(throttled=False)
        if "runs" in news or "devices" in news:
            panel.plot.request_redraw(throttled=False)  # a look in this pass, not one of its own

    def apply_settings(self, settings: ViewSettings) -> None:
        if not self._panels:
            return  # they are made with the newest settings
        self.query_one(RunPreview).apply_settings(settings)
        self.query_one(DevicePanel).apply_settings(settings)

    def marks_changed(self) -> None:
        self.show_runs()

    def show_runs(self) -> None:
        self._stale = False
        app = self.cockpit
        runs = app.runs
        shown = (
            [r for r in runs if matches(r, self.filter_text)] if self.filter_text else list(runs)
        )
        ordered = sort_runs(tree_order(shown), self.sort, self.reverse)
        places = queue_places(runs)
        now = app.clock()
        rows = [
            (
                state.run_id,
                run_cells(
                    state,
                    prefix if self.sort == "tree" else "",
                    marked=state.run_id in app.marked,
                    stopping=state.run_id in app.stopping,
                    place=places.get(state.run_id),
                    now=now,
                ),
            )
            for state, prefix in ordered
        ]
        self.table.show(rows, self.size.width, (self.sort, self.reverse))
        self._show_bar(runs, len(shown))
        self._show_details()
        if self._panels:
            self.query_one(DevicePanel).show_runs(runs)

    def _show_bar(self, runs: tuple[RunState, ...], shown: int) -> None:
        app = self.cockpit
        counts: dict[str, int] = {}
        for r in runs:
            status = display_status(r.snapshot)
            counts[status] = counts.get(status, 0) + 1
        bar = Text()
        bar.append(" cockpit ", style="bold reverse")
        bar.append(f" {app.workspace}", style="bold")
        for status in ("running", "queued", "passed", "failed", "error", "pruned", "killed"):
            if counts.get(status):
                bar.append("  ")
                bar += status_text(status, str(counts[status]))
        if app.loading is not None:
            done, total = app.loading
            bar.append(f"  reading runs… {done}/{total}" if total else "  reading…", style="dim")
        elif not runs:
            bar.append("  no runs yet: n starts one", style="dim")
        if self.filter_text:
            bar.append(f"  filter '{self.filter_text}': {shown} of {len(runs)}", style="#e5c07b")
        if app.marked:
            bar.append(f"  ◆ {len(app.marked)} marked (c compares)", style="#e5c07b")
        self.query_one("#bar", LiveText).show(bar)

    def _show_details(self) -> None:
        app = self.cockpit
        run_id = self.selected_run_id()
        state = app.run_state(run_id) if run_id else None
        self.query_one(RunDetails).show_run(
            state, app.runs, queue_places(app.runs).get(run_id or ""), app.clock()
        )
        if run_id != self._preview_id and self.size.width >= PREVIEW_FROM:
            if self._preview_timer is not None:
                self._preview_timer.stop()
            self._preview_timer = self.set_timer(PREVIEW_DELAY_S, self._load_preview)

    def _load_preview(self) -> None:
        self._preview_timer = None
        if self.size.width < PREVIEW_FROM or not self._panels:
            return
        run_id = self.selected_run_id()
        if run_id == self._preview_id:
            return
        app = self.cockpit
        if self._preview_id is not None:
            app.release_history(self._preview_id, self)
        self._preview_id = run_id
        history = app.acquire_history(run_id, self) if run_id else None
        self.query_one(RunPreview).show_history(history)

    def on_resize(self) -> None:
        self.set_class(self.size.width >= PREVIEW_FROM, "-preview")
        self.show_runs()
        if self.size.width >= PREVIEW_FROM and self._preview_id is None:
            self._load_preview()

    def on_unmount(self) -> None:
        if self._preview_id is not None:
            self.cockpit.release_history(self._preview_id, self)

    # ---- the table -----------------------------------------------------------------------
    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_details()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.reverse = False
        self.show_runs()

    def action_reverse_sort(self) -> None:
        self.reverse = not self.reverse
        self.show_runs()

    def action_gpu_view(self) -> None:
        if not self._panels:
            return
        view = self.query_one(DevicePanel).cycle_view()
        self.notify(f"GPU panel shows {view}", timeout=2)

    # ---- the filter -----------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("-shown")
        self.filter_text = ""
        self.table.focus()
        self.show_runs()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.show_runs()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.query_one("#filter", Input).remove_class("-shown")
        self.table.focus()
