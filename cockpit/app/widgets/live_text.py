"""Text that changes with the runs: repainted only when it changed.

``Static.update`` re-lays out the whole screen by default; done every tick for every line of
text it was most of the app's idle CPU. Here an unchanged text costs nothing, and a changed
one re-lays out only when its height is automatic and the number of lines it takes changed
(a step counter that gains a digit repaints one line, not the screen)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class LiveText(Static):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: Text | None = None
        self._lines: tuple[int, int] | None = None

    def show(self, text: Text) -> None:
        if text == self._shown:
            return
        self._shown = text
        height = self.styles.height
        if height is not None and not height.is_auto:
            self.update(text, layout=False)
            return
        lines = self._height(text)
        resized = lines is None or lines != self._lines
        self._lines = lines
        self.update(text, layout=resized)

    def _height(self, text: Text) -> tuple[int, int] | None:
        """(width, lines the text takes at that width); None before the first layout."""
        width = self.content_region.width
        if width <= 0:
            return None
        wrapped = text.wrap(self.app.console, width, overflow=text.overflow, no_wrap=text.no_wrap)
        return width, len(wrapped)
