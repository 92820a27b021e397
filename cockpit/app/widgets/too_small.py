"""The notice that covers a screen when the terminal is smaller than 80×24."""

from __future__ import annotations

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

MIN_WIDTH, MIN_HEIGHT = 80, 24


class TooSmall(Widget):
    """Hidden by CSS unless the screen carries the -narrow or -short breakpoint class."""

    DEFAULT_CSS = """
    TooSmall {
        display: none;
        layer: notice;
        dock: top;
        width: 100%;
        height: 100%;
        background: $background;
        content-align: center middle;
        text-align: center;
    }
    Screen.-narrow TooSmall, Screen.-short TooSmall { display: block; }
    """

    def render(self) -> RenderResult:
        width, height = self.app.size
        return Text.assemble(
            ("cockpit needs a terminal of at least 80×24\n", "bold"),
            (f"this one is {width}×{height} — enlarge the window or the tmux pane\n", ""),
            ("(runs keep going meanwhile; q quits)", "dim"),
        )

    def on_resize(self) -> None:
        self.refresh()
