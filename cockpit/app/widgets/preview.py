"""On wide terminals, the runs screen previews the highlighted run's loss curves."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from cockpit.app.formatting import short_id
from cockpit.app.history import RunHistory
from cockpit.app.settings import ViewSettings
from cockpit.app.widgets.curves import LossPlot, loss_legend
from cockpit.app.widgets.live_text import LiveText


class RunPreview(Vertical):
    """The latest stage's losses of one run, without the run view's controls."""

    DEFAULT_CSS = """
    RunPreview { width: 1fr; }
    RunPreview #preview-title { height: 1; }
    RunPreview #preview-legend { height: 1; color: $text-muted; }
    """

    def __init__(self, settings: ViewSettings, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.settings = settings
        self.history: RunHistory | None = None

    def compose(self) -> ComposeResult:
        yield LiveText(id="preview-title")
        yield LiveText(id="preview-legend")
        yield LossPlot(self.settings, id="preview-plot")

    @property
    def plot(self) -> LossPlot:
        return self.query_one(LossPlot)

    def show_history(self, history: RunHistory | None) -> None:
        self.history = history
        self.plot.history = history
        self.history_changed(now=True)

    def apply_settings(self, settings: ViewSettings) -> None:
        self.settings = settings
        self.plot.settings = settings
        self.history_changed(now=True)

    def history_changed(self, now: bool = False, throttled: bool = True) -> None:
        """New points: the title, the legend, and a look at the plot (``throttled=False``:
        the caller keeps the cadence)."""
        history = self.history
        title = Text()
        legend = Text()
        if history is None:
            title.append("curves: highlight a run", style="dim")
            stage_name = None
        else:
            stage_name = history.latest_stage()
            title.append(short_id(history.run_id), style="bold")
            if not history.loaded:
                title.append(" · loading…", style="dim")
            elif stage_name is None:
                title.append(" · no steps logged yet", style="dim")
            else:
                title.append(
                    f" · {stage_name}" + (" · log" if self.settings.log_scale else ""), style="dim"
                )
                with history.lock:
                    legend = loss_legend(history.stages.get(stage_name), self.settings)
        self.query_one("#preview-title", LiveText).show(title)
        self.query_one("#preview-legend", LiveText).show(legend)
        plot = self.plot
        if plot.stage != stage_name or now:
            plot.stage = stage_name
            plot.redraw_now()
        else:
            plot.data_changed(throttled)
