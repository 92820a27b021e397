"""A run's curves: per-batch train loss and random-val-batch loss (raw and smoothed), the
full-val loss, and the full-val metrics — one ladder stage at a time."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from cockpit.app.formatting import METRIC_SHORT, count, number, rgb
from cockpit.app.history import RunHistory, SmoothedSeries, StageHistory
from cockpit.app.settings import PIXELS_PER_CELL, ViewSettings
from cockpit.app.widgets.live_text import LiveText
from cockpit.app.widgets.plot import (
    CachedPlot,
    Series,
    anchor_axes,
    dot_grid,
    dots,
    nice_ticks,
    raster,
    set_step_axis,
    set_value_axis,
    to_log,
    value_ticks,
)

if TYPE_CHECKING:
    from textual_plotext.plot import Plot

TRAIN_RAW, TRAIN = (60, 95, 140), (97, 175, 239)
VAL_RAW, VAL = (135, 95, 55), (229, 160, 80)
FULL_VAL = (230, 230, 230)
PARENT_RAW, PARENT = (78, 78, 78), (150, 150, 150)
FORK_LINE = (110, 110, 110)
METRIC_COLORS = [(152, 195, 121), (198, 120, 221), (86, 182, 194), (224, 108, 117), (229, 192, 123)]
LOSS_COLORS = [(224, 108, 117), (86, 182, 194), (229, 192, 123), (198, 120, 221)]
"""A custom step's named losses (G, D, ...), drawn smoothed under the metrics."""
Y_AXIS_CELLS = 8
"""Columns the y tick labels and the frame take from a plot's width."""


@dataclass
class Line:
    """One series ready for plotext: already decimated (and in log10 when the axis is)."""

    xs: list[float]
    ys: list[float]
    color: tuple[int, int, int]
    points: bool = False
    """Draw points, not a line: a decimated noisy series is a band of min/max points (lines
    between them would cost plotext a segment across the band per column), and the full-val
    losses are a handful of dots."""
    marker: str | None = None
    """A marker of its own (the full-val dots), else the plot's."""


@dataclass
class Figure:
    lines: list[Line] = field(default_factory=list)
    vlines: list[float] = field(default_factory=list)

    def bounds(self) -> tuple[float, float, float, float] | None:
        xs = [x for line in self.lines for x in line.xs]
        ys = [y for line in self.lines for y in line.ys]
        if not xs:
            return None
        return min(xs), max(xs), min(ys), max(ys)

    def axes(
        self, unit_range: bool, x_range: tuple[float, float] | None
    ) -> tuple[float, float, float, float] | None:
        """(x low, x high, y low, y high) before the y axis's padding."""
        bounds = self.bounds()
        if bounds is None:
            return None
        x_lo, x_hi, y_lo, y_hi = bounds
        if x_range is not None:
            x_lo, x_hi = min(x_lo, x_range[0]), max(x_hi, x_range[1])
        if unit_range and y_lo >= 0 and y_hi <= 1:
            y_lo, y_hi = 0.0, 1.0
        return x_lo, x_hi, y_lo, y_hi

    def visible_key(
        self,
        width: int,
        height: int,
        marker: str,
        *,
        log: bool,
        unit_range: bool = False,
        x_range: tuple[float, float] | None = None,
    ) -> tuple:
        """What ``plot`` would draw, at the plot's dot resolution: each line's points rounded
        to the dot they fall on, the ticks, the colours. Equal keys draw equal pictures (up to
        a dot), so new data with an equal key needs no build."""
        axes = self.axes(unit_range, x_range)
        if axes is None:
            return ()
        x_lo, x_hi, y_lo, y_hi = axes
        grid = dot_grid(width, height, marker, Y_AXIS_CELLS)
        y_lo, y_hi, ticks = value_ticks(y_lo, y_hi, log=log)
        box = (x_lo, x_hi, y_lo, y_hi)
        key: list = [marker, log, tuple(ticks), tuple(nice_ticks(x_lo, x_hi, 5)), grid]
        for line in self.lines:
            lit = dots(line.xs, line.ys, box, grid, points=line.points)
            key.append((line.color, line.points, line.marker, lit))
        key.append(dots(self.vlines, [y_lo] * len(self.vlines), box, grid, points=True))
        return tuple(key)

    def plot(
        self,
        plt: Plot,
        marker: str,
        *,
        log: bool,
        unit_range: bool = False,
        x_range: tuple[float, float] | None = None,
    ) -> None:
        """``x_range`` pins the step axis (stacked plots of one stage share it)."""
        axes = self.axes(unit_range, x_range)
        if axes is None:
            return
        x_lo, x_hi, y_lo, y_hi = axes
        for x in self.vlines:
            if x_lo <= x <= x_hi:
                plt.vline(x, FORK_LINE)
        x_lo, x_hi = set_step_axis(plt, x_lo, x_hi)
        set_value_axis(plt, y_lo, y_hi, log=log)
        y_lo, y_hi, _ = value_ticks(y_lo, y_hi, log=log)
        if not (math.isfinite(y_lo) and math.isfinite(y_hi)):
            return None
        series = [Series(ln.xs, ln.ys, ln.color, ln.points, ln.marker) for ln in self.lines]
        box = (x_lo, x_hi, y_lo, y_hi)
        anchor_axes(plt, box)
        return lambda matrix: raster(matrix, series, box, marker)


def step_range(stage: StageHistory) -> tuple[float, float] | None:
    """The step axis of a stage's plots: from its first step (its parent's, for a warm fork)
    to a round number past its last — so a live curve grows into the plot instead of
    rescaling it at every redraw, and the loss and metric plots share one axis."""
    first = stage.inherited if stage.inherited is not None and len(stage.inherited.train) else stage
    if not len(first.train) or not len(stage.train):
        return None
    lo, hi = first.train.first_x, stage.train.last_x
    ticks = nice_ticks(lo, hi, 5)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    return lo, max(hi, math.ceil(hi / step) * step)


def buckets_for(width: int, settings: ViewSettings) -> int:
    return max(8, (width - Y_AXIS_CELLS) * PIXELS_PER_CELL[settings.marker])


def series_line(
    series: SmoothedSeries, smooth: bool, buckets: int, color: tuple[int, int, int], log: bool
) -> Line | None:
    """The raw or the smoothed curve, decimated to ``buckets`` columns."""
    if not len(series):
        return None
    xs, ys = (series.smooth if smooth else series.raw).points(buckets)
    if log:
        xs, ys = to_log(xs, ys)
    return Line(xs, ys, color, points=not smooth and len(series) > buckets) if xs else None


def loss_figure(stage: StageHistory, buckets: int, log: bool) -> Figure:
    """Raw under smoothed, parent's part in grey, full-val losses as dots on top."""
    figure = Figure()
    parts = [
        (stage.inherited, PARENT_RAW, PARENT_RAW, PARENT, PARENT),
        (stage, TRAIN_RAW, VAL_RAW, TRAIN, VAL),
    ]
    for part, train_raw, val_raw, _, _ in parts:
        if part is not None:
            figure.lines += [
                line
                for line in (
                    series_line(part.train, False, buckets, train_raw, log),
                    series_line(part.val, False, buckets, val_raw, log),
                )
                if line
            ]
    for part, _, _, train, val in parts:
        if part is not None:
            figure.lines += [
                line
                for line in (
                    series_line(part.train, True, buckets, train, log),
                    series_line(part.val, True, buckets, val, log),
                )
                if line
            ]
    xs, ys = stage.eval_series("val_loss")
    if log:
        xs, ys = to_log(xs, ys)
    if xs:
        figure.lines.append(Line(xs, ys, FULL_VAL, points=True, marker="●"))
    if stage.fork_step is not None:
        figure.vlines.append(stage.fork_step)
    return figure


def metric_figure(stage: StageHistory, buckets: int = 200) -> Figure:
    """Full-val metrics, and a custom step's named losses (losses.bin: a GAN's G and D)."""
    figure = Figure()
    for i, name in enumerate(stage.metric_names()):
        xs, ys = stage.eval_series(name)
        if xs:
            figure.lines.append(Line(xs, ys, METRIC_COLORS[i % len(METRIC_COLORS)]))
    for i, series in enumerate(stage.losses.values()):
        line = series_line(series, True, buckets, LOSS_COLORS[i % len(LOSS_COLORS)], False)
        if line:
            figure.lines.append(line)
    if stage.fork_step is not None:
        figure.vlines.append(stage.fork_step)
    return figure


class StagePlot(CachedPlot):
    """A plot of one stage of one run."""

    unit_range = False
    """Pin the y axis to 0..1 when every value lies there (accuracy-like metrics)."""

    def __init__(self, settings: ViewSettings, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.settings = settings
        self.history: RunHistory | None = None
        self.stage: str | None = None
        self._drawn_key: tuple = ()
        self._prepared: tuple | None = None

    def figure(self, stage: StageHistory, width: int) -> Figure:
        raise NotImplementedError

    def log_axis(self) -> bool:
        return False

    def data_key(self, stage: StageHistory) -> tuple:
        """What the figure depends on; new data that leaves it unchanged costs no rebuild."""
        return (len(stage.train), len(stage.val), len(stage.evals))

    def data_changed(self, throttled: bool = True) -> None:
        """New points arrived: redraw (throttled, unless the caller keeps the cadence) if this
        plot shows any of them."""
        if self.history is None or self.stage is None:
            return
        with self.history.lock:
            stage = self.history.stages.get(self.stage)
            key = self.data_key(stage) if stage is not None else ()
        if key != self._drawn_key:
            self._drawn_key = key
            self.request_redraw(throttled)

    def _prepare(self, width: int) -> tuple[Figure, tuple[float, float] | None] | None:
        """The decimated figure and its step axis (None: nothing to draw); made once per
        look and reused by the build that may follow it."""
        if self.history is None or self.stage is None:
            return None
        cache = (width, self.history, self.stage, self.settings)
        if self._prepared is not None and self._prepared[0] == cache:
            return self._prepared[1]
        with self.history.lock:
            stage = self.history.stages.get(self.stage)
            out = None if stage is None else (self.figure(stage, width), step_range(stage))
        self._prepared = (cache, out)
        return out

    def has_data(self) -> bool:
        prepared = self._prepare(self.size.width)
        return prepared is not None and bool(prepared[0].lines)

    def invalidate(self) -> None:
        self._prepared = None  # new data may have arrived since the last look

    def visible_key(self) -> object:
        self.invalidate()
        width, height = self.size
        prepared = self._prepare(width)
        if prepared is None:
            return ()
        figure, steps = prepared
        return figure.visible_key(
            width,
            height,
            self.settings.plotext_marker,
            log=self.log_axis(),
            unit_range=self.unit_range,
            x_range=steps,
        )

    def draw(self, plt: Plot, width: int, height: int):
        prepared = self._prepare(width)
        if prepared is None:
            return None
        figure, steps = prepared
        return figure.plot(
            plt,
            self.settings.plotext_marker,
            log=self.log_axis(),
            unit_range=self.unit_range,
            x_range=steps,
        )


class LossPlot(StagePlot):
    """Train and val-batch losses, raw and smoothed, with the full-val losses as dots."""

    def figure(self, stage: StageHistory, width: int) -> Figure:
        return loss_figure(stage, buckets_for(width, self.settings), self.settings.log_scale)

    def log_axis(self) -> bool:
        return self.settings.log_scale


class MetricPlot(StagePlot):
    """The full-val metrics (accuracy, F1, mIoU, MAE, ...)."""

    unit_range = True

    def figure(self, stage: StageHistory, width: int) -> Figure:
        return metric_figure(stage, buckets_for(width, self.settings))

    def data_key(self, stage: StageHistory) -> tuple:
        named = tuple(len(s) for s in stage.losses.values())
        return (len(stage.evals), step_range(stage), named)


def swatch(color: tuple[int, int, int], label: str, glyph: str = "━") -> Text:
    return Text.assemble((glyph, rgb(color)), f" {label}  ")


def loss_legend(stage: StageHistory | None, settings: ViewSettings) -> Text:
    if stage is None:
        return Text("")
    text = Text()
    text += swatch(TRAIN, f"train {number(stage.train.smoothed_last())}")
    text += swatch(TRAIN_RAW, f"batch {number(stage.train.last())}")
    if len(stage.val):
        text += swatch(VAL, f"val batch {number(stage.val.smoothed_last())}")
    _, ys = stage.eval_series("val_loss")
    if ys:
        text += swatch(FULL_VAL, f"full val {number(ys[-1])}", "●")
    if stage.inherited is not None and stage.fork_step is not None:
        text += swatch(PARENT, f"parent ≤ {count(stage.fork_step)}")
    text.append(f"ema {settings.smoothing:g}", style="dim")
    return text


def metric_legend(stage: StageHistory | None) -> Text:
    text = Text()
    if stage is None:
        return text
    for i, name in enumerate(stage.metric_names()):
        xs, ys = stage.eval_series(name)
        if ys:
            label = f"{METRIC_SHORT.get(name, name)} {number(ys[-1], 3)} @ {count(xs[-1])}"
            text += swatch(METRIC_COLORS[i % len(METRIC_COLORS)], label)
    for i, (name, series) in enumerate(stage.losses.items()):
        text += swatch(
            LOSS_COLORS[i % len(LOSS_COLORS)], f"{name} {number(series.smoothed_last())}"
        )
    return text


class CurvesView(Vertical):
    """Stage picker, loss curves and metric curves of one run."""

    DEFAULT_CSS = """
    CurvesView { height: 1fr; }
    CurvesView .legend { height: 1; color: $text-muted; }
    CurvesView #stage-bar { height: 1; }
    CurvesView LossPlot { height: 3fr; min-height: 6; }
    CurvesView MetricPlot { height: 2fr; min-height: 5; }
    CurvesView.-no-metrics MetricPlot, CurvesView.-no-metrics #metric-legend { display: none; }
    """

    def __init__(self, settings: ViewSettings, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.settings = settings
        self.history: RunHistory | None = None
        self.stage: str | None = None
        self.follow_latest = True
        """Show the newest stage that logged data, until the user picks one with [ or ]."""

    def compose(self) -> ComposeResult:
        yield LiveText(id="stage-bar")
        yield LiveText(classes="legend", id="loss-legend")
        yield LossPlot(self.settings, id="loss-plot")
        yield LiveText(classes="legend", id="metric-legend")
        yield MetricPlot(self.settings, id="metric-plot")

    def show_history(self, history: RunHistory) -> None:
        self.history = history
        for plot in self.query(StagePlot):
            plot.history = history
        self.history_changed(force=True)

    def apply_settings(self, settings: ViewSettings) -> None:
        self.settings = settings
        for plot in self.query(StagePlot):
            plot.settings = settings
            plot.redraw_now()
        self._update_text()

    def step_stage(self, delta: int) -> None:
        """Show the previous (-1) or next (+1) stage that has data."""
        if self.history is None:
            return
        names = self.history.stages_with_data()
        if not names:
            return
        at = names.index(self.stage) if self.stage in names else len(names) - 1
        self.stage = names[max(0, min(len(names) - 1, at + delta))]
        self.follow_latest = self.stage == names[-1]
        self._set_stage(redraw_now=True)

    def history_changed(self, force: bool = False, throttled: bool = True) -> None:
        """New points (or a new history): follow the newest stage, redraw within the throttle
        (``throttled=False``: the caller keeps the cadence, look now)."""
        if self.history is None:
            return
        if self.follow_latest or self.stage is None:
            latest = self.history.latest_stage()
            if latest != self.stage:
                self.stage = latest
                force = True
        self._set_stage(redraw_now=force, throttled=throttled)

    def _set_stage(self, redraw_now: bool, throttled: bool = True) -> None:
        for plot in self.query(StagePlot):
            plot.stage = self.stage
            if redraw_now:
                plot.redraw_now()
            else:
                plot.data_changed(throttled)
        self._update_text()

    def current_stage(self) -> StageHistory | None:
        if self.history is None or self.stage is None:
            return None
        return self.history.stages.get(self.stage)

    def _update_text(self) -> None:
        stage = self.current_stage()
        bar = Text()
        if self.history is None or not self.history.loaded:
            bar.append("loading the run's history…", style="dim")
        elif stage is None:
            bar.append("no steps logged yet", style="dim")
        else:
            names = self.history.stages_with_data()
            position = f" {names.index(stage.name) + 1}/{len(names)}" if stage.name in names else ""
            bar.append("stage ", style="dim")
            bar.append(f"◀ {stage.name} ▶", style="bold")
            bar.append(f"{position} · {count(stage.steps)} steps", style="dim")
            if stage.inherited is not None and stage.fork_step is not None:
                bar.append(f" after the parent's {count(stage.fork_step)}", style="dim")
            bar.append("   [ ] stage  +/- smoothing", style="dim")
        self.query_one("#stage-bar", LiveText).show(bar)
        with self.history.lock if self.history else contextlib.nullcontext():
            self.query_one("#loss-legend", LiveText).show(loss_legend(stage, self.settings))
            metrics = metric_legend(stage)
        self.query_one("#metric-legend", LiveText).show(metrics)
        self.set_class(not metrics.plain, "-no-metrics")
