"""``f``: a child of the selected run — its resolved preset plus overrides, optionally warm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, Static, TextArea

from cockpit.app import keys
from cockpit.app.formatting import count, overrides_text, short_id
from cockpit.app.presets import parse_overrides, parse_stages
from cockpit.app.screens.new_run import OVERRIDES_HINT
from cockpit.fork import parent_preset
from engine.torchfree.preset import PresetError, apply_overrides, validate
from engine.torchfree.runfolder import RunFolder


@dataclass(frozen=True)
class ForkRequest:
    overrides: dict[str, Any]
    warm: bool
    """Start from the parent's latest checkpoint (model and, where it fits, optimizer state)."""
    stages: list[str] | None
    """None: 'train' when warm, else the parent's stages."""


class ForkDialog(ModalScreen[ForkRequest | None]):
    """Overrides on top of the parent's resolved preset, and a warm-start toggle."""

    BINDINGS = keys.DIALOG

    def __init__(self, parent: RunFolder) -> None:
        super().__init__()
        self.parent_folder = parent
        self.checkpoint = parent.latest_checkpoint()

    def compose(self) -> ComposeResult:
        parent = self.parent_folder
        inherited = parent.summary().get("overrides") or {}
        with Vertical(id="dialog", classes="dialog"):
            yield Label(f"fork {short_id(parent.run_id)}", classes="dialog-title")
            if inherited:
                yield Static(
                    Text.assemble(("inherits ", "dim"), (overrides_text(inherited), "#98c379"))
                )
            yield Label(
                f"overrides on top of its resolved preset — {OVERRIDES_HINT}", classes="field-label"
            )
            yield TextArea(
                id="overrides", soft_wrap=False, compact=True, placeholder="optimizer.lr=1e-3"
            )
            if self.checkpoint:
                label = (
                    f"warm start from its checkpoint at step {count(self.checkpoint.get('step'))}"
                )
            else:
                label = "warm start (no checkpoint yet: only the train stage writes them)"
            yield Checkbox(
                label,
                value=bool(self.checkpoint),
                id="warm",
                disabled=not self.checkpoint,
                compact=True,
            )
            yield Label("stages — empty: train when warm, else the parent's", classes="field-label")
            yield Input(placeholder="e.g. train", id="stages", compact=True)
            yield Static(id="error", classes="dialog-error")
            with VerticalScroll(id="parent-preset"):
                yield Static(
                    Syntax(
                        parent.preset_text() or "# no preset.yaml",
                        "yaml",
                        theme="ansi_dark",
                        background_color="default",
                        word_wrap=True,
                    )
                )
            yield Static(
                Text("ctrl+s start · esc cancel · tab next field", style="dim"),
                classes="dialog-keys",
            )

    def on_mount(self) -> None:
        self.query_one("#overrides", TextArea).cursor_blink = False
        self.query_one("#stages", Input).cursor_blink = False
        self.query_one("#overrides", TextArea).focus()

    def show_error(self, message: str) -> None:
        self.query_one("#error", Static).update(Text(message, style="bold #f07070"))

    def action_start(self) -> None:
        try:
            overrides = parse_overrides(self.query_one("#overrides", TextArea).text)
            stages = parse_stages(self.query_one("#stages", Input).value)
            base = parent_preset(self.parent_folder)
            validate(apply_overrides(base, overrides) if overrides else base)
        except (PresetError, LookupError) as e:
            self.show_error(str(e).strip("'\""))
            return
        warm = self.query_one("#warm", Checkbox).value
        self.dismiss(ForkRequest(overrides, warm, stages))

    def action_cancel(self) -> None:
        self.dismiss(None)
