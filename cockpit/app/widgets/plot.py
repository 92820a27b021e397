"""The base of every plot: plotext drawing that is cached, throttled and turned into strips.

``PlotextPlot`` rebuilds the whole plot on every repaint and hands Textual an ANSI string
to parse. Here a build happens only when the size, the theme or the plot's ``revision``
changed; new data bumps the revision at most every 0.75 s (``request_redraw``; every two
seconds while the terminal is not focused), so a burst of steps costs one rebuild — and
only if what the plot would show changed at the resolution of its dots (``visible_key``:
the decimated points rounded to the plot's pixel grid, its ticks and colours): a step that
moves no dot costs no build and no repaint. The strips are made straight from plotext's
character and colour matrix (no ANSI text written and parsed back). Data is decimated
before it reaches plotext (see envelope.py), so a build takes a few milliseconds whatever
the run's length, and a plot with nothing to show never loads plotext.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region
from textual.strip import Strip
from textual.timer import Timer
from textual.widget import Widget

if TYPE_CHECKING:
    from textual_plotext.plot import Plot

MIN_REDRAW_S = 0.75
"""At most one data-driven rebuild per 0.75 s per plot (and one repaint per 0.75 s per view,
``Cadence``): with histories polled every 0.25 s (watcher.py), a new point is drawn within a
second of reaching the disk."""
TICK_FOLD_S = 0.05
"""One watcher tick's news arrive as several messages (the runs, then each history that
grew): a view that hears the runs waits this long for the rest, to show them in one repaint."""
UNFOCUSED_REDRAW_S = 2.0
"""The throttle while the terminal reports that it lost focus (another window in front)."""
VERTICAL_PIXELS = {"braille": 4, "hd": 2, "dot": 1}
"""Dots per character cell, vertically, of plotext's markers (for ``visible_key``)."""
AXIS_COLOR = (128, 128, 128)
Y_LABEL_WIDTH = 6
"""Y tick labels are padded to this width so stacked plots share their x positions."""


def redraw_interval(app: object, least: float = MIN_REDRAW_S) -> float:
    """Seconds between data-driven redraws: ``least``, or two seconds while the terminal
    reports that it lost focus."""
    focused = getattr(app, "app_focus", True)
    return least if focused else max(least, UNFOCUSED_REDRAW_S)


class Cadence:
    """Calls ``show`` at most once per ``interval()`` seconds: requests inside the window fold
    into one call at its end. A view that gathers everything new (its texts, its plots) into
    one call repaints once per window instead of once per message — each repaint is a pass
    of the compositor over the widgets under the changed regions, most of the cost of a
    live view."""

    def __init__(self, owner: Widget, show: Callable[[], None], interval: Callable[[], float]):
        self.owner = owner
        self.show = show
        self.interval = interval
        self.calls = 0
        """How many times ``show`` ran (the tests count the coalescing with it)."""
        self._last = -math.inf
        self._pending: Timer | None = None
        self._due = math.inf

    def request(self, within: float | None = None) -> None:
        """Show what is new as soon as the cadence allows; ``within``: it may wait that long
        for a call that comes anyway (news that rides along with the next one)."""
        now = time.monotonic()
        due = max(self._last + self.interval(), now if within is None else now + within)
        if self._pending is not None:
            if self._due <= due:
                return
            self._pending.stop()
            self._pending = None
        if due <= now:
            self._fire()
        else:
            self._due = due
            self._pending = self.owner.set_timer(due - now, self._fire)

    def now(self) -> None:
        """Show at once (something the user did), folding in any pending request."""
        if self._pending is not None:
            self._pending.stop()
        self._fire()

    def _fire(self) -> None:
        self._pending = None
        self._due = math.inf
        self._last = time.monotonic()
        self.calls += 1
        self.show()


@lru_cache(maxsize=256)
def cell_style(colors: tuple) -> Style:
    """The rich Style of one plotext (foreground, style, background) triple — a plot has a
    handful of distinct ones, so each is parsed once."""
    import plotext._utility as plotext_utility  # imported with the first plot drawn

    text = Text.from_ansi(plotext_utility.colors_to_ansi(*colors) + "x")
    return text.spans[0].style if text.spans else Style.null()  # type: ignore[return-value]


@lru_cache(maxsize=1024)
def styled_cell(base: Style, colors: tuple) -> Style:
    """A cell's style over the widget's own (what ``Strip.apply_style`` would make of it,
    made once per pair rather than once per segment of every new row)."""
    return base + cell_style(colors)


@dataclass
class Series:
    """One series to draw: data coordinates, a colour, points or a line, its own marker."""

    xs: Sequence[float]
    ys: Sequence[float]
    color: tuple[int, int, int]
    points: bool = False
    marker: str | None = None


@lru_cache(maxsize=16)
def _glyphs(marker: str) -> tuple[int, int, tuple[str, ...]]:
    """(dots across, dots down, the glyph of every dot mask) of a plotext marker; a plain
    character marker is one dot per cell."""
    import plotext._utility as ut

    across = ut.marker_factor(marker, 2, 2, 2)
    down = ut.marker_factor(marker, 2, 3, 4)
    if across * down == 1:
        return 1, 1, (ut.marker_codes.get(marker, marker),)
    n = across * down
    return (
        across,
        down,
        tuple(ut.get_hd_marker(tuple((mask >> p) & 1 for p in range(n))) for mask in range(1 << n)),
    )


def raster(matrix, series: Sequence[Series], box: tuple[float, float, float, float], marker: str):
    """Draw ``series`` into the canvas of a built plotext ``matrix`` whose axes span ``box``
    (x low, x high, y low, y high) — exactly as plotext draws them (its data → dot mapping,
    its lines between consecutive points, its glyphs, later series over earlier ones per
    cell), but vectorised: plotext spends ~10 µs of Python per dot, which made a live loss
    plot cost tens of milliseconds a build; here the frame (axes, ticks, labels) is all that
    plotext builds."""
    from cockpit.app.envelope import numpy

    np = numpy()
    cols, rows = len(matrix.Cols_canvas), len(matrix.Rows_canvas)
    if cols <= 0 or rows <= 0:
        return
    c0, r0 = matrix.Cols_canvas.start, matrix.Rows_canvas.start
    x_lo, x_hi, y_lo, y_hi = box
    for line in series:
        if not len(line.xs):
            continue
        across, down, glyphs = _glyphs(line.marker or marker)
        bx, by = cols * across, rows * down
        with np.errstate(invalid="ignore", divide="ignore"):
            xd = np.floor(
                np.round(0.5 + (bx - 1) * (np.asarray(line.xs, float) - x_lo) / (x_hi - x_lo), 8)
            )
            yd = np.floor(
                np.round(0.5 + (by - 1) * (np.asarray(line.ys, float) - y_lo) / (y_hi - y_lo), 8)
            )
        if not line.points and len(xd) > 1:  # plotext's get_line between each pair of points
            steps = np.maximum(np.abs(np.diff(xd)), np.abs(np.diff(yd))).astype(np.int64)
            seg = np.repeat(np.arange(len(steps)), steps)
            k = np.arange(len(seg)) - np.repeat(np.cumsum(steps) - steps, steps)
            span = np.maximum(steps, 1)[seg]
            x0, y0 = xd[:-1][seg], yd[:-1][seg]
            xd = np.concatenate((np.trunc(x0 + k * ((xd[1:][seg] - x0) / span)), xd[-1:]))
            yd = np.concatenate((np.trunc(y0 + k * ((yd[1:][seg] - y0) / span)), yd[-1:]))
        inside = (xd >= 0) & (xd < bx) & (yd >= 0) & (yd < by)
        xd, yd = xd[inside].astype(np.int64), yd[inside].astype(np.int64)
        if not len(xd):
            continue
        cell = (yd // down) * cols + xd // across
        bit = np.left_shift(1, (down - 1 - yd % down) * across + xd % across)
        order = np.argsort(cell, kind="stable")
        cell, bit = cell[order], bit[order]
        starts = np.flatnonzero(np.concatenate(([True], cell[1:] != cell[:-1])))
        masks = (
            np.bitwise_or.reduceat(bit, starts)
            if across * down > 1
            else np.zeros(len(starts), np.int64)
        )
        marker_rows, fg_rows = matrix.marker, matrix.fullground
        for c, mask in zip(cell[starts].tolist(), masks.tolist()):
            row, col = r0 + c // cols, c0 + c % cols
            marker_rows[row][col] = glyphs[mask]
            fg_rows[row][col] = line.color


def changed_rows(before: list[Strip], after: list[Strip], width: int) -> list[Region]:
    """The rows that differ between two builds, as regions of consecutive rows."""
    regions = []
    start = None
    for y in range(max(len(before), len(after)) + 1):
        same = (
            y < len(before) and y < len(after) and (before[y] is after[y] or before[y] == after[y])
        )
        if y >= max(len(before), len(after)) or same:
            if start is not None:
                regions.append(Region(0, start, width, y - start))
                start = None
        elif start is None:
            start = y
    return regions


def anchor_axes(plt: Plot, box: tuple[float, float, float, float]) -> None:
    """One point outside the canvas: plotext lays out the axes, ticks and labels only for the
    sides its data use, and the data itself is drawn by ``raster``."""
    x_lo, x_hi, y_lo, _ = box
    plt.scatter([x_hi + (x_hi - x_lo) * 10 + 1], [y_lo], marker="dot")


def matrix_strips(plt: Plot, overlay=None, reuse: dict | None = None) -> list[Strip]:
    """One Strip per row of the built figure, a Segment per run of equally coloured cells;
    ``overlay(matrix)`` draws the data into the built frame first."""
    plt._set_sizes()
    plt._build_matrix()
    matrix = plt.monitor.matrix
    if overlay is not None:
        overlay(matrix)
    return strips_of(matrix, reuse)


class PlotCalls:
    """Stands in for the plotext figure while a plot's ``draw`` runs: it notes the calls
    (axes, ticks, fork lines: what the frame is made of), which are replayed on the real
    figure only when they differ from the last build's — a frame equal to the last one is
    copied instead of laid out again by plotext (most of a build's cost: plotext makes its
    matrices and places every tick and label in Python). ``draw`` may only call setters."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        def call(*args, **kwargs) -> None:
            self.calls.append((name, args, kwargs))

        return call

    def key(self) -> str:
        return repr(self.calls)  # floats repr exactly: equal keys lay out equal frames

    def replay(self, plt: Plot) -> None:
        for name, args, kwargs in self.calls:
            getattr(plt, name)(*args, **kwargs)


def copy_matrix(matrix):
    """A copy of a built plotext matrix whose cells can be drawn into (``raster``) without
    touching the original."""
    out = copy.copy(matrix)
    out.marker = [row[:] for row in matrix.marker]
    out.fullground = [row[:] for row in matrix.fullground]
    out.style = [row[:] for row in matrix.style]
    out.background = [row[:] for row in matrix.background]
    return out


def strips_of(matrix, reuse: dict | None = None, base: Style | None = None) -> list[Strip]:
    """One Strip per row of a built plotext matrix, a Segment per run of equally coloured
    cells; with ``base`` (the widget's style) the cells' styles are laid over it already.

    ``reuse`` (kept by the caller between builds) holds each row's cells and Strip: a row
    whose cells equal the last build's keeps its Strip — no Segments made again — and a
    comparison of the strips finds it unchanged at once."""
    strips = []
    kept: dict = {"base": base}
    last_rows = reuse if reuse is not None and reuse.get("base") == base else None
    for y, row in enumerate(reversed(matrix.Rows)):
        markers, fg, style, bg = cells = (
            matrix.marker[row],
            matrix.fullground[row],
            matrix.style[row],
            matrix.background[row],
        )
        if last_rows is not None:
            last = last_rows.get(y)
            if last is not None and last[0] == cells:
                strips.append(last[1])
                kept[y] = last
                continue
        segments = []
        start = 0
        # runs of equally coloured cells, found by groupby in C (a row has a handful)
        for colors, run in groupby(zip(fg, style, bg)):
            end = start + len(list(run))
            segments.append(
                Segment(
                    "".join(markers[start:end]),
                    cell_style(colors) if base is None else styled_cell(base, colors),
                )
            )
            start = end
        strips.append(Strip(segments, matrix.cols))
        kept[y] = (cells, strips[-1])
    if reuse is not None:
        reuse.clear()
        reuse.update(kept)
    return strips


class CachedPlot(Widget):
    """A plotext plot rebuilt only when something it shows changed."""

    DEFAULT_CSS = """
    CachedPlot { width: 1fr; height: 1fr; }
    """

    min_redraw_s = MIN_REDRAW_S
    """The throttle: data-driven rebuilds at most once per this many seconds."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._plt: Plot | None = None
        self.revision = 0
        """Bumped when what the plot shows changed; part of the cache key."""
        self.builds = 0
        """How many times plotext built this plot (the tests check the throttle with it)."""
        self.skipped = 0
        """Data-driven redraws skipped because no dot would have moved."""
        self._key: tuple | None = None
        self._strips: list[Strip] = []
        self._rows: dict = {}
        """The last build's rows, for ``strips_of`` to keep the unchanged ones."""
        self._frame: tuple[tuple, object] | None = None
        """(key, matrix) of the last frame plotext laid out, before the data was drawn."""
        self.frames = 0
        """How many of the builds had plotext lay out the frame (the others copied it)."""
        self._base: Style | None = None
        self._strips_base: Style | None = None
        """The widget's style the strips were made over (they are drawn as they are)."""
        self._last_build = -math.inf
        self._pending: Timer | None = None
        self._visible: object = None
        """``visible_key`` of what the strips show (None: unknown)."""
        self._looked: object = None

    @property
    def plt(self) -> Plot:
        """The plotext figure (textual-plotext's, which gives each widget its own), made on
        first use: plotext is imported when a plot first has something to draw."""
        if self._plt is None:
            from textual_plotext.plot import Plot

            self._plt = Plot()
        return self._plt

    def draw(self, plt: Plot, width: int, height: int):
        """Plot onto a cleared figure of ``width`` × ``height`` cells; may return an overlay,
        ``overlay(matrix)``, that draws the data into the built frame (see ``raster``)."""
        raise NotImplementedError

    def has_data(self) -> bool:
        """False while there is nothing to draw: the plot is blank and plotext is not called."""
        return True

    def visible_key(self) -> object:
        """What the plot would show, at the resolution of its dots (None: not known, so
        always redraw). New data whose key equals the drawn one costs nothing."""
        return None

    def _build(self) -> None:
        width, height = self.size
        key = (width, height, self.app.theme, self.revision)
        if key == self._key or width <= 0 or height <= 0:
            return
        if self._looked is not None:  # the look that asked for this build: its figure is drawn
            self._visible, self._looked = self._looked, None
        else:
            self._visible = self.visible_key()
        self._key = key
        if not self.has_data():
            self._strips = []
            return
        calls = PlotCalls()
        overlay = self.draw(calls, width, height)  # type: ignore[arg-type]
        frame_key = (width, height, calls.key())
        if self._frame is not None and self._frame[0] == frame_key:
            matrix = copy_matrix(self._frame[1])
        else:
            plt = self.plt
            plt.clear_figure()
            plt.plotsize(width, height)
            plt.canvas_color("default")  # the widget's own background shows through
            plt.axes_color("default")
            plt.ticks_color(AXIS_COLOR)
            calls.replay(plt)
            plt._set_sizes()
            plt._build_matrix()
            matrix = plt.monitor.matrix
            self._frame = (frame_key, copy_matrix(matrix))
            self.frames += 1
        if overlay is not None:
            overlay(matrix)
        self._strips_base = self.rich_style  # the widget's colours under the plot's
        self._strips = strips_of(matrix, self._rows, self._strips_base)
        self._last_build = time.monotonic()
        self.builds += 1

    def render_lines(self, crop: Region) -> list[Strip]:
        self._base = self.rich_style  # once per pass, not once per line
        try:
            return super().render_lines(crop)
        finally:
            self._base = None

    def render_line(self, y: int) -> Strip:
        self._build()
        base = self._base if self._base is not None else self.rich_style
        if base != self._strips_base and self._strips:  # new colours (a class, a theme)
            self._key = None
            self._build()
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, base)

    def text(self) -> str:
        """What the plot shows, as plain text (for tests and screen readers of logs)."""
        self._build()
        return "\n".join(strip.text for strip in self._strips)

    def invalidate(self) -> None:
        """Forget anything prepared for drawing (subclasses that cache a figure)."""

    def redraw_now(self) -> None:
        """Something the user changed (scale, markers, stage): redraw without waiting."""
        self.invalidate()
        self._looked = None
        self.revision += 1
        self.refresh()

    def throttle_s(self) -> float:
        """Seconds between data-driven redraws: slower while the terminal is not focused."""
        return redraw_interval(self.app, self.min_redraw_s)

    def request_redraw(self, throttled: bool = True) -> None:
        """New data: redraw now if the last look is old enough, else once, later — and only
        if something visible changed. ``throttled=False``: look now (the caller keeps the
        cadence, e.g. a view that repaints its texts and plots together)."""
        if not throttled:
            if self._pending is not None:
                self._pending.stop()
                self._pending = None
            self._redraw_if_changed()
            return
        if self._pending is not None:
            return
        wait = self._last_build + self.throttle_s() - time.monotonic()
        if wait <= 0:
            self._redraw_if_changed()
        else:
            self._pending = self.set_timer(wait, self._redraw_pending)

    def _redraw_pending(self) -> None:
        self._pending = None
        self._redraw_if_changed()

    def _redraw_if_changed(self) -> None:
        self._last_build = time.monotonic()  # a look counts against the throttle, build or not
        if self._key is not None and self.size == self._key[:2]:
            key = self.visible_key()
            if key is not None and key == self._visible:
                self.skipped += 1
                return
            self._looked = key
            self.revision += 1
            # built at this size before: build now and repaint only the rows that changed (a
            # live curve grows at its right end: most rows of the plot stay as they were)
            before = self._strips
            self._build()
            regions = changed_rows(before, self._strips, self.size.width)
            if regions:
                self.refresh(*regions)
            return
        self.invalidate()
        self._looked = None
        self.revision += 1
        self.refresh()


def dot_grid(width: int, height: int, marker: str, y_axis_cells: int) -> tuple[int, int]:
    """(columns, rows) of dots of a plot area ``width`` × ``height`` cells in plotext."""
    across = {"braille": 2, "hd": 2, "dot": 1}.get(marker, 2)
    return (
        max(1, (width - y_axis_cells) * across),
        max(1, (height - 3) * VERTICAL_PIXELS.get(marker, 4)),
    )


def dots(
    xs: Sequence[float],
    ys: Sequence[float],
    box: tuple[float, float, float, float],
    grid: tuple[int, int],
    *,
    points: bool,
) -> bytes:
    """The dots a series lights on a ``grid`` (columns, rows) spanning ``box`` (x low, x high,
    y low, y high): as a set for scattered points, in order (repeats dropped) for a line."""
    from cockpit.app.envelope import numpy

    np = numpy()
    x_lo, x_hi, y_lo, y_hi = box
    cols, rows = grid
    xq = np.floor((np.asarray(xs, dtype=np.float64) - x_lo) / ((x_hi - x_lo) or 1.0) * cols)
    yq = np.floor((np.asarray(ys, dtype=np.float64) - y_lo) / ((y_hi - y_lo) or 1.0) * rows)
    lit = (xq.astype(np.int64) << 32) | (yq.astype(np.int64) & 0xFFFFFFFF)
    if points:
        lit = np.unique(lit)
    elif len(lit):
        lit = lit[np.concatenate(([True], lit[1:] != lit[:-1]))]
    return lit.tobytes()


def tick_step(lo: float, hi: float, count: int = 5) -> float:
    """The round distance (1, 2, 2.5, 5 × 10^k) between about ``count`` ticks over [lo, hi]
    (``hi > lo``, both finite)."""
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


SNAP_PER_STEP = 10
"""A value axis's limits are multiples of a tenth of its tick step (see ``snapped``)."""


def snapped(lo: float, hi: float, count: int = 5) -> tuple[float, float]:
    """[lo, hi] widened to multiples of a tenth of its tick step.

    A live loss moves its lowest point a little at every redraw; limits that followed it
    exactly would move every dot of the plot, so each redraw would rebuild the frame (plotext
    lays out every tick label again) and repaint every row. Snapped, the limits hold until
    the data cross a grain (2.5–6% of the range), so most redraws only add the new points
    at the right end — and the picture stops trembling. Deterministic: equal data, equal
    limits, whatever came before."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return lo, hi
    grain = tick_step(lo, hi, count) / SNAP_PER_STEP
    return math.floor(lo / grain) * grain, math.ceil(hi / grain) * grain


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers (1, 2, 5 × 10^k apart) spanning [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    step = tick_step(lo, hi, count)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def step_label(x: float) -> str:
    """Steps on an x axis: 950, 1.5k, 12k, 1.2M."""
    a = abs(x)
    if a >= 1e6:
        return f"{x / 1e6:.3g}M"
    if a >= 1e4:
        return f"{x / 1e3:.3g}k"
    if a >= 1e3:
        return f"{x / 1e3:.2g}k"
    return f"{x:.0f}" if x == int(x) else f"{x:.3g}"


def set_step_axis(plt: Plot, lo: float, hi: float, count: int = 5) -> tuple[float, float]:
    """X limits and ticks of a step axis; returns the limits set."""
    if hi <= lo:
        hi = lo + 1
    ticks = [t for t in nice_ticks(lo, hi, count) if lo <= t <= hi]
    plt.xlim(lo, hi)
    if ticks:
        plt.xticks(ticks, [step_label(t) for t in ticks])
    return lo, hi


def tick_label(value: float) -> str:
    """0.001, 0.05, 2, 150, 1e-4, 2e5: short and exact for round tick values."""
    a = abs(value)
    if a and (a < 1e-3 or a >= 1e5):
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.4g}"


def set_y_ticks(plt: Plot, ticks: list[float], labels: list[str]) -> None:
    plt.yticks(ticks, [label.rjust(Y_LABEL_WIDTH) for label in labels])


def value_ticks(
    lo: float, hi: float, *, log: bool, count: int = 5
) -> tuple[float, float, list[float]]:
    """The padded y limits and the tick positions of a value axis."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return lo, hi, []
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.04
        lo, hi = snapped(lo - pad, hi + pad, count)
    if log:
        return lo, hi, log_ticks(lo, hi)
    return lo, hi, [t for t in nice_ticks(lo, hi, count) if lo <= t <= hi]


def set_value_axis(plt: Plot, lo: float, hi: float, *, log: bool, count: int = 5) -> None:
    """Y limits and ticks; with ``log`` the data are log10 values, the labels real ones."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return
    lo, hi, ticks = value_ticks(lo, hi, log=log, count=count)
    plt.ylim(lo, hi)
    if log:
        set_y_ticks(plt, ticks, [tick_label(10**t) for t in ticks])
    else:
        set_y_ticks(plt, ticks, [tick_label(t) for t in ticks])


def log_ticks(lo: float, hi: float) -> list[float]:
    """log10 positions of 1, 2, 5 × 10^k (just the powers of ten over a wide range)."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    mantissas = (1,) if hi - lo > 3 else (1, 2, 5) if hi - lo > 0.7 else (1, 1.5, 2, 3, 5, 7)
    ticks = [d + math.log10(m) for d in decades for m in mantissas]
    inside = [t for t in ticks if lo <= t <= hi]
    return inside if len(inside) >= 2 else nice_ticks(lo, hi, 3)


def to_log(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The points with a positive y, y as log10 (a loss of exactly 0 has no place on a log axis)."""
    kept = [(x, math.log10(y)) for x, y in zip(xs, ys) if y > 0]
    return [x for x, _ in kept], [y for _, y in kept]
