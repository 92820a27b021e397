"""The batch tab: the exact tensors the model receives, a train batch and a val batch.

The engine writes ``batches/train.json`` and ``batches/val.json`` when the run starts
(engine/batches.py); this draws them the way ``cockpit show RUN`` does (cockpit/show.py):
images in half-block pixels with the value range that maps to black..white, masks in class
colours, tokens and tabular rows as numbers, per-channel statistics and the labels. A queued
run has no batches yet: the view looks again every few seconds until they are there, then
never again (a batch never changes).
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from cockpit.show import Line, draw_batch, load
from engine.torchfree.runfolder import FINAL, RunFolder

RETRY_S = 2.0


def to_text(lines: list[Line]) -> Text:
    """Drawn lines as rich Text (colours as truecolor styles)."""
    text = Text(no_wrap=True, overflow="crop")
    for n, line in enumerate(lines):
        if n:
            text.append("\n")
        for chunk, fg, bg in line:
            if fg or bg:
                text.append(
                    chunk,
                    Style(
                        color=f"rgb({fg[0]},{fg[1]},{fg[2]})" if fg else None,
                        bgcolor=f"rgb({bg[0]},{bg[1]},{bg[2]})" if bg else None,
                    ),
                )
            else:
                text.append(chunk)
    return text


class BatchView(Static):
    """Both splits' batches, stacked; scroll with j/k."""

    def __init__(self, folder: RunFolder, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.folder = folder
        self.loaded = False
        self._timer = None
        self._width = 0
        self._waiting: str | None = None
        """The run's status shown in the 'no batch yet' note (repainted only when it changes)."""

    def on_mount(self) -> None:
        self.load()
        if not self.loaded:
            self._timer = self.set_interval(RETRY_S, self.load)

    def on_resize(self) -> None:
        if self.loaded and self.size.width != self._width:
            self.load()

    def load(self) -> None:
        snaps = load(self.folder)
        if not snaps:
            status = self.folder.state().get("status", "?")
            if status in FINAL and self._timer is not None:  # it will never write one now
                self._timer.stop()
                self._timer = None
            if status == self._waiting:  # a retry that found nothing new costs no layout
                return
            self._waiting = status
            self.update(
                Text(
                    "no batch yet: the engine writes the first train and val batch when the run "
                    f"starts (this run is {status}); runs from before cockpit show have none",
                    style="dim",
                )
            )
            return
        self.loaded = True
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        width = max(40, self.size.width or 80)
        self._width = self.size.width
        lines: list[Line] = []
        for split in ("train", "val"):
            if split in snaps:
                lines += draw_batch(snaps[split], width=width, color=True)
        self.update(to_text(lines))
