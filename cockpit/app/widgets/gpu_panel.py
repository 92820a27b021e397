"""GPU vs data wait: each GPU's utilization (or memory, or power) over the last minutes, drawn
against each live run's share of time waiting on its data loader, with a verdict in words."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from cockpit.app.formatting import rgb, short_id
from cockpit.app.messages import DeviceSample, GpuReading, RunState
from cockpit.app.settings import ViewSettings
from cockpit.app.verdict import RECENT_S, bottleneck, mean_since
from cockpit.app.widgets.curves import buckets_for, swatch
from cockpit.app.widgets.live_text import LiveText
from cockpit.app.widgets.plot import CachedPlot, Series, anchor_axes, raster, set_y_ticks

if TYPE_CHECKING:
    from textual_plotext.plot import Plot

WINDOW_S = 600.0
GPU_COLORS = [
    (152, 195, 121),
    (86, 182, 194),
    (97, 175, 239),
    (170, 220, 150),
    (120, 200, 200),
    (140, 160, 255),
    (190, 230, 120),
    (100, 210, 170),
]
WAIT_COLORS = [
    (229, 160, 80),
    (224, 108, 117),
    (198, 120, 221),
    (229, 192, 123),
    (255, 130, 60),
    (240, 140, 200),
    (200, 90, 90),
    (255, 200, 100),
]
GPU_VIEWS = ("util", "memory", "power")
"""What the GPU lines show; ``g`` cycles through them."""


def gpu_value(reading: GpuReading, view: str) -> float | None:
    """Percent: of the sample period busy, of memory used, or of the power limit drawn."""
    if view == "util":
        return reading.util
    if view == "memory":
        if reading.mem_used_mb is None or not reading.mem_total_mb:
            return None
        return 100.0 * reading.mem_used_mb / reading.mem_total_mb
    if reading.power_w is None or not reading.power_limit_w:
        return None
    return 100.0 * reading.power_w / reading.power_limit_w


def binned(
    points: Sequence[tuple[float, float]], buckets: int, now: float
) -> tuple[list[float], list[float]]:
    """(unix time, value) points averaged into ``buckets`` slices of the window, as (seconds
    before ``now``, mean) — so eight GPUs and eight runs over ten minutes still cost plotext
    a few hundred points. The slices are fixed in time (not in ``now``) and only finished ones
    are drawn: a slice's dot does not move while it fills, and the plot changes once per
    slice (its width is one dot of the plot) rather than at every sample."""
    width = WINDOW_S / max(1, buckets)
    current = math.floor(now / width)
    oldest = now - WINDOW_S
    sums: dict[int, list[float]] = {}
    for t, v in points:
        slot = math.floor(t / width)
        if slot >= current or t < oldest:
            continue
        acc = sums.setdefault(slot, [0.0, 0.0])
        acc[0] += v
        acc[1] += 1
    keys = sorted(sums)
    return [(k + 0.5) * width - now for k in keys], [sums[k][0] / sums[k][1] for k in keys]


def live_runs(runs: Sequence[RunState]) -> list[RunState]:
    return [r for r in runs if r.snapshot.status == "running"]


def shown_gpus(samples: Sequence[DeviceSample], runs: Sequence[RunState]) -> list[int]:
    """The GPUs our live runs train on, or every GPU when none does (at most eight)."""
    if not samples or not samples[-1].gpus:
        return []
    present = [g.index for g in samples[-1].gpus]
    used = sorted({r.gpu_index for r in runs if r.gpu_index in present})
    return (used or present)[:8]


class DevicePlot(CachedPlot):
    """0–100 % over the last ten minutes: GPUs (or the CPU) and each live run's data wait."""

    min_redraw_s = 1.0  # its samples come once a second (and it changes once per dot column)

    def __init__(
        self, settings: ViewSettings, clock: Callable[[], float], *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.settings = settings
        self.clock = clock
        self.samples: tuple[DeviceSample, ...] = ()
        self.runs: list[RunState] = []
        self.view = "util"
        self._prepared: tuple | None = None

    def lines(self, width: int) -> list[tuple[list[float], list[float], tuple[int, int, int]]]:
        """(seconds before now, percent, colour) of each line, binned for ``width`` cells."""
        now = self.clock()
        buckets = buckets_for(width, self.settings)
        recent = [s for s in self.samples if s.t >= now - WINDOW_S]
        series: list[tuple[list[tuple[float, float]], tuple[int, int, int]]] = []
        gpus = shown_gpus(self.samples, self.runs)
        for n, index in enumerate(gpus):
            points = [
                (s.t, gpu_value(g, self.view)) for s in recent for g in s.gpus if g.index == index
            ]
            series.append(
                ([(t, v) for t, v in points if v is not None], GPU_COLORS[n % len(GPU_COLORS)])
            )
        if not gpus:
            series.append(([(s.t, s.cpu) for s in recent], GPU_COLORS[0]))
        for n, run in enumerate(self.runs):
            series.append(
                (
                    [(t, 100.0 * w) for t, w in run.waits if t >= now - WINDOW_S],
                    WAIT_COLORS[n % len(WAIT_COLORS)],
                )
            )
        out = []
        for points, color in series:
            xs, ys = binned(points, buckets, now)
            if xs:
                out.append((xs, ys, color))
        return out

    def invalidate(self) -> None:
        self._prepared = None

    def has_data(self) -> bool:
        return bool(self._lines_for(self.size.width))

    def _lines_for(self, width: int) -> list:
        if self._prepared is None or self._prepared[0] != width:
            self._prepared = (width, self.lines(width))
        return self._prepared[1]

    def visible_key(self) -> object:
        """Only finished slices are drawn, so between two slice boundaries nothing visible
        changes: the key is the current slice (and what picks the lines), not the samples —
        the samples of a second cost no binning, no build, no repaint."""
        width, height = self.size
        self._prepared = None
        span = WINDOW_S / max(1, buckets_for(width, self.settings))
        slot = math.floor(self.clock() / span)
        start = slot * span  # what lies before the current slice is what is drawn
        return (
            self.settings.plotext_marker,
            width,
            height,
            self.view,
            slot,
            tuple(shown_gpus(self.samples, self.runs)),
            bisect.bisect_left(self.samples, start, key=lambda s: s.t),
            tuple(
                (r.run_id, bisect.bisect_left(r.waits, start, key=lambda w: w[0]))
                for r in self.runs
            ),
        )

    def draw(self, plt: Plot, width: int, height: int):
        marker = self.settings.plotext_marker
        series = [Series(xs, ys, color) for xs, ys, color in self._lines_for(width)]
        plt.xlim(-WINDOW_S, 0)
        plt.xticks([-600, -450, -300, -150, 0], ["-10m", "-7.5m", "-5m", "-2.5m", "now"])
        plt.ylim(-4, 104)
        set_y_ticks(plt, [0, 50, 100], ["0%", "50%", "100%"])
        box = (-WINDOW_S, 0.0, -4.0, 104.0)
        anchor_axes(plt, box)
        return lambda matrix: raster(matrix, series, box, marker)


class DevicePanel(Vertical):
    """The GPU-vs-data-wait panel of the runs screen."""

    DEFAULT_CSS = """
    DevicePanel { height: 1fr; }
    DevicePanel #device-title { height: 1; }
    DevicePanel #device-legend { height: 1; color: $text-muted; }
    DevicePanel #device-verdicts { height: auto; max-height: 4; }
    """

    def __init__(
        self, settings: ViewSettings, clock: Callable[[], float], *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.settings = settings
        self.clock = clock
        self.note: str | None = None
        self.samples: tuple[DeviceSample, ...] = ()
        self.runs: list[RunState] = []

    def compose(self) -> ComposeResult:
        yield LiveText(id="device-title")
        yield LiveText(id="device-legend")
        yield DevicePlot(self.settings, self.clock, id="device-plot")
        yield LiveText(id="device-verdicts")

    @property
    def plot(self) -> DevicePlot:
        return self.query_one(DevicePlot)

    def show_samples(self, samples: tuple[DeviceSample, ...], note: str | None) -> None:
        self.samples, self.note = samples, note
        self.plot.samples = samples
        self.plot.request_redraw()
        self._update_text()

    def show_runs(self, runs: Sequence[RunState]) -> None:
        self.runs = live_runs(runs)
        self.plot.runs = self.runs
        self.plot.request_redraw()
        self._update_text()

    def apply_settings(self, settings: ViewSettings) -> None:
        self.settings = settings
        self.plot.settings = settings
        self.plot.redraw_now()

    def cycle_view(self) -> str:
        """util → memory → power → util; returns the new one."""
        plot = self.plot
        plot.view = GPU_VIEWS[(GPU_VIEWS.index(plot.view) + 1) % len(GPU_VIEWS)]
        plot.redraw_now()
        self._update_text()
        return plot.view

    def _update_text(self) -> None:
        latest = self.samples[-1] if self.samples else None
        gpus = shown_gpus(self.samples, self.runs)
        title = Text()
        title.append("GPU vs data wait", style="bold")
        if latest is None:
            title.append(" · sampling…", style="dim")
        elif not latest.gpus:
            title.append(
                # what the plot shows first; why there is no GPU last, where a narrow panel
                # cuts the line
                f" · CPU load instead · CPU {latest.cpu:.0f}% · {self.note or 'no GPU here'}",
                style="dim",
            )
        else:
            title.append(f" · GPU {self.plot.view} (g) · last 10 min", style="dim")
        self.query_one("#device-title", LiveText).show(title)

        legend = Text()
        if latest is not None and latest.gpus:
            ours = set().union(*(r.pids for r in self.runs)) if self.runs else set()
            for n, index in enumerate(gpus):
                reading = next(g for g in latest.gpus if g.index == index)
                legend += swatch(GPU_COLORS[n % len(GPU_COLORS)], gpu_label(reading, ours))
        elif latest is not None:
            legend += swatch(GPU_COLORS[0], "CPU load")
        for n, run in enumerate(self.runs):
            legend += swatch(WAIT_COLORS[n % len(WAIT_COLORS)], f"{short_id(run.run_id)} data wait")
        self.query_one("#device-legend", LiveText).show(legend)

        now = self.clock()
        lines = Text()
        for n, run in enumerate(self.runs):
            wait = mean_since(run.waits, now - RECENT_S)
            util = None
            if run.gpu_index is not None:
                util = mean_since(
                    [
                        (s.t, g.util)
                        for s in self.samples
                        for g in s.gpus
                        if g.index == run.gpu_index
                    ],
                    now - RECENT_S,
                )
            if n:
                lines.append("\n")
            lines.append("▍", style=rgb(WAIT_COLORS[n % len(WAIT_COLORS)]))
            lines.append(f"{short_id(run.run_id)}: ", style="bold")
            verdict = bottleneck(wait, util)
            lines.append(
                verdict, style="#e5c07b" if verdict.startswith(("data-bound", "host-bound")) else ""
            )
        if not self.runs:
            lines.append("no live run: the verdict appears when one trains", style="dim")
        self.query_one("#device-verdicts", LiveText).show(lines)


def gpu_label(reading: GpuReading, our_pids: set[int]) -> str:
    parts = [f"GPU{reading.index}"]
    if reading.util is not None:
        parts.append(f"{reading.util:.0f}%")
    if reading.mem_used_mb is not None and reading.mem_total_mb:
        parts.append(f"{reading.mem_used_mb / 1024:.1f}/{reading.mem_total_mb / 1024:.0f} GiB")
    if reading.power_w is not None:
        parts.append(f"{reading.power_w:.0f} W")
    others = [p for p in reading.pids if p not in our_pids]
    if others:
        parts.append(f"{len(others)} other process{'es' if len(others) > 1 else ''}")
    return " ".join(parts)
