"""The ladder of one run: every stage's verdict, reason, checks and metrics."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from cockpit.app import formatting as fmt

CHECK_STYLE = {"pass": "", "warn": "#e5c07b", "fail": "#f07070"}


def ladder_table(summary: dict) -> Table:
    """A table with a row per stage, followed by rows for its checks and metrics."""
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(width=1)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, justify="right", style="dim")
    table.add_column(ratio=1)
    done = {stage.get("name"): stage for stage in summary.get("stages", [])}
    names = list(summary.get("stage_names") or []) or list(done)
    for name in [*names, *(n for n in done if n not in names)]:
        stage = done.get(name)
        if stage is None:
            running = summary.get("status") == "running" and summary.get("current_stage") == name
            look = "running" if running else "pending"
            table.add_row(
                fmt.verdict_glyph(look),
                Text(name, style="bold" if running else "dim"),
                "",
                Text("running…" if running else "not run yet", style="dim"),
            )
            continue
        status = stage.get("status", "?")
        took = (
            fmt.duration(stage["seconds"]) if isinstance(stage.get("seconds"), (int, float)) else ""
        )
        table.add_row(
            fmt.verdict_glyph(status),
            Text(name, style="bold"),
            took,
            Text(stage.get("reason", ""), style=CHECK_STYLE.get(status, "")),
        )
        for check in stage.get("checks", []):
            check_status = check.get("status", "?")
            table.add_row(
                "",
                Text.assemble("  ", fmt.verdict_glyph(check_status), f" {check.get('name', '?')}"),
                "",
                Text(str(check.get("detail", "")), style=CHECK_STYLE.get(check_status, "dim")),
            )
        metrics = stage.get("metrics") or {}
        if metrics:
            shown = " · ".join(
                f"{k} {fmt.number(v) if isinstance(v, float) else v}" for k, v in metrics.items()
            )
            table.add_row("", Text("  metrics", style="dim"), "", Text(shown, style="dim"))
    return table


class LadderView(Static):
    """The ladder tab of the run view."""

    def show(self, summary: dict) -> None:
        if not summary:
            self.update(Text("no summary.json yet", style="dim"))
            return
        header = Text()
        status = summary.get("status", "?")
        if summary.get("reason"):
            header.append(
                f"{status}: {summary['reason']}\n",
                style="bold #f07070" if status in ("failed", "error") else "bold",
            )
        table = ladder_table(summary)
        self.update(Group(header, table) if header else table)
