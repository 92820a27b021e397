"""Compare: rank a group of runs by a val metric, show what each changed against the base,
and overlay the curves of the marked runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer
from textual_plotext.plot import Plot

from cockpit.app import formatting as fmt
from cockpit.app import keys
from cockpit.app.history import RunHistory
from cockpit.app.messages import RunState
from cockpit.app.screens.base import CockpitScreen
from cockpit.app.settings import ViewSettings
from cockpit.app.widgets.curves import Figure, Line, buckets_for, series_line, swatch
from cockpit.app.widgets.live_text import LiveText
from cockpit.app.widgets.plot import CachedPlot
from cockpit.app.widgets.vim_table import VimTable
from engine.torchfree.tasks import HIGHER_IS_BETTER

PALETTE = [
    (97, 175, 239),
    (229, 160, 80),
    (152, 195, 121),
    (198, 120, 221),
    (224, 108, 117),
    (86, 182, 194),
    (229, 192, 123),
    (190, 190, 190),
]
CURVE_KINDS = ("train", "val", "metric")
"""What the overlay draws: smoothed train loss, smoothed val-batch loss, the ranking metric."""
TOP_WHEN_UNMARKED = 3


def metric_value(state: RunState, metric: str) -> float:
    """The run's latest full-val value of ``metric`` (val_loss falls back to the val batch)."""
    row = state.last_eval or {}
    value = row.get(metric)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if metric == "val_loss":
        return state.snapshot.val_loss
    return math.nan


def rank(runs: Sequence[RunState], metric: str) -> list[RunState]:
    """Best first; runs without the metric last."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    present = [r for r in runs if math.isfinite(metric_value(r, metric))]
    missing = [r for r in runs if not math.isfinite(metric_value(r, metric))]
    present.sort(key=lambda r: metric_value(r, metric), reverse=higher)
    return present + missing


def split_overrides(runs: Sequence[RunState]) -> tuple[list[str], dict]:
    """(keys whose values differ between the runs, the overrides every run shares)."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.snapshot.overrides))
    varying, shared = [], {}
    for key in keys:
        values = {repr(r.snapshot.overrides.get(key, "<base>")) for r in runs}
        if len(values) > 1:
            varying.append(key)
        else:
            shared[key] = runs[0].snapshot.overrides[key]
    return varying, shared


def metric_choices(runs: Sequence[RunState]) -> list[str]:
    names: dict[str, None] = {"val_loss": None}
    for r in runs:
        for key, value in (r.last_eval or {}).items():
            if key in HIGHER_IS_BETTER and isinstance(value, (int, float)):
                names[key] = None
    main = [r.snapshot.metric_name for r in runs if r.snapshot.metric_name]
    ordered = [*dict.fromkeys(main), *names]
    return list(dict.fromkeys(ordered))


class OverlayPlot(CachedPlot):
    """One line per run: the chosen curve of each run's latest stage, on one step axis."""

    def __init__(self, settings: ViewSettings, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.settings = settings
        self.histories: list[RunHistory] = []
        self.kind = "train"
        self.metric = "val_loss"
        self._prepared: tuple[int, Figure] | None = None

    def invalidate(self) -> None:
        self._prepared = None

    def _log(self) -> bool:
        return self.settings.log_scale and self.kind != "metric"

    def visible_key(self) -> object:
        width, height = self.size
        figure = self.figure(width)
        self._prepared = (width, figure)
        return figure.visible_key(
            width,
            height,
            self.settings.plotext_marker,
            log=self._log(),
            unit_range=self.kind == "metric",
        )

    def draw(self, plt: Plot, width: int, height: int):
        prepared = self._prepared
        figure = prepared[1] if prepared and prepared[0] == width else self.figure(width)
        return figure.plot(
            plt, self.settings.plotext_marker, log=self._log(), unit_range=self.kind == "metric"
        )

    def figure(self, width: int) -> Figure:
        figure = Figure()
        buckets = buckets_for(width, self.settings)
        log = self.settings.log_scale and self.kind != "metric"
        for n, history in enumerate(self.histories):
            color = PALETTE[n % len(PALETTE)]
            name = history.latest_stage()
            with history.lock:
                stage = history.stages.get(name) if name else None
                if stage is None:
                    continue
                if self.kind == "metric":
                    xs, ys = stage.eval_series(self.metric)
                    line = Line(xs, ys, color) if xs else None
                else:
                    series = stage.train if self.kind == "train" else stage.val
                    line = series_line(series, True, buckets, color, log)
                    if stage.inherited is not None:  # a warm fork: its parent's part first
                        parent = (
                            stage.inherited.train if self.kind == "train" else stage.inherited.val
                        )
                        before = series_line(parent, True, buckets, color, log)
                        if before is not None and line is not None:
                            line = Line(before.xs + line.xs, before.ys + line.ys, color)
            if line is not None:
                figure.lines.append(line)
        return figure


class CompareScreen(CockpitScreen):
    """A group of runs ranked, their changes against the base, the marked runs' curves."""

    BINDINGS = keys.COMPARE_VIEW

    def __init__(self, group: str | None) -> None:
        super().__init__()
        self.group = group
        """An ablation group's name, or '(marked)' / '(all runs)'."""
        self.metric: str | None = None
        self.kind = "train"
        self._overlaid: list[str] = []
        self._stale = False

    def compose_body(self) -> ComposeResult:
        yield LiveText(id="compare-bar")
        yield VimTable(id="ranking", cursor_type="row", cell_padding=1)
        yield LiveText(id="compare-base")
        yield LiveText(id="overlay-legend")
        yield OverlayPlot(self.cockpit.settings, id="overlay")
        yield Footer(compact=True)

    @property
    def table(self) -> DataTable:
        return self.query_one("#ranking", DataTable)

    def on_mount(self) -> None:
        super().on_mount()
        app = self.cockpit
        app.runs_changed.subscribe(self, self.runs_changed, immediate=True)
        app.history_changed.subscribe(self, self.history_changed, immediate=True)
        self.refresh_view()
        self.table.focus()

    def runs_changed(self, runs: tuple[RunState, ...]) -> None:
        if not self.on_top:  # under a run view: catch up when it closes
            self._stale = True
            return
        self.refresh_view()

    def on_screen_resume(self) -> None:
        if self._stale:
            self._stale = False
            self.refresh_view()

    def on_unmount(self) -> None:
        for run_id in self._overlaid:
            self.cockpit.release_history(run_id, self)

    # ---- what is compared ------------------------------------------------------------------
    def groups(self) -> list[str]:
        runs = self.cockpit.runs
        names = sorted({r.snapshot.group for r in runs if r.snapshot.group})
        return [*names, "(marked)", "(all runs)"]

    def members(self) -> list[RunState]:
        runs = self.cockpit.runs
        if self.group == "(marked)":
            return [r for r in runs if r.run_id in self.cockpit.marked]
        if self.group == "(all runs)" or self.group is None:
            return list(runs)
        return [r for r in runs if r.snapshot.group == self.group]

    def selected_run_id(self) -> str | None:
        table = self.table
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def refresh_view(self) -> None:
        if not self.is_attached:
            return
        members = self.members()
        choices = metric_choices(members)
        if self.metric not in choices:
            self.metric = choices[0]
        ranked = rank(members, self.metric)
        varying, shared = split_overrides(members) if members else ([], {})
        self._fill_table(ranked, varying)
        self._show_bar(len(members))
        base = Text("base: ", style="dim")
        base.append(
            fmt.overrides_text(shared) or "the preset as written",
            style="#98c379" if shared else "dim",
        )
        presets = sorted({r.snapshot.preset for r in members})
        if presets:
            base.append(f" · preset {', '.join(presets)}", style="dim")
        self.query_one("#compare-base", LiveText).show(base)
        self._update_overlay(ranked)

    def _fill_table(self, ranked: list[RunState], varying: list[str]) -> None:
        table = self.table
        selected = self.selected_run_id()
        table.clear(columns=True)
        metric = fmt.METRIC_SHORT.get(self.metric or "", self.metric or "")
        from cockpit.ablate import baseline_bands  # `ablate --tricks`: each run vs the baseline

        bands = baseline_bands(ranked, self.metric or "val_loss")
        for key, label in (
            ("rank", "#"),
            ("mark", ""),
            ("run", "run"),
            ("status", "status"),
            ("step", "step"),
            ("value", f"{metric} ▼"),
            *([("band", "vs baseline ± noise")] if bands else []),
            ("changes", "overrides vs base"),
        ):
            table.add_column(label, key=key)
        marked = self.cockpit.marked
        for i, state in enumerate(ranked, 1):
            s = state.snapshot
            value = metric_value(state, self.metric or "val_loss")
            table.add_row(
                str(i) if math.isfinite(value) else "-",
                Text("◆" if state.run_id in marked else " ", style="bold #e5c07b"),
                fmt.short_id(state.run_id),
                fmt.status_text(fmt.display_status(s)),
                fmt.count(s.step) if s.step else "-",
                fmt.number(value),
                *([bands.get(state.run_id, "")] if bands else []),
                Text(fmt.overrides_text(s.overrides, varying) or "base", style="#98c379"),
                key=state.run_id,
            )
        if selected is not None:
            keys_now = [str(r.run_id) for r in ranked]
            if selected in keys_now:
                table.move_cursor(row=keys_now.index(selected), animate=False)

    def _show_bar(self, members: int) -> None:
        bar = Text()
        bar.append(" compare ", style="bold reverse")
        label = {"(marked)": "the marked runs", "(all runs)": "all runs"}.get(
            self.group or "", f"group {self.group}"
        )
        bar.append(f"  {label} (g)", style="bold")
        bar.append(f" · {members} run{'s' if members != 1 else ''}", style="dim")
        bar.append(f" · rank by {self.metric} (r) · overlay {self.kind} (v)", style="dim")
        self.query_one("#compare-bar", LiveText).show(bar)

    def _update_overlay(self, ranked: list[RunState]) -> None:
        app = self.cockpit
        marked = [r.run_id for r in ranked if r.run_id in app.marked]
        chosen = marked or [r.run_id for r in ranked[:TOP_WHEN_UNMARKED]]
        if chosen != self._overlaid:
            for run_id in set(self._overlaid) - set(chosen):
                app.release_history(run_id, self)
            self._overlaid = chosen
        histories = [
            h for h in (app.acquire_history(run_id, self) for run_id in chosen) if h is not None
        ]
        plot = self.query_one(OverlayPlot)
        plot.histories, plot.kind, plot.metric = histories, self.kind, self.metric or "val_loss"
        plot.request_redraw()
        legend = Text()
        for n, run_id in enumerate(chosen):
            legend += swatch(PALETTE[n % len(PALETTE)], fmt.short_id(run_id))
        if not marked:
            legend.append(f"(the top {len(chosen)}: mark runs with space to choose)", style="dim")
        self.query_one("#overlay-legend", LiveText).show(legend)

    def history_changed(self, run_id: str) -> None:
        if run_id not in self._overlaid:
            return
        if not self.on_top:
            self._stale = True
            return
        self.query_one(OverlayPlot).request_redraw()

    def apply_settings(self, settings: ViewSettings) -> None:
        plot = self.query_one(OverlayPlot)
        plot.settings = settings
        plot.redraw_now()

    def marks_changed(self) -> None:
        self.refresh_view()

    # ---- keys ------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_rank_metric(self) -> None:
        choices = metric_choices(self.members())
        at = choices.index(self.metric) if self.metric in choices else -1
        self.metric = choices[(at + 1) % len(choices)]
        self.refresh_view()

    def action_group(self) -> None:
        groups = self.groups()
        at = groups.index(self.group) if self.group in groups else -1
        self.group = groups[(at + 1) % len(groups)]
        self.refresh_view()

    def action_curve_kind(self) -> None:
        self.kind = CURVE_KINDS[(CURVE_KINDS.index(self.kind) + 1) % len(CURVE_KINDS)]
        self.refresh_view()
        self.query_one(OverlayPlot).redraw_now()

    def action_smoothing(self, delta: int) -> None:
        self.cockpit.change_smoothing(delta)
