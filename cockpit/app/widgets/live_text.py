"""Text that changes with the runs: repainted only when it changed.

``Static.update`` re-lays out the whole screen by default; done every tick for every line of
text it was most of the app's idle CPU. Here an unchanged text costs nothing, and a changed
one re-lays out only when its height is automatic and its text grew or shrank."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class LiveText(Static):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: Text | None = None

    def show(self, text: Text) -> None:
        if text == self._shown:
            return
        before = self._shown
        self._shown = text
        height = self.styles.height
        resized = (height is None or height.is_auto) and (
            before is None or len(text.plain) != len(before.plain)
        )
        self.update(text, layout=resized)
