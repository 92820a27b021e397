"""Content, not only pixels: what the app's views SAY, asserted as text.

The SVG snapshots pin the look; they do not say which part of a screen is wrong, and a
snapshot updated in a hurry pins a wrong screen as right. These tests read the words:
- the ladder tab shows every stage of a real engine run's summary.json with its verdict,
  its reason, and each check's name, verdict and detail (the summary is written by the
  engine's own init stage on a planted bug — not by a fixture);
- the compare view ranks a group best first by the chosen metric, with the values that the
  runs' evals.jsonl hold, and re-ranks when the metric changes direction;
- the log-scale key makes the y axis logarithmic: equal ratios sit at equal distances (the
  label rows follow log10 of their values), where the linear axis follows the values.
Every wait is on a condition (``wait_until``), never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path

from rich.console import Console

from cockpit.app import formatting as fmt
from cockpit.app.screens.compare import CompareScreen
from cockpit.app.screens.run import RunScreen
from cockpit.app.widgets.curves import LossPlot
from cockpit.app.widgets.ladder import LadderView
from tests.app.conftest import histories_loaded, make_app, settled, wait_until
from tests.app.test_keys import RUNS, select
from tests.conftest import ZOO, run_inprocess


def rendered(widget, width: int = 240) -> str:
    """A Static's content as the terminal would show it, wide enough not to wrap."""
    console = Console(width=width, record=True, color_system=None)
    console.print(widget.content)
    return console.export_text()


def glyph(status: str) -> str:
    return fmt.verdict_glyph(status).plain


# ---------------------------------------------------------------- the ladder tab


def test_the_ladder_tab_says_each_stage_and_check_of_a_real_run(tmp_path, monkeypatch):
    """A real init stage on a planted bug (13 of 256 val inputs also in train: a fail), then
    the app's ladder tab on that run folder."""
    monkeypatch.chdir(tmp_path)
    ws = Path("runs")
    ws.mkdir()
    overrides = {"data._target_": "edges.blobs_sharing", "data.shared": 13}
    code, summary, _folder = run_inprocess(
        ZOO / "blobs.yaml", ws, overrides=overrides, stages=["init", "overfit_one"]
    )
    assert code == 1 and summary["status"] == "failed"
    (init,) = summary["stages"]
    assert init["status"] == "fail" and len(init["checks"]) >= 5

    async def go():
        app = make_app(ws)
        async with app.run_test(size=(160, 60)) as pilot:
            await wait_until(pilot, lambda: len(app.runs) == 1, what="the run")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await pilot.press("2")
            ladder = app.screen.query_one(LadderView)
            await wait_until(pilot, lambda: "init" in rendered(ladder), what="the ladder")
            return rendered(ladder)

    text = asyncio.run(go())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    # the run's verdict and why, first
    assert lines[0] == f"failed: {summary['reason']}".strip()
    # the stage: its verdict's glyph, its name and its reason on one row
    assert any(
        line.startswith(f"{glyph('fail')} init") and line.endswith(" ".join(init["reason"].split()))
        for line in lines
    ), text
    # every check: glyph, name and detail, in the engine's order
    rows = []
    for c in init["checks"]:
        want = f"{glyph(c['status'])} {c['name']} {' '.join(c['detail'].split())}"
        hits = [i for i, line in enumerate(lines) if line == want]
        assert hits, f"no row {want!r} in\n{text}"
        rows.append(hits[0])
    assert rows == sorted(rows)
    overlap = next(c for c in init["checks"] if c["name"] == "train_val_overlap")
    assert overlap["status"] == "fail" and "13 of 256 val inputs" in overlap["detail"]
    # the metrics, by name, with the app's number format
    metrics = next(line for line in lines if line.startswith("metrics"))
    assert f"overlap_fraction {fmt.number(init['metrics']['overlap_fraction'])}" in metrics
    # a stage the failure stopped is not run, and says so
    assert any(
        line.startswith(f"{glyph('pending')} overfit_one") and line.endswith("not run yet")
        for line in lines
    ), text


# ---------------------------------------------------------------- the compare ranking


def _last_evals(workspace: Path) -> dict[str, dict]:
    out = {}
    for path in workspace.glob("*/evals.jsonl"):
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if rows:
            out[path.parent.name] = rows[-1]
    return out


def test_compare_ranks_the_group_best_first_by_the_chosen_metric(lab):
    workspace, ids = lab
    evals = _last_evals(workspace)
    shown: dict[str, list] = {}

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(140, 40)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "live")
            await pilot.press("c")
            await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
            screen = app.screen
            while screen.group != "lr-sweep":
                await pilot.press("g")
            await wait_until(pilot, lambda: screen.table.row_count >= 3, what="the group")
            for metric in ("accuracy", "val_loss"):
                while screen.metric != metric:
                    await pilot.press("r")
                table = screen.table
                shown[metric] = [
                    (
                        str(row_key.value),
                        str(table.get_cell(row_key, "rank")),
                        str(table.get_cell(row_key, "value")),
                    )
                    for row_key in table.rows
                ]

    asyncio.run(go())
    members = {run for run, _, _ in shown["accuracy"]}
    assert {ids["live"], ids["fork"], ids["pruned"]} <= members
    for metric, higher in (("accuracy", True), ("val_loss", False)):
        rows = shown[metric]
        with_value = [(run, rank, v) for run, rank, v in rows if rank != "-"]
        # ranks 1..n in table order, then the runs that lack the metric
        assert [rank for _, rank, _ in with_value] == [
            str(i) for i in range(1, len(with_value) + 1)
        ]
        assert rows[: len(with_value)] == with_value
        # each value is the run's own last evaluation, in the app's format
        values = []
        for run, _, v in with_value:
            own = evals.get(run, {}).get(metric)
            if own is not None:
                assert v == fmt.number(own), (metric, run, v, own)
            values.append(float(v))
        # best first: descending for accuracy, ascending for a loss
        assert values == sorted(values, reverse=higher), (metric, values)
        assert len(set(values)) > 1  # a ranking, not a tie
    # the accuracy order is the one the runs' own evaluations give, independently computed
    # (compared as values: two runs may tie, and a tie may show in either order)
    ranked = [evals[r]["accuracy"] for r, rank, _ in shown["accuracy"] if rank != "-"]
    assert ranked == sorted(ranked, reverse=True)
    assert len(ranked) == sum(1 for r in members if "accuracy" in evals.get(r, {}))
    # and the loss order is not simply the reverse of it: each metric ranks on its own
    assert [r for r, *_ in shown["val_loss"]] != [r for r, *_ in shown["accuracy"]]


# ---------------------------------------------------------------- the log-scale axis

LABEL = re.compile(r"^\s*([0-9.eE+-]+)\s*[┤│├┼]")


def y_labels(plot_text: str) -> list[tuple[int, float]]:
    """(row, value) of each labelled tick of the plot's y axis."""
    out = []
    for row, line in enumerate(plot_text.splitlines()):
        m = LABEL.match(line)
        if m:
            try:
                out.append((row, float(m.group(1))))
            except ValueError:
                continue
    return out


def spacing_follows(labels: list[tuple[int, float]], f) -> bool:
    """Whether the rows of the labels are an affine function of f(value), within a row."""
    (r0, v0), (r1, v1) = labels[0], labels[-1]
    scale = (r1 - r0) / (f(v1) - f(v0))
    return all(abs(r0 + scale * (f(v) - f(v0)) - r) <= 1.0 for r, v in labels)


def test_the_log_scale_key_makes_the_y_axis_logarithmic(lab):
    workspace, _ = lab
    texts: dict[str, str] = {}

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 40)) as pilot:
            await settled(pilot, RUNS)
            await select(pilot, "live")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            plot = app.screen.query_one(LossPlot)
            await wait_until(pilot, lambda: len(y_labels(plot.text())) >= 3, what="linear ticks")
            texts["linear"] = plot.text()
            builds = plot.builds
            await pilot.press("l")
            await wait_until(pilot, lambda: plot.builds > builds, what="the log plot")
            texts["log"] = plot.text()
            await pilot.press("l")
            await wait_until(pilot, lambda: plot.text() != texts["log"], what="linear again")
            texts["back"] = plot.text()

    asyncio.run(go())
    linear, log = y_labels(texts["linear"]), y_labels(texts["log"])
    assert len(linear) >= 3 and len(log) >= 3, texts
    # linear: equal steps of value at equal distances; log: equal ratios at equal distances
    assert spacing_follows(linear, lambda v: v)
    # (a zero or negative label alone shows the linear axis is not a log one)
    assert any(v <= 0 for _, v in linear) or not spacing_follows(linear, math.log10)
    assert all(v > 0 for _, v in log)
    assert spacing_follows(log, math.log10), texts["log"]
    assert not spacing_follows(log, lambda v: v), texts["log"]
    # the log axis labels 1, 2, 5 × 10^k (or finer mantissas over a narrow range)
    for _, v in log:
        mantissa = v / 10 ** math.floor(math.log10(v))
        assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 1.5, 2, 3, 5, 7)), v
    # and back: the same linear axis as before
    assert y_labels(texts["back"]) == linear
