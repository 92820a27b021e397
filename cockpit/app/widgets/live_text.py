"""Text that changes with the runs: repainted only when it changed.

``Static.update`` re-lays out the whole screen by default; done every tick for every line of
text it was most of the app's idle CPU. Here an unchanged text costs nothing, and a changed
one re-lays out only when its height is automatic and the number of lines it takes changed
(a step counter that gains a digit repaints one line, not the screen)."""

from __future__ import annotations

from rich.segment import Segment
from rich.text import Text
from textual.strip import Strip
from textual.widgets import Static


class LiveText(Static):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: Text | None = None
        self._lines: tuple[int, int] | None = None
        self._strips: tuple[object, list[Strip]] | None = None

    def show(self, text: Text) -> None:
        if text == self._shown:
            return
        self._shown = text
        self._strips = None
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

    def render_line(self, y: int) -> Strip:
        """The shown Text drawn by Rich straight into strips (wrapped as ``Text.wrap`` does):
        a third of what Textual's content pipeline costs for the same line, and these
        lines change at every tick of a live run (a step count, a loss)."""
        text = self._shown
        if text is None or self.BLANK:
            return super().render_line(y)
        width, height = self.size
        style = self.visual_style.rich_style
        key = (width, height, style)
        if self._strips is None or self._strips[0] != key:
            self._strips = (key, self._render_text(text, width, height, style))
        strips = self._strips[1]
        return strips[y] if y < len(strips) else Strip.blank(width, style)

    def _render_text(self, text: Text, width: int, height: int, style) -> list[Strip]:
        if width <= 0 or height <= 0:
            return []
        console = self.app.console
        lines = text.wrap(
            console,
            width,
            justify=text.justify,
            overflow=text.overflow or "fold",
            no_wrap=text.no_wrap,
        )
        out = []
        for line in lines[:height]:
            segments = Segment.apply_style(line.render(console), style)
            out.append(Strip(segments).adjust_cell_length(width, style))
        return out
