"""The base of every plot: plotext drawing that is cached, throttled and turned into strips.

``PlotextPlot`` rebuilds the whole plot on every repaint and hands Textual an ANSI string
to parse. Here a build happens only when the size, the theme or the plot's ``revision``
changed; new data bumps the revision at most twice a second (``request_redraw``), so a
burst of steps costs one rebuild; and the strips are made straight from plotext's character
and colour matrix (no ANSI text written and parsed back: that was most of a build's cost).
Data is decimated before it reaches plotext (see envelope.py), so a build takes a few
milliseconds whatever the run's length.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import plotext._utility as plotext_utility
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.timer import Timer
from textual.widget import Widget
from textual_plotext.plot import Plot

MIN_REDRAW_S = 0.5
"""At most two data-driven rebuilds per second per plot."""
AXIS_COLOR = (128, 128, 128)
Y_LABEL_WIDTH = 6
"""Y tick labels are padded to this width so stacked plots share their x positions."""


@lru_cache(maxsize=256)
def cell_style(colors: tuple) -> Style:
    """The rich Style of one plotext (foreground, style, background) triple — a plot has a
    handful of distinct ones, so each is parsed once."""
    text = Text.from_ansi(plotext_utility.colors_to_ansi(*colors) + "x")
    return text.spans[0].style if text.spans else Style.null()  # type: ignore[return-value]


def matrix_strips(plt: Plot) -> list[Strip]:
    """One Strip per row of the built figure, a Segment per run of equally coloured cells."""
    plt._set_sizes()
    plt._build_matrix()
    matrix = plt.monitor.matrix
    strips = []
    for row in reversed(matrix.Rows):
        markers, fg, style, bg = (
            matrix.marker[row],
            matrix.fullground[row],
            matrix.style[row],
            matrix.background[row],
        )
        segments = []
        start = 0
        for col in range(1, matrix.cols + 1):
            if col == matrix.cols or (fg[col], style[col], bg[col]) != (
                fg[start],
                style[start],
                bg[start],
            ):
                segments.append(
                    Segment(
                        "".join(markers[start:col]),
                        cell_style((fg[start], style[start], bg[start])),
                    )
                )
                start = col
        strips.append(Strip(segments, matrix.cols))
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
        self.plt = Plot()
        """The plotext figure (textual-plotext's, which gives each widget its own)."""
        self.revision = 0
        """Bumped when what the plot shows changed; part of the cache key."""
        self.builds = 0
        """How many times plotext built this plot (the tests check the throttle with it)."""
        self._key: tuple | None = None
        self._strips: list[Strip] = []
        self._last_build = -math.inf
        self._pending: Timer | None = None

    def draw(self, plt: Plot, width: int, height: int) -> None:
        """Plot the data onto a cleared figure of ``width`` × ``height`` cells."""
        raise NotImplementedError

    def _build(self) -> None:
        width, height = self.size
        key = (width, height, self.app.theme, self.revision)
        if key == self._key or width <= 0 or height <= 0:
            return
        plt = self.plt
        plt.clear_figure()
        plt.plotsize(width, height)
        plt.canvas_color("default")  # the widget's own background shows through
        plt.axes_color("default")
        plt.ticks_color(AXIS_COLOR)
        self.draw(plt, width, height)
        self._strips = matrix_strips(plt)
        self._key = key
        self._last_build = time.monotonic()
        self.builds += 1

    def render_line(self, y: int) -> Strip:
        self._build()
        base = self.rich_style  # the widget's colours under the plot's (cached per style by Strip)
        if y < len(self._strips):
            return self._strips[y].apply_style(base)
        return Strip.blank(self.size.width, base)

    def text(self) -> str:
        """What the plot shows, as plain text (for tests and screen readers of logs)."""
        self._build()
        return "\n".join(strip.text for strip in self._strips)

    def redraw_now(self) -> None:
        """Something the user changed (scale, markers, stage): redraw without waiting."""
        self.revision += 1
        self.refresh()

    def request_redraw(self) -> None:
        """New data: redraw now if the last build is old enough, else once, later."""
        if self._pending is not None:
            return
        wait = self._last_build + self.min_redraw_s - time.monotonic()
        if wait <= 0:
            self.redraw_now()
        else:
            self._pending = self.set_timer(wait, self._redraw_pending)

    def _redraw_pending(self) -> None:
        self._pending = None
        self.redraw_now()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers (1, 2, 5 × 10^k apart) spanning [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
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


def set_step_axis(plt: Plot, lo: float, hi: float, count: int = 5) -> None:
    if hi <= lo:
        hi = lo + 1
    ticks = [t for t in nice_ticks(lo, hi, count) if lo <= t <= hi]
    plt.xlim(lo, hi)
    if ticks:
        plt.xticks(ticks, [step_label(t) for t in ticks])


def tick_label(value: float) -> str:
    """0.001, 0.05, 2, 150, 1e-4, 2e5: short and exact for round tick values."""
    a = abs(value)
    if a and (a < 1e-3 or a >= 1e5):
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.4g}"


def set_y_ticks(plt: Plot, ticks: list[float], labels: list[str]) -> None:
    plt.yticks(ticks, [label.rjust(Y_LABEL_WIDTH) for label in labels])


def set_value_axis(plt: Plot, lo: float, hi: float, *, log: bool, count: int = 5) -> None:
    """Y limits and ticks; with ``log`` the data are log10 values, the labels real ones."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.04
        lo, hi = lo - pad, hi + pad
    plt.ylim(lo, hi)
    if log:
        ticks = log_ticks(lo, hi)
        set_y_ticks(plt, ticks, [tick_label(10**t) for t in ticks])
    else:
        ticks = [t for t in nice_ticks(lo, hi, count) if lo <= t <= hi]
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
