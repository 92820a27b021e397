"""The runs table: one row per run, updated cell by cell as runs move.

Rows and columns carry keys, and a tick that only changes numbers costs ``update_cell`` on
the cells that changed; the table is rebuilt only when the set or the order of rows changes
(a new run, a sort, a filter) or the terminal crosses a width breakpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from cockpit.app import formatting as fmt
from cockpit.app.messages import RunState
from cockpit.app.verdict import is_data_bound
from cockpit.app.widgets.vim_table import VimTable
from engine.torchfree.tasks import HIGHER_IS_BETTER

_JOIN = Text("\n")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    """Cells, including the one-space gap to the next column."""
    right: bool = False
    """Right-aligned (numbers)."""


NARROW = (
    Column("run", "run", 18),
    Column("status", "status", 12),
    Column("stage", "stage", 14),
    Column("step", "step", 7, right=True),
    Column("train", "train", 7, right=True),
    Column("val", "val", 7, right=True),
    Column("metric", "metric", 10, right=True),
    Column("wait", "wait", 4, right=True),
)
"""80 columns with the scrollbar. The preset is in the run's name and GPU utilization in the
GPU panel; the age is in the details line."""

MEDIUM = (
    Column("run", "run", 20),
    Column("status", "status", 13),
    Column("stage", "stage", 15),
    Column("step", "step", 8, right=True),
    Column("train", "train", 8, right=True),
    Column("val", "val", 8, right=True),
    Column("metric", "metric", 11, right=True),
    Column("wait", "wait", 5, right=True),
    Column("gpu", "gpu", 5, right=True),
    Column("age", "age", 5, right=True),
)

WIDE = (
    Column("run", "run", 28),
    Column("preset", "preset", 12),
    Column("status", "status", 13),
    Column("stage", "stage", 18),
    Column("step", "step", 9, right=True),
    Column("train", "train", 8, right=True),
    Column("val", "val", 8, right=True),
    Column("metric", "metric", 11, right=True),
    Column("wait", "wait", 5, right=True),
    Column("gpu", "gpu", 5, right=True),
    Column("age", "age", 5, right=True),
)


def fits_from(columns: tuple[Column, ...]) -> int:
    """The terminal width a column set needs: its columns and the scrollbar."""
    return sum(c.width for c in columns) + 1


MEDIUM_FROM = fits_from(MEDIUM)
WIDE_FROM = fits_from(WIDE)

SORTS = ("tree", "status", "step", "train", "val", "metric", "wait", "age")
"""What ``s`` cycles through; 'tree' lists forks under their parents."""
STATUS_ORDER = {
    "running": 0,
    "queued": 1,
    "failed": 2,
    "error": 3,
    "killed": 4,
    "pruned": 5,
    "passed": 6,
}


def sort_runs(
    rows: Sequence[tuple[RunState, str]], key: str, reverse: bool
) -> list[tuple[RunState, str]]:
    """Rows in ``key`` order (best first for losses and metrics); missing values always last."""
    if key == "tree":
        return list(reversed(rows)) if reverse else list(rows)

    def value(row: tuple[RunState, str]) -> float:
        s = row[0].snapshot
        if key == "status":
            return STATUS_ORDER.get(fmt.display_status(s), 9)
        if key == "age":
            return -s.created
        if key == "metric":
            higher = HIGHER_IS_BETTER.get(s.metric_name, True)
            return -s.metric if higher else s.metric
        return {
            "step": -float(s.step),
            "train": s.train_loss,
            "val": s.val_loss,
            "wait": -s.data_wait,
        }[key]

    present = [r for r in rows if not math.isnan(value(r))]
    missing = [r for r in rows if math.isnan(value(r))]
    present.sort(key=value, reverse=reverse)
    return present + missing


def queue_places(runs: Sequence[RunState]) -> dict[str, int]:
    """Each queued run's place in line: as its engine reports it, else by creation (the
    engines' queue is first come, first served)."""
    queued = sorted(
        (r for r in runs if r.snapshot.status == "queued"),
        key=lambda r: (r.snapshot.created, r.run_id),
    )
    return {r.run_id: r.queue_position or i + 1 for i, r in enumerate(queued)}


def stage_cell(state: RunState) -> Text:
    """'▶ train 2/3' while it runs, '✓ speed' or '✗ overfit_one' once its verdict landed."""
    s = state.snapshot
    if s.status == "running" and s.stage:
        total = len(s.stage_names)
        at = s.stage_names.index(s.stage) + 1 if s.stage in s.stage_names else len(s.verdicts) + 1
        return Text.assemble(
            fmt.verdict_glyph("running"),
            f" {s.stage}",
            (f" {at}/{total}" if total > 1 else "", "dim"),
        )
    if s.verdicts:
        name, verdict = s.verdicts[-1]
        return Text.assemble(fmt.verdict_glyph(verdict), f" {name}")
    return Text(s.stage or "-", style="dim")


def run_cells(
    state: RunState, prefix: str, *, marked: bool, stopping: bool, place: int | None, now: float
) -> dict[str, Text]:
    s = state.snapshot
    status = "stopping" if stopping else fmt.display_status(s)
    label = f"queued #{place}" if status == "queued" and place else status
    gpu = f"{s.gpu_util:.0f}%" if math.isfinite(s.gpu_util) else "-"
    slow = math.isfinite(s.data_wait) and is_data_bound(s.data_wait)
    return {
        "run": Text.assemble(
            ("◆" if marked else " ", "bold #e5c07b"), (prefix, "dim"), fmt.short_id(s.run_id)
        ),
        "preset": Text(s.preset),
        "status": fmt.status_text(status, label),
        "stage": stage_cell(state),
        "step": Text(fmt.compact_count(s.step) if s.step else "-"),
        "train": Text(fmt.compact_number(s.train_loss)),
        "val": Text(fmt.compact_number(s.val_loss)),
        "metric": Text(fmt.metric(s.metric_name, s.metric)),
        "wait": Text(fmt.share(s.data_wait), style="#e5c07b" if slow else ""),
        "gpu": Text(gpu),
        "age": Text(fmt.age(now - s.created) if s.created else "-"),
    }


class RunsTable(VimTable):
    """Every run of the workspace; the row key is the run id."""

    DEFAULT_CSS = """
    RunsTable { scrollbar-size-vertical: 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", cell_padding=0, zebra_stripes=False)
        self.columns_now: tuple[Column, ...] = ()
        self._row_keys: list[str] = []
        self._sort: tuple[str, bool] = ("tree", False)
        self._cells: dict[str, dict[str, Text]] = {}
        self._rendered: dict[tuple, tuple[object, list]] = {}

    def _render_cell(self, row_index, column_index, base_style, width, cursor=False, hover=False):
        """DataTable renders every visible cell again after any ``update_cell`` (its caches
        are keyed by an update counter): a tick that changed a few numbers re-rendered the
        whole table through Rich. Here a cell's rendering is kept while its value is the same
        object (``update_cell`` puts a new one in; unchanged cells keep theirs)."""
        if column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        column_key = self._column_locations.get_key(column_index)
        if row_index < 0:
            row_key, value = None, self.columns[column_key].label
        else:
            row_key = self._row_locations.get_key(row_index)
            value = self._data[row_key][column_key]
        key = (
            row_key,
            column_key,
            row_index,
            base_style,
            width,
            cursor,
            hover,
            self._show_hover_cursor,
            self._pseudo_class_state,
        )
        kept = self._rendered.get(key)
        if kept is not None and kept[0] is value:
            return kept[1]
        lines = None
        if row_index >= 0:
            lines = self._one_line_cell(
                row_index, column_index, value, base_style, width, cursor, hover
            )
        if lines is None:
            lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        if len(self._rendered) > 8192:
            self._rendered.clear()
        self._rendered[key] = (value, lines)
        return lines

    def _one_line_cell(
        self,
        row_index: int,
        column_index: int,
        value: object,
        base_style: Style,
        width: int,
        cursor: bool,
        hover: bool,
    ) -> list[list[Segment]] | None:
        """A body cell that is one line of Text no wider than its column, rendered straight
        to its segments: what DataTable's render through Rich (Styled(Padding(cell))) makes
        of it, segment for segment (tested against it), at a fraction of the cost — a live
        table renders a few dozen cells a second. None: anything else (DataTable renders
        it)."""
        if (
            type(value) is not Text
            or self.cell_padding
            or self.fixed_rows
            or self.fixed_columns
            or value.cell_len > width
            or value.justify not in (None, "default")
            or "\n" in value.plain
            or "\t" in value.plain
        ):
            return None
        base = base_style + Style.from_meta({"row": row_index, "column": column_index})
        component, post = self._get_styles_to_render_cell(
            False,
            False,
            False,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        pre = base + component
        line = []
        # as Text.__rich_console__ renders it: its own style becomes the first span
        for text, style, control in _JOIN.join([value]).render(self.app.console):
            if control:
                line.append(Segment(text, None, control))
                continue
            styled = pre + style  # Segment.apply_style's two passes: pre, then post
            line.append(Segment(text, styled + post if styled else post))
        pad = width - value.cell_len
        if pad:
            line.append(Segment(" " * pad, pre + post if pre else post))
        return [line]

    def column_set(self, width: int) -> tuple[Column, ...]:
        return WIDE if width >= WIDE_FROM else MEDIUM if width >= MEDIUM_FROM else NARROW

    def selected_key(self) -> str | None:
        if not self._row_keys or not 0 <= self.cursor_row < len(self._row_keys):
            return None
        return self._row_keys[self.cursor_row]

    def show(
        self,
        rows: list[tuple[str, dict[str, Text]]],
        width: int,
        sort: tuple[str, bool] = ("tree", False),
    ) -> None:
        """Make the table show ``rows`` (key, cells) in this order, touching only what changed.

        ``sort`` (column key, reversed) puts an arrow on that column's header."""
        columns = self.column_set(width)
        keys = [key for key, _ in rows]
        known = len(self._row_keys)
        if columns != self.columns_now or sort != self._sort:
            self._rebuild(rows, columns, sort)
            return
        if keys != self._row_keys:
            if known and keys[:known] == self._row_keys:
                self._append(rows[known:], columns)  # a large workspace arriving in batches
                rows = rows[:known]
            else:
                self._rebuild(rows, columns, sort)
                return
        for key, cells in rows:
            old = self._cells.get(key, {})
            for column in columns:
                cell = self._fit(cells[column.key], column)
                if old.get(column.key) != cell:
                    self.update_cell(key, column.key, cell)
                    old[column.key] = cell
            self._cells[key] = old

    def _fit(self, text: Text, column: Column) -> Text:
        cell = text.copy()
        cell.truncate(column.width - 1, overflow="ellipsis")
        if column.right:
            cell.pad_left(column.width - 1 - cell.cell_len)
        return cell

    def _append(self, rows: list[tuple[str, dict[str, Text]]], columns: tuple[Column, ...]) -> None:
        for key, cells in rows:
            fitted = {c.key: self._fit(cells[c.key], c) for c in columns}
            self._cells[key] = fitted
            self.add_row(*(fitted[c.key] for c in columns), key=key)
            self._row_keys.append(key)

    def _rebuild(
        self,
        rows: list[tuple[str, dict[str, Text]]],
        columns: tuple[Column, ...],
        sort: tuple[str, bool],
    ) -> None:
        selected = self.selected_key()
        self._rendered.clear()
        self.clear(columns=True)
        sort_column = "run" if sort[0] == "tree" else sort[0]
        for column in columns:
            label = Text((" " if column.key == "run" else "") + column.label, style="bold")
            if column.key == sort_column:
                label.append("▲" if sort[1] else "▼", style="bold #e5c07b")
            if column.right:
                label.pad_left(column.width - 1 - label.cell_len)
            self.add_column(label, width=column.width, key=column.key)
        self._cells = {}
        for key, cells in rows:
            fitted = {c.key: self._fit(cells[c.key], c) for c in columns}
            self._cells[key] = fitted
            self.add_row(*(fitted[c.key] for c in columns), key=key)
        self.columns_now = columns
        self._sort = sort
        self._row_keys = [key for key, _ in rows]
        if selected in self._row_keys:
            self.move_cursor(row=self._row_keys.index(selected), animate=False, scroll=True)
