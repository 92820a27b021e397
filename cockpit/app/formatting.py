"""How numbers, ages, statuses and verdicts look on screen — one place, so every view agrees."""

from __future__ import annotations

import math

from rich.text import Text

from engine.torchfree import runfolder
from engine.torchfree.numbers import compact, significant, steps_compact, thousands
from engine.torchfree.runfolder import RunSnapshot

STATUS_LOOK: dict[str, tuple[str, str]] = {
    "running": ("●", "bold #4ec9b0"),
    "queued": ("◌", "#6cb6ff"),
    "passed": ("✓", "#7fbf7f"),
    "failed": ("✗", "bold #f07070"),
    "error": ("‼", "bold #ff5f5f"),
    "killed": ("■", "#a0a0a0"),
    "pruned": ("✂", "#c792ea"),
    "stopping": ("◍", "bold #e5c07b"),
}
"""Glyph and style per run status: finished, failed and killed runs differ at a glance,
also without colour (NO_COLOR) thanks to the glyph."""

VERDICT_LOOK: dict[str, tuple[str, str]] = {
    "pass": ("✓", "#7fbf7f"),
    "warn": ("!", "bold #e5c07b"),
    "fail": ("✗", "bold #f07070"),
    "skip": ("–", "#808080"),
    "running": ("▶", "bold #4ec9b0"),
    "pending": ("·", "#808080"),
}

METRIC_SHORT = {
    "accuracy": "acc",
    "macro_f1": "f1",
    "miou": "mIoU",
    "pixel_acc": "pix",
    "mae": "mae",
    "val_loss": "val",
}


def rgb(color: tuple[int, int, int]) -> str:
    """A plot colour as a rich style, so legends match their lines."""
    return f"rgb({color[0]},{color[1]},{color[2]})"


def is_pruned(snapshot: RunSnapshot) -> bool:
    """Killed by a pruning rule (the rule is runfolder.is_pruned, which `cockpit ls` uses too)."""
    return runfolder.is_pruned(snapshot.status, snapshot.reason)


def display_status(snapshot: RunSnapshot) -> str:
    return runfolder.display_status(snapshot.status, snapshot.reason)


def status_text(status: str, label: str | None = None) -> Text:
    glyph, style = STATUS_LOOK.get(status, ("?", ""))
    return Text(f"{glyph} {label if label is not None else status}", style=style)


def verdict_glyph(status: str) -> Text:
    glyph, style = VERDICT_LOOK.get(status, ("?", ""))
    return Text(glyph, style=style)


def number(x: float | None, digits: int = 4) -> str:
    """Loss-like numbers: 4 significant digits, '-' for missing."""
    return significant(x, digits, "-", big=1e5)


def compact_number(x: float | None) -> str:
    """At most 6 characters, for table cells: 0.8243, 0.0123, 4.7e-4, 1.2e5."""
    return compact(x)


def compact_count(n: float) -> str:
    """Steps in at most 6 characters: 950, 20 000, 123k, 1.2M."""
    return steps_compact(n)


def share(x: float | None) -> str:
    """A 0..1 share as a whole percentage."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 100:.0f}%"


def count(n: float | None) -> str:
    """Steps with a thin space every three digits: 1 234 567."""
    return thousands(n)


def age(seconds: float) -> str:
    """'45s', '12m', '5h', '3d': three characters for most ages."""
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m"
    if s < 86400:
        return f"{s // 3600:.0f}h"
    return f"{s // 86400:.0f}d"


def duration(seconds: float) -> str:
    """'42 s', '3 min 5 s', '2 h 10 min'."""
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:.0f} s"
    return f"{s // 3600:.0f} h {s % 3600 // 60:.0f} min"


def metric(name: str, value: float | None) -> str:
    """'acc .970', 'mIoU .812', 'mae 1.23' (no leading zero: it fits 80-column tables)."""
    if not name or value is None or not math.isfinite(value):
        return "-"
    shown = number(value, 3)
    if shown.startswith("0."):
        shown = shown[1:]
    return f"{METRIC_SHORT.get(name, name)} {shown}"


def short_id(run_id: str) -> str:
    """'quickstart-20261130-005256-2134' -> 'quickstart·2134': the preset and the random tail
    tell runs apart; the full id is in the details line and the run view."""
    parts = run_id.rsplit("-", 3)
    if len(parts) == 4 and len(parts[1]) == 8 and parts[1].isdigit() and len(parts[2]) == 6:
        return f"{parts[0]}·{parts[3]}"
    return run_id


def overrides_text(overrides: dict, keys: list[str] | None = None) -> str:
    """'optimizer.lr=0.001 batch_size=64' (only ``keys``, when given)."""
    items = (
        overrides.items() if keys is None else ((k, overrides[k]) for k in keys if k in overrides)
    )
    return " ".join(f"{k}={_value(v)}" for k, v in items)


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)
