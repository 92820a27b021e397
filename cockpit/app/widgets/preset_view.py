"""The preset tab: what was asked (file, overrides, stages, warm start) and the resolved YAML."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Group
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from cockpit.app.formatting import count, overrides_text
from engine.torchfree.runfolder import RunFolder


def request_table(request: dict, summary: dict) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    table.add_row("preset file", str(request.get("preset_path") or "-"))
    overrides = summary.get("overrides") or request.get("overrides") or {}
    table.add_row(
        "overrides",
        Text(overrides_text(overrides) or "none", style="#98c379" if overrides else "dim"),
    )
    stages = summary.get("stage_names") or request.get("stages")
    table.add_row("stages", ", ".join(stages) if stages else "the preset's ladder")
    if request.get("parent"):
        how = (
            f"warm from step {count(request.get('fork_step'))} ({request.get('warm_from')})"
            if request.get("warm_from")
            else "cold start"
        )
        table.add_row("fork of", f"{request['parent']} · {how}")
    if request.get("group"):
        table.add_row("group", str(request["group"]))
    if request.get("gpus") is not None:
        table.add_row("gpus", str(request["gpus"]))
    return table


class PresetView(Static):
    """Read once: a run's request never changes."""

    def show(self, folder: RunFolder) -> None:
        text = folder.preset_text()
        parts: list = [request_table(folder.request(), folder.summary()), Text("")]
        if text:
            parts.append(Text("resolved preset (preset.yaml)", style="bold"))
            parts.append(
                Syntax(
                    text,
                    "yaml",
                    theme="ansi_dark",
                    background_color="default",
                    line_numbers=True,
                    word_wrap=True,
                )
            )
        else:
            parts.append(_no_preset(folder.file("preset.yaml")))
        self.update(Group(*parts))


def _no_preset(path: Path) -> Text:
    """Why there is no YAML to show: none written, or something other than a file in its
    place (preset_text reads regular files only: a FIFO there would block the app)."""
    try:
        present = os.path.lexists(path) and not path.is_file()
    except OSError:
        present = True
    if present:
        return Text(
            f"{path} is not a regular file (a FIFO, a folder or a device?): the resolved preset "
            "is the plain YAML file cockpit writes when it creates the run, and something else is "
            "in its place; the request above and the run's other files are unaffected",
            style="#e5c07b",
        )
    return Text("no preset.yaml in the run folder", style="dim")
