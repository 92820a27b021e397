"""``n``: pick a preset, edit overrides, ``ctrl+s`` starts the run, ``escape`` cancels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.syntax import Syntax
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from cockpit.app import keys
from cockpit.app.presets import PresetChoice, parse_overrides, parse_stages
from cockpit.app.widgets.vim_table import VimOptionList
from engine.torchfree.preset import Preset, PresetError, load

OVERRIDES_HINT = "KEY=VALUE lines, VALUE in YAML"


@dataclass(frozen=True)
class LaunchRequest:
    """What the dialog answers: a validated preset, its overrides and the stages to run."""

    preset: Preset
    overrides: dict[str, Any]
    stages: list[str] | None


class NewRunDialog(ModalScreen[LaunchRequest | None]):
    """A preset picker with an overrides box; mistakes show as one sentence, in the dialog."""

    BINDINGS = keys.DIALOG

    def __init__(self, choices: list[PresetChoice]) -> None:
        super().__init__()
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label("new run", classes="dialog-title")
            with Horizontal(id="picker-row"):
                with Vertical(id="picker-column"):
                    yield Label("preset", classes="field-label")
                    yield VimOptionList(
                        *(
                            Option(Text.assemble(c.label, (f"  {c.origin}", "dim")), id=str(i))
                            for i, c in enumerate(self.choices)
                        ),
                        id="presets",
                        compact=True,
                    )
                with VerticalScroll(id="preset-preview"):
                    yield Static(id="preview-text")
            yield Label(f"overrides — {OVERRIDES_HINT}", classes="field-label")
            yield TextArea(
                id="overrides", soft_wrap=False, compact=True, placeholder="optimizer.lr=3e-4"
            )
            yield Label(
                "stages — comma-separated; empty runs the preset's ladder", classes="field-label"
            )
            yield Input(placeholder="e.g. train  or  init,overfit_one", id="stages", compact=True)
            yield Static(id="error", classes="dialog-error")
            yield Static(
                Text("ctrl+s start · esc cancel · tab next field", style="dim"),
                classes="dialog-keys",
            )

    def on_mount(self) -> None:
        self.query_one("#overrides", TextArea).cursor_blink = False
        self.query_one("#stages", Input).cursor_blink = False
        presets = self.query_one("#presets", OptionList)
        if self.choices:
            presets.highlighted = 0
        else:
            self.show_error("no presets found in ./presets or the workspace's presets/ folder")
        presets.focus()

    @on(OptionList.OptionHighlighted, "#presets")
    def _preview(self, event: OptionList.OptionHighlighted) -> None:
        choice = self.choices[int(event.option.id or 0)]
        try:
            text = choice.path.read_text()
        except OSError as e:
            text = f"# cannot read {choice.path}: {e.strerror}"
        self.query_one("#preview-text", Static).update(
            Syntax(text, "yaml", theme="ansi_dark", background_color="default", word_wrap=True)
        )

    @on(OptionList.OptionSelected, "#presets")
    def _picked(self) -> None:
        self.query_one("#overrides", TextArea).focus()

    def show_error(self, message: str) -> None:
        self.query_one("#error", Static).update(Text(message, style="bold #f07070"))

    def selected(self) -> PresetChoice | None:
        index = self.query_one("#presets", OptionList).highlighted
        return self.choices[index] if index is not None and self.choices else None

    def action_start(self) -> None:
        choice = self.selected()
        if choice is None:
            self.show_error("pick a preset first")
            return
        try:
            overrides = parse_overrides(self.query_one("#overrides", TextArea).text)
            stages = parse_stages(self.query_one("#stages", Input).value)
            preset = load(choice.path, overrides)
        except PresetError as e:
            self.show_error(str(e))
            return
        self.dismiss(LaunchRequest(preset, overrides, stages))

    def action_cancel(self) -> None:
        self.dismiss(None)
