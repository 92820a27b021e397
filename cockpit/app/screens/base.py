"""What the runs list, the run view and the compare view share: Contract 4's keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable

from cockpit.app import keys
from cockpit.app.settings import ViewSettings
from cockpit.app.widgets.too_small import TooSmall

if TYPE_CHECKING:
    from cockpit.app.main import CockpitApp


class CockpitScreen(Screen):
    """A full screen of the app; subclasses say which run is selected and compose a body."""

    BINDINGS = keys.EVERYWHERE

    @property
    def cockpit(self) -> CockpitApp:
        return self.app  # type: ignore[return-value]

    @property
    def on_top(self) -> bool:
        """The screen the user sees. (Textual's ``is_current`` is also true for the screen
        just under the top one, whose repaints are then forwarded to the top screen: a hidden
        screen that kept drawing made the one in front repaint with it.)"""
        try:
            return self.app.screen is self
        except Exception:  # no screen stack yet, or the app is closing
            return False

    def selected_run_id(self) -> str | None:
        """The run the actions (fork, kill, mark) apply to."""
        raise NotImplementedError

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        yield from self.compose_body()
        yield TooSmall()

    def on_mount(self) -> None:
        # Signals call the screens at once (immediate) rather than posting them a message: a
        # message makes Textual repaint a screen under the top one, and a repaint there is
        # forwarded to the top screen as a full-screen repaint — at every publish.
        self.cockpit.settings_changed.subscribe(self, self.apply_settings, immediate=True)

    def apply_settings(self, settings: ViewSettings) -> None:
        """The user changed how curves look (log scale, markers, smoothing)."""

    def marks_changed(self) -> None:
        """Runs were marked or unmarked."""

    # ---- Contract 4 ------------------------------------------------------------------
    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        """enter on a table row (the runs list, the compare view) opens that run."""
        self.cockpit.open_run(str(event.row_key.value))

    def action_open_run(self) -> None:
        run_id = self.selected_run_id()
        if run_id:
            self.cockpit.open_run(run_id)

    def action_new_run(self) -> None:
        self.cockpit.open_new_run()

    def action_fork(self) -> None:
        self.cockpit.open_fork(self.selected_run_id())

    def action_kill(self) -> None:
        self.cockpit.confirm_kill(self.selected_run_id())

    def action_mark(self) -> None:
        run_id = self.selected_run_id()
        if run_id is not None:
            self.cockpit.toggle_mark(run_id)
            self.marks_changed()

    def action_compare(self) -> None:
        self.cockpit.open_compare(self.selected_run_id())

    def action_log_scale(self) -> None:
        self.cockpit.toggle_log_scale()

    def action_markers(self) -> None:
        self.cockpit.cycle_markers()

    def action_help(self) -> None:
        self.cockpit.show_help()

    async def action_quit(self) -> None:
        self.cockpit.exit()
