"""``x``: kill the selected run — only after ``y``."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from cockpit.app import keys
from cockpit.app.formatting import count, short_id
from engine.torchfree.runfolder import RunSnapshot


class ConfirmKill(ModalScreen[bool]):
    """Answers True for ``y``, False for ``n`` or ``escape``."""

    BINDINGS = keys.CONFIRM

    def __init__(self, snapshot: RunSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def compose(self) -> ComposeResult:
        s = self.snapshot
        where = (
            f"{s.status}"
            + (f", {s.stage}" if s.stage else "")
            + (f", step {count(s.step)}" if s.step else "")
        )
        with Vertical(id="confirm", classes="dialog"):
            yield Label(f"kill {short_id(s.run_id)}?", classes="dialog-title")
            yield Static(
                Text.assemble(
                    (f"{s.run_id} ({where})\n", "bold"),
                    "It stops at the next step; after a grace period its whole process group is\n"
                    "killed (data-loader workers too). Its data stays in the run folder.\n\n",
                    ("y", "bold #f07070"),
                    " kill it   ",
                    ("n / esc", "bold"),
                    " keep it running",
                )
            )

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
