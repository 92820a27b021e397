"""What keeps the app cheap to watch: its own rasterizer against plotext's, the dot keys that
skip redraws, the GPU panel's fixed bins, the vectorised history reader against the exact
loop, and a workspace listed a batch at a time."""

from __future__ import annotations

import math
import random
from itertools import accumulate

import numpy as np
import pytest
from rich.segment import Segment
from textual.geometry import Region
from textual.strip import Strip
from textual_plotext.plot import Plot

from cockpit.app.history import RunHistory, StepsReader, debiased_ema
from cockpit.app.messages import DeviceSample, RunsUpdated
from cockpit.app.watcher import WorkspaceWatcher, created_hint
from cockpit.app.widgets.curves import Figure, Line, buckets_for
from cockpit.app.widgets.gpu_panel import binned
from cockpit.app.widgets.plot import (
    Series,
    anchor_axes,
    changed_rows,
    raster,
    set_step_axis,
    set_value_axis,
    value_ticks,
)
from engine.torchfree.runfolder import STEP_COLUMNS, RunFolder, StepsAppender, write_json_atomic
from tests.app.conftest import histories_loaded, make_app, settled, wait_until
from tests.app.workspaces import RunSpec, loss_rows, write_run

# ---- the rasterizer draws what plotext draws ------------------------------------------------


def reference(series: list[Series], box, marker: str, size: tuple[int, int]):
    """plotext drawing the series itself (the way the app drew them before)."""
    plt = Plot()
    plt.plotsize(*size)
    for s in series:
        draw = plt.scatter if s.points else plt.plot
        draw(list(s.xs), list(s.ys), marker=s.marker or marker, color=s.color)
    return frame(plt, box)


def frame(plt: Plot, box):
    x_lo, x_hi, y_lo, y_hi = box
    set_step_axis(plt, x_lo, x_hi)
    set_value_axis(plt, y_lo, y_hi, log=False)
    plt._set_sizes()
    plt._build_matrix()
    return plt.monitor.matrix


def ours(series: list[Series], box, marker: str, size: tuple[int, int]):
    plt = Plot()
    plt.plotsize(*size)
    y_lo, y_hi, _ = value_ticks(box[2], box[3], log=False)
    anchor_axes(plt, (box[0], box[1], y_lo, y_hi))
    matrix = frame(plt, box)
    raster(matrix, series, (box[0], box[1], y_lo, y_hi), marker)
    return matrix


def cells(matrix) -> list[tuple]:
    return [
        (matrix.marker[r][c], matrix.fullground[r][c], matrix.style[r][c])
        for r in matrix.Rows
        for c in range(matrix.cols)
    ]


@pytest.mark.parametrize("marker", ["braille", "hd", "dot"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_rasterizer_draws_cell_for_cell_what_plotext_draws(marker, seed):
    rng = random.Random(seed)
    n = rng.choice([3, 40, 400])
    xs = sorted(rng.uniform(0, 1000) for _ in range(n))
    noisy = [1.5 * math.exp(-x / 300) + rng.gauss(0, 0.2) for x in xs]
    smooth = list(accumulate(noisy, lambda e, v: 0.9 * e + 0.1 * v))
    series = [
        Series(xs, noisy, (60, 95, 140), points=True),  # the raw band
        Series(xs, [v * 1.1 for v in noisy], (135, 95, 55), points=True),
        Series(xs, smooth, (97, 175, 239)),  # lines over it
        Series(xs[:: max(1, n // 5)], smooth[:: max(1, n // 5)], (230, 230, 230), True, "●"),
        Series([-50.0, 500.0, 1200.0], [0.5, 3.0, -1.0], (1, 2, 3)),  # leaves the canvas
    ]
    box = (0.0, 1000.0, min(noisy), max(noisy) * 1.1)
    for size in ((60, 14), (118, 16), (33, 9)):
        assert cells(ours(series, box, marker, size)) == cells(reference(series, box, marker, size))


# ---- a redraw that moves no dot is skipped --------------------------------------------------


def test_the_dot_key_changes_only_when_a_dot_would_move():
    xs = [float(x) for x in range(0, 1000, 10)]
    ys = [math.exp(-x / 400) for x in xs]

    def key(xs, ys, points=False):
        figure = Figure([Line(xs, ys, (1, 2, 3), points=points)])
        return figure.visible_key(118, 16, "braille", log=False, x_range=(0.0, 1200.0))

    base = key(xs, ys)
    # a new point in the dot the line already ends in: the same picture
    assert key([*xs, xs[-1] + 0.1], [*ys, ys[-1]]) == base
    # one that reaches the next dot column: a new picture
    assert key([*xs, xs[-1] + 15.0], [*ys, ys[-1]]) != base
    # scattered points are a set of dots: a repeat lights nothing new
    assert key([*xs, xs[3]], [*ys, ys[3]], points=True) == key(xs, ys, points=True)


def test_a_rebuild_repaints_only_the_rows_that_changed():
    def strips(*texts):
        return [Strip([Segment(t)]) for t in texts]

    before = strips("a", "b", "c", "d", "e")
    after = strips("a", "B", "C", "d", "E")
    assert changed_rows(before, after, 30) == [Region(0, 1, 30, 2), Region(0, 4, 30, 1)]
    assert changed_rows(before, before, 30) == []
    assert changed_rows(before, strips("a", "b"), 30) == [Region(0, 2, 30, 3)]


def test_gpu_panel_bins_are_fixed_in_time_and_only_finished_ones_show():
    width = 600.0 / 100
    points = [(1000.0 + t, float(t)) for t in range(0, 60)]
    xs, ys = binned(points, 100, now=1059.5)
    assert len(xs) == 10  # 996-1002 s ... 1050-1056 s; the one still filling is not drawn
    # half a second later: the same slices, moved by half a second, the same values
    xs2, ys2 = binned(points, 100, now=1060.0)
    assert ys2 == ys and xs2 == pytest.approx([x - 0.5 for x in xs])
    assert all(x % width == pytest.approx(width / 2) for x in (x + 1059.5 for x in xs))


def test_gpu_samples_inside_a_slice_cost_no_redraw():
    from cockpit.app.settings import ViewSettings
    from cockpit.app.widgets.gpu_panel import DevicePlot

    now = [6000.5]
    plot = DevicePlot(ViewSettings(), clock=lambda: now[0])
    plot.samples = tuple(DeviceSample(t, (), 30.0) for t in range(5400, 6001))
    drawn = plot.visible_key()
    plot.samples += (DeviceSample(6000.9, (), 99.0),)  # into the slice still filling
    now[0] = 6001.0
    assert plot.visible_key() == drawn
    span = 600 / buckets_for(plot.size.width, plot.settings)  # one dot column of time
    now[0] = 6000.5 + 2 * span  # two slices on: the picture moves
    assert plot.visible_key() != drawn
    moved = plot.visible_key()
    plot.samples = (DeviceSample(5399.5, (), 1.0), *plot.samples)  # a late one, in a drawn slice
    assert plot.visible_key() != moved


# ---- the history reader -------------------------------------------------------------------


def exact_ema(ys, beta):
    out, ema = [], 0.0
    for i, v in enumerate(ys, 1):
        ema = beta * ema + (1 - beta) * v
        out.append(ema / (1 - beta**i))
    return out


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999])
def test_the_vectorised_ema_is_the_exact_loop_across_chunks(beta):
    rng = random.Random(3)
    ys = [rng.gauss(1.0, 0.3) * math.exp(-i / 2000) for i in range(5000)]
    expected = ys if beta == 0 else exact_ema(ys, beta)
    whole, _ = debiased_ema(ys, beta, (0.0, 0))
    assert whole.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    head, state = debiased_ema(ys[:1234], beta, (0.0, 0))
    tail, _ = debiased_ema(ys[1234:], beta, state)
    assert np.concatenate([head, tail]).tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_a_loss_near_the_float_limit_falls_back_to_the_exact_loop():
    ys = [1e300, 1e300, 1e299]
    out, _ = debiased_ema(ys, 0.5, (0.0, 0))
    assert np.isfinite(out).all() and out.tolist() == pytest.approx(exact_ema(ys, 0.5))


def test_the_reader_decodes_only_whole_records_in_chunks_and_older_layouts(workspace):
    folder = write_run(
        workspace, RunSpec("r-read", stage_names=["train"], steps=loss_rows(range(1, 1001), 0))
    )
    reader = StepsReader(folder.file("steps.bin"))
    chunks = list(reader.read_new(chunk=300))  # 300 + 300 + 300 + 100 records
    assert [len(c["step"]) for c in chunks] == [300, 300, 300, 100]
    assert np.concatenate([c["step"] for c in chunks]).tolist() == [
        float(s) for s in range(1, 1001)
    ]
    out = StepsAppender(folder.file("steps.bin"))
    out.append_many(loss_rows(range(1001, 1003), 0))
    out.write(b"\x01" * 30)  # a record still being written
    out.close()
    assert [c["step"].tolist() for c in reader.read_new()] == [[1001.0, 1002.0]]
    assert reader.offset == 1002 * 8 * len(STEP_COLUMNS)
    # a run written with an older layout (no val_loss column): the curve without val points
    old = RunFolder(workspace / "r-old")
    old.path.mkdir()
    write_json_atomic(old.file("steps.json"), {"columns": ["step", "stage", "train_loss"]})
    old.file("steps.bin").write_bytes(np.array([[1, 0, 2.0], [2, 0, 1.0]], "<f8").tobytes())
    (cols,) = StepsReader(old.file("steps.bin")).read_new()
    assert cols["train_loss"].tolist() == [2.0, 1.0] and np.isnan(cols["val_loss"]).all()


def test_damaged_stage_values_are_skipped_not_fatal(workspace):
    rows = loss_rows(range(1, 101), 0)
    rows[40] = (41.0, 0.0, math.nan, 1.0, math.nan, 0.0, 0.0, math.nan, 1e-3)
    folder = write_run(workspace, RunSpec("r-nan", stage_names=["train"], steps=rows))
    history = RunHistory(folder)
    history.poll()
    assert history.stages["train"].steps == 99


def test_a_history_keeps_envelopes_not_points(workspace):
    """Memory stays bounded: 200k steps leave a few thousand envelope points per series."""
    folder = write_run(
        workspace, RunSpec("r-long", stage_names=["train"], steps=loss_rows(range(1, 200_001), 0))
    )
    history = RunHistory(folder)
    history.poll()
    series = history.stages["train"].train
    assert len(series) == 200_000 and (series.first_x, series.last_x) == (1, 200_000)
    held = sum(
        arr.nbytes
        for env in (series.raw, series.smooth)
        for arr in (env.lo_x, env.lo_y, env.hi_x, env.hi_y, env._tail_x, env._tail_y)
    )
    assert held < 200_000 * 8 / 10
    assert not hasattr(series, "xs")


# ---- a large workspace is listed a batch at a time ----------------------------------------


def test_a_large_workspace_is_posted_in_growing_batches_oldest_first(workspace):
    for i in range(250):
        write_run(workspace, RunSpec(f"sweep-20300101-{i // 60:02d}{i % 60:02d}00-{i:04x}"))
    posted: list[RunsUpdated] = []
    watcher = WorkspaceWatcher(workspace, posted.append)
    watcher.scan()
    sizes = [len(m.runs) for m in posted]
    assert sizes == [40, 250]  # the top rows at once, then the rest
    assert [m.loading for m in posted] == [(40, 250), None]
    oldest = sorted(posted[-1].runs, key=lambda r: created_hint(r.run_id))[:40]
    assert {r.run_id for r in posted[0].runs} == {r.run_id for r in oldest}
    posted.clear()
    watcher.scan()
    assert posted == []  # nothing changed: nothing posted


def test_while_a_view_shows_one_run_the_others_are_read_every_fifth_scan(workspace, monkeypatch):
    from cockpit.app.watcher import OFFSCREEN_SCANS, RunTracker

    ids = [f"sweep-20300101-0000{i:02d}-{i:04x}" for i in range(4)]
    for run_id in ids:
        write_run(workspace, RunSpec(run_id))
    watcher = WorkspaceWatcher(workspace, lambda m: None)
    watcher.scan()  # everything is read the first time
    polled: list[str] = []
    real = RunTracker.poll

    def poll(self, now):
        polled.append(self.folder.run_id)
        return real(self, now)

    monkeypatch.setattr(RunTracker, "poll", poll)
    watcher.set_focus(frozenset([ids[0]]))
    for _ in range(2 * OFFSCREEN_SCANS):
        watcher.scan()
    assert polled.count(ids[0]) == 2 * OFFSCREEN_SCANS  # the run on screen: every scan
    assert all(polled.count(other) == 2 for other in ids[1:])  # the others: every fifth
    polled.clear()
    watcher.set_focus(None)  # back to the list: every run, at once and at every scan
    watcher.scan()
    watcher.scan()
    assert sorted(polled) == sorted(ids * 2)


# ---- the runs table renders only the cells that changed -----------------------------------


def test_the_runs_table_renders_again_only_the_cells_whose_value_changed():
    import asyncio

    from rich.text import Text
    from textual.app import App

    from cockpit.app.widgets.runs_table import NARROW, RunsTable

    def rows(step: str):
        cells = {c.key: Text(f"{c.key}-{i}") for i, c in enumerate(NARROW)}
        return [("r1", {**cells, "step": Text(step)}), ("r2", dict(cells))]

    class Table(App):
        def compose(self):
            yield RunsTable()

    async def go():
        app = Table()
        async with app.run_test(size=(80, 10)) as pilot:
            table = app.query_one(RunsTable)
            table.show(rows("10"), 80)
            await pilot.pause()
            before = {k: v[1] for k, v in table._rendered.items()}
            table.show(rows("20"), 80)  # one cell of one row changes
            await pilot.pause()
            after = {k: v[1] for k, v in table._rendered.items()}
            fresh = [k for k in after if k in before and after[k] is not before[k]]
            assert [(k[0], k[1]) for k in fresh] == [("r1", "step")]
            assert "20" in "".join(s.text for s in table.render_lines(table.region.reset_offset))

    asyncio.run(go())


def test_the_first_frame_does_not_wait_for_numpy_plotext_or_the_other_screens():
    """They load on first use (numpy, psutil and the launcher on the watcher and sampling
    threads, the preset module and yaml only for a preset error or a launch); importing the
    app must not pull them in, or its start gets slower by their import time."""
    import subprocess
    import sys

    code = (
        "import sys, cockpit.cli, cockpit.app.main; "
        "print([m for m in ('numpy', 'plotext', 'cockpit.app.screens.run', "
        "'cockpit.app.screens.compare', 'cockpit.app.screens.new_run', 'yaml', "
        "'engine.torchfree.preset', 'engine.torchfree.ladder', 'cockpit.launch', 'psutil') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_one_line_cell_renders_segment_for_segment_as_datatable_renders_it():
    """The runs table renders its Text cells straight to segments; DataTable's own render
    (through Rich) is the reference, for plain, styled, spanned, padded and empty cells,
    under the cursor, the hover and neither."""
    import asyncio

    from rich.style import Style
    from rich.text import Text
    from textual.app import App
    from textual.widgets import DataTable

    from cockpit.app.formatting import status_text
    from cockpit.app.widgets.runs_table import NARROW, RunsTable

    samples = [
        Text("plain"),
        Text(""),
        Text("1.297", style="#e5c07b"),
        Text.assemble(("◆", "bold #e5c07b"), ("└ ", "dim"), "blobs·aaaa"),
        status_text("running", "● running"),
        Text("  10%", style="bold"),
    ]

    class Table(App):
        def compose(self):
            yield RunsTable()

    async def go():
        app = Table()
        async with app.run_test(size=(80, 12)) as pilot:
            table = app.query_one(RunsTable)
            rows = [
                (f"r{i}", {c.key: samples[(i + j) % len(samples)] for j, c in enumerate(NARROW)})
                for i in range(len(samples))
            ]
            table.show(rows, 80)
            await pilot.pause()
            checked = 0
            for base in (table.rich_style, Style(color="red", bgcolor="black", bold=True)):
                for row in range(len(rows)):
                    for col, column in enumerate(NARROW):
                        for cursor, hover in ((False, False), (True, False), (False, True)):
                            value = table.get_cell_at((row, col))
                            ours = table._one_line_cell(
                                row, col, value, base, column.width, cursor, hover
                            )
                            theirs = DataTable._render_cell(
                                table, row, col, base, column.width, cursor, hover
                            )
                            assert ours is not None
                            assert [list(line) for line in ours] == [
                                list(line) for line in theirs
                            ], (row, col, cursor, hover)
                            checked += 1
            assert checked == 2 * len(rows) * len(NARROW) * 3

    asyncio.run(go())


# ---- views repaint once per window, plots lay their frame out once ---------------------------


def test_a_cadence_folds_a_burst_into_one_call_and_a_user_action_shows_at_once():
    import asyncio

    from textual.app import App
    from textual.widget import Widget

    from cockpit.app.widgets.plot import Cadence

    shown: list[int] = []

    class Host(App):
        def compose(self):
            yield Widget()

    async def go():
        app = Host()
        async with app.run_test() as pilot:
            widget = app.query_one(Widget)
            cadence = Cadence(widget, lambda: shown.append(1), lambda: 0.2)
            cadence.request()  # nothing shown for a while: at once
            assert cadence.calls == 1
            for _ in range(50):  # a burst inside the window: one call, at its end
                cadence.request()
            assert cadence.calls == 1 and cadence._pending is not None
            await wait_until(pilot, lambda: cadence.calls == 2, what="the folded call")
            assert cadence._pending is None  # nothing else scheduled
            cadence.request(within=5.0)  # news that can ride along with the next call
            assert cadence.calls == 2 and cadence._pending is not None
            cadence.now()  # the user acted: shown now, the pending call folded in
            assert cadence.calls == 3 and cadence._pending is None
            cadence.request(within=5.0)
            due = cadence._due
            cadence.request()  # news that cannot wait moves the call earlier
            assert cadence._due < due
            await wait_until(pilot, lambda: cadence.calls == 4, what="the earlier call")
            assert cadence._pending is None and len(shown) == 4

    asyncio.run(go())


def test_the_run_view_shows_a_new_point_and_folds_bursts_of_news(lab):
    """A step appended to a live run shows in the run view; a burst of history and runs
    news costs at most two passes (one now, one at the end of the window), not one each."""
    import asyncio

    from cockpit.app.screens.run import RunScreen
    from cockpit.app.widgets.curves import CurvesView, LossPlot
    from cockpit.app.widgets.runs_table import RunsTable

    workspace, ids = lab

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await settled(pilot, 7)
            table = app.screen.query_one(RunsTable)
            while table.selected_key() != ids["live"]:
                await pilot.press("j")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="run view")
            await histories_loaded(pilot)
            screen = app.screen
            bar = screen.query_one("#stage-bar")
            plot = screen.query_one(LossPlot)
            curves = screen.query_one(CurvesView)
            await wait_until(pilot, lambda: "1\u2009500 steps" in str(bar.render()), what="bar")
            history = curves.history
            folder = RunFolder(workspace / ids["live"])
            stage = history.stage_names.index(curves.stage)
            out = StepsAppender(folder.file("steps.bin"))
            out.append_many(loss_rows(range(1501, 1601), stage))  # 100 new steps
            out.close()
            await wait_until(pilot, lambda: "1\u2009600 steps" in str(bar.render()), what="new")
            await wait_until(pilot, lambda: plot._key[3] == plot.revision, what="the plot")
            calls = screen.cadence.calls
            for _ in range(30):
                app.history_changed.publish(ids["live"])
                app.runs_changed.publish(app.runs)
            await wait_until(pilot, lambda: screen.cadence._pending is None, what="the pass")
            assert 1 <= screen.cadence.calls - calls <= 2

    asyncio.run(go())


def test_a_plot_whose_axes_stand_still_copies_its_frame_and_keeps_its_unchanged_rows():
    """New data inside the same axes: plotext does not lay the frame out again, the rows
    the data did not touch keep their strips, and the picture is what a fresh build draws."""
    import asyncio

    from textual.app import App

    from cockpit.app.widgets.plot import CachedPlot

    class Dots(CachedPlot):
        points = ((1.0, 1.0),)

        def draw(self, plt, width, height):
            box = (0.0, 10.0, 0.0, 10.0)
            set_step_axis(plt, 0.0, 10.0)
            set_value_axis(plt, 0.0, 10.0, log=False)
            y_lo, y_hi, _ = value_ticks(0.0, 10.0, log=False)
            box = (0.0, 10.0, y_lo, y_hi)
            anchor_axes(plt, box)
            xs, ys = [p[0] for p in self.points], [p[1] for p in self.points]
            return lambda matrix: raster(matrix, [Series(xs, ys, (200, 100, 50))], box, "braille")

    class Host(App):
        def compose(self):
            yield Dots()

    async def go():
        app = Host()
        async with app.run_test(size=(60, 20)) as pilot:
            plot = app.query_one(Dots)
            first = plot.text()
            strips = list(plot._strips)
            assert plot.builds == 1 and plot.frames == 1
            plot.points = ((1.0, 1.0), (9.0, 9.0))  # a point near the top right
            plot.redraw_now()
            await pilot.pause()
            assert plot.builds == 2 and plot.frames == 1  # the frame was copied
            assert plot.text() != first
            kept = sum(a is b for a, b in zip(strips, plot._strips))
            assert 0 < kept < len(strips)  # the untouched rows kept their strips
            copied = [(s.text, list(s)) for s in plot._strips]
            plot._frame = None  # the same data, the frame laid out by plotext from scratch
            plot.redraw_now()
            await pilot.pause()
            assert plot.builds == 3 and plot.frames == 2
            assert [(s.text, list(s)) for s in plot._strips] == copied

    asyncio.run(go())


def test_the_collector_is_back_on_once_the_first_frame_is_out(tmp_path):
    """run_app starts the app with the garbage collector off (the start allocates nothing
    that dies); the app turns it on again, with the start's objects frozen, after the first
    frame — a collector left off would let a long watch grow without bound."""
    import asyncio
    import gc

    from cockpit.app.main import CockpitApp

    async def go():
        app = CockpitApp(tmp_path)
        app.resume_gc = True
        gc.disable()
        try:
            async with app.run_test(size=(100, 30)) as pilot:
                await wait_until(pilot, gc.isenabled, what="the collector")
                assert not app.resume_gc and gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()
            gc.enable()

    asyncio.run(go())
