"""``?``: every key of the app, listed from the same tables the screens bind."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from cockpit.app import keys


def section_table(sections: list[tuple[str, list[Binding]]], moves: bool) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold #e5c07b", no_wrap=True, justify="right")
    table.add_column()
    if moves:
        for key, what in keys.MOVES:
            table.add_row(key, what)
    for section, bindings in sections:
        if table.row_count:
            table.add_row("", "")
        table.add_row("", Text(section, style="bold underline"))
        for binding in bindings:
            table.add_row(keys.key_label(binding), binding.description)
    return table


def help_table() -> Table:
    """Every key, in two columns (a 30-line terminal shows nearly all of them at once)."""
    right_side = ("run view", "compare view", "new run / fork dialogs")
    left = [s for s in keys.HELP_SECTIONS if s[0] not in right_side]
    right = [s for s in keys.HELP_SECTIONS if s[0] in right_side]
    outer = Table.grid(padding=(0, 4))
    outer.add_column(vertical="top")
    outer.add_column(vertical="top")
    outer.add_row(section_table(left, moves=True), section_table(right, moves=False))
    note = Table.grid()
    note.add_column()
    note.add_row(outer)
    note.add_row("")
    note.add_row(
        Text(
            "COCKPIT_MARKERS=block for fonts without braille · "
            "TEXTUAL_COLOR_SYSTEM=truecolor when COLORTERM is not forwarded",
            style="dim",
        )
    )
    return note


class HelpScreen(ModalScreen[None]):
    """Closes on escape, q or ?."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "close", key_display="esc"),
        Binding("j,down", "scroll(1)", "scroll down", show=False),
        Binding("k,up", "scroll(-1)", "scroll up", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="help", classes="dialog"):
            yield Label("keys", classes="dialog-title")
            with VerticalScroll():
                yield Static(help_table())
            yield Static(Text("esc / q / ? close · j k scroll", style="dim"), classes="dialog-keys")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, lines: int) -> None:
        self.query_one(VerticalScroll).scroll_relative(y=lines, animate=False)
