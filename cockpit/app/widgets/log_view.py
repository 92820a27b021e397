"""The run's engine.log, tailed: a crash's traceback lands here and must be readable."""

from __future__ import annotations

import os

from rich.text import Text
from textual.widgets import RichLog

from engine.torchfree.runfolder import RunFolder

FIRST_BYTES = 64_000
"""How much of the log's end is shown at first (older lines are in the file)."""
TAIL_EVERY_S = 1.0


class LogView(RichLog):
    """Wrapped lines (a traceback stays readable at 80 columns); new bytes only, once a
    second, and only while the tab is on screen."""

    def __init__(self, folder: RunFolder, *, id: str | None = None) -> None:
        super().__init__(id=id, wrap=True, markup=False, highlight=False, max_lines=5000)
        self.folder = folder
        self._offset = 0
        self._partial = ""

    def on_mount(self) -> None:
        path = self.folder.file("engine.log")
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        self._offset = max(0, size - FIRST_BYTES)
        if self._offset:
            self.write(Text(f"… the first {self._offset:,} bytes are in {path}", style="dim"))
        self.read_new()
        self._timer = self.set_interval(TAIL_EVERY_S, self.read_new, pause=True)

    def set_following(self, on: bool) -> None:
        """Tail only while visible: a hidden tab should not wake the app."""
        if on:
            self.read_new()
            self._timer.resume()
        else:
            self._timer.pause()

    def read_new(self) -> None:
        try:
            with open(self.folder.file("engine.log"), "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        if not chunk:
            return
        self._offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # a line still being written waits for its newline
        for line in lines:
            self.write(Text(line, style=_line_style(line)))


def _line_style(line: str) -> str:
    """Errors red, traceback frames pink, warnings yellow: a crash stands out in the tail."""
    lowered = line.lower()
    if "traceback" in lowered or "error" in lowered or "crashed" in lowered:
        return "#f07070"
    if line.startswith("  File "):
        return "#d0a0a0"
    if "warn" in lowered:
        return "#e5c07b"
    return ""
