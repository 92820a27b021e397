"""A run in a few lines: who it is, where it stands on the ladder, and why it ended how it did."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from cockpit.app import formatting as fmt
from cockpit.app.messages import RunState
from cockpit.app.widgets.live_text import LiveText

REASON_STYLE = {
    "failed": "#f07070",
    "error": "#ff5f5f",
    "pruned": "#c792ea",
    "killed": "#a0a0a0",
    "queued": "#6cb6ff",
}


def ladder_strip(state: RunState) -> Text:
    """'✓ init ✓ overfit_one ▶ generalize · speed': every stage with its verdict so far."""
    s = state.snapshot
    verdicts = dict(s.verdicts)
    text = Text()
    names = s.stage_names or [name for name, _ in s.verdicts]
    for i, name in enumerate(names):
        if name in verdicts:
            look = verdicts[name]
        elif s.status == "running" and name == s.stage:
            look = "running"
        else:
            look = "pending"
        if i:
            text.append(" ")
        text += fmt.verdict_glyph(look)
        text.append(f" {name}", style="dim" if look == "pending" else "")
    return text


def lineage_text(state: RunState, runs: Sequence[RunState]) -> Text:
    """'fork of quickstart·2134 @ step 1 500 (warm) · 2 forks'."""
    s = state.snapshot
    text = Text()
    if s.parent:
        text.append("fork of ", style="dim")
        text.append(fmt.short_id(s.parent))
        if s.fork_step:
            text.append(f" @ step {fmt.count(s.fork_step)} (warm)", style="dim")
        else:
            text.append(" (cold start)", style="dim")
    kids = [r for r in runs if r.snapshot.parent == s.run_id]
    if kids:
        if text:
            text.append(" · ", style="dim")
        text.append(f"{len(kids)} fork{'s' if len(kids) > 1 else ''}: ", style="dim")
        text.append(", ".join(fmt.short_id(k.run_id) for k in kids))
    return text


def reason_text(state: RunState, place: int | None) -> Text:
    """The line that says why: a failure's reason, a pruning rule's verdict, the queue."""
    s = state.snapshot
    status = fmt.display_status(s)
    style = REASON_STYLE.get(status, "")
    text = Text()
    if status == "queued":
        text.append(f"queued{f' #{place}' if place else ''}", style="bold " + style)
        text.append(f" · {s.queue}" if s.queue else " · waiting for a free device", style=style)
    elif status == "running":
        text.append("running", style="bold #4ec9b0")
        if s.stage:
            text.append(f" {s.stage}")
        if s.step:
            text.append(f" · step {fmt.count(s.step)}")
        if math.isfinite(s.data_wait):
            text.append(f" · waits on data {fmt.share(s.data_wait)}", style="dim")
    else:
        text.append(status, style="bold " + style)
        if s.reason:
            reason = s.reason
            if status == "pruned" and reason.lower().startswith("pruned"):
                reason = reason[len("pruned") :].lstrip(" :—-")
            text.append(f": {reason}", style=style)
        elif status == "passed" and s.verdicts:
            text.append(
                f" · {len(s.verdicts)} stage{'s' if len(s.verdicts) > 1 else ''}", style="dim"
            )
    return text


def identity_text(state: RunState, now: float) -> Text:
    s = state.snapshot
    text = Text(s.run_id, style="bold")
    started = f"{fmt.age(now - s.created)} ago" if s.created else None
    for part in (s.preset, s.device, started, f"group {s.group}" if s.group else None):
        if part:
            text.append(f" · {part}", style="dim")
    if s.overrides:
        text.append(" · ", style="dim")
        text.append(fmt.overrides_text(s.overrides), style="#98c379")
    return text


class RunDetails(LiveText):
    """Under the runs table: the highlighted run's identity, ladder and verdict."""

    DEFAULT_CSS = """
    RunDetails { height: auto; max-height: 4; padding: 0 1; border-top: hkey $foreground 20%; }
    """

    def show_run(
        self, state: RunState | None, runs: Sequence[RunState], place: int | None, now: float
    ) -> None:
        if state is None:
            self.show(Text("no run selected", style="dim"))
            return
        lines = [identity_text(state, now), ladder_strip(state), reason_text(state, place)]
        lineage = lineage_text(state, runs)
        if lineage:
            lines[0].append("  ")
            lines[0] += lineage
        for line in lines:
            line.no_wrap = True
            line.overflow = "ellipsis"
        self.show(Text("\n").join(lines))
