"""The run's engine.log, tailed: a crash's traceback lands here and must be readable."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from rich.text import Text
from textual.widgets import RichLog

from engine.torchfree.runfolder import RunFolder, open_regular

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
        self._unreadable: str | None = None
        """Why engine.log cannot be read (said once, until it can be again)."""

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
        path = self.folder.file("engine.log")
        try:
            with open_regular(path) as f:  # a FIFO in its place would block the UI forever
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return  # not written yet
        except OSError as e:
            why = e.strerror or str(e)
            if why != self._unreadable:
                self._unreadable = why
                self.write(Text(_unreadable_note(path, e), style="#e5c07b"))
            return
        self._unreadable = None
        if not chunk:
            return
        self._offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # a line still being written waits for its newline
        for line in lines:
            self.write(Text(line, style=_line_style(line)))


def _unreadable_note(path: Path, e: OSError) -> str:
    """One sentence for a log that cannot be read: which file, what was expected, what to do."""
    if e.errno == errno.EINVAL:  # open_regular: a FIFO, a device or a socket in its place
        return (
            f"{path} is not a regular file (a FIFO or a device?): the log is a plain file the "
            "engine appends to; remove what is in its place (the run's other files are intact)"
        )
    return f"{path} cannot be read ({e.strerror or e}); check its permissions"


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
