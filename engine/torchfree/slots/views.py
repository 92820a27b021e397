"""What the slots look like now, for `cockpit ls`, the app and the benchmarks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.torchfree.slots.devices import CONFIG_NAME, CPU_SLOTS_ENV, cpu_slot_count, gpu_indices
from engine.torchfree.slots.leases import foreign_processes, held, read_holder, slots_root
from engine.torchfree.slots.queue import ticket_alive
from engine.torchfree.slots.words import plural


@dataclass
class SlotView:
    """One device slot as a display shows it."""

    kind: str  # gpu | cpu
    index: int
    run_id: str | None = None  # the cockpit run holding it
    since: float | None = None
    foreign: list[dict] = field(default_factory=list)  # GPUs: processes cockpit did not start

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "run_id": self.run_id,
            "since": self.since,
            "foreign": self.foreign,
        }


def slot_views(workspace: Path) -> list[SlotView]:
    """Every GPU (or, on a CPU machine, every CPU slot) with its holder and foreign processes."""
    root = slots_root(workspace)
    gpus = gpu_indices()
    kind, indices = ("gpu", gpus) if gpus else ("cpu", list(range(cpu_slot_count(workspace))))
    foreign = foreign_processes(root, gpus)  # {} without GPUs
    out = []
    for i in indices:
        path = root / f"{kind}-{i}.lock"
        holder = read_holder(path) if held(path) else {}
        out.append(SlotView(kind, i, holder.get("run_id"), holder.get("since"), foreign.get(i, [])))
    return out


def queued_runs(workspace: Path) -> list[str]:
    """Run ids of live queue tickets, first in line first."""
    queue = slots_root(workspace) / "queue"
    try:
        names = sorted(n for n in os.listdir(queue) if not n.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if ticket_alive(queue / name):
            out.append(read_holder(queue / name).get("run_id") or name)
    return out


def describe_slots(workspace: Path) -> str:
    """One line for `cockpit ls`: 'GPUs: 0 quickstart-… · 1 free · 2 free, 1 foreign process …'."""
    views = slot_views(workspace)  # never empty: at least one CPU slot
    if views[0].kind == "cpu":
        busy = sum(1 for v in views if v.run_id)
        queued = len(queued_runs(workspace))
        return (
            f"CPU slots: {busy} of {len(views)} busy"
            + (f", {queued} queued" if queued else "")
            + f"  (set with ${CPU_SLOTS_ENV} or cpu_slots: in {Path(workspace) / CONFIG_NAME})"
        )
    parts = []
    for v in views:
        text = f"{v.index} {v.run_id or 'free'}"
        if v.foreign:
            text += f" + {plural(len(v.foreign), 'foreign process')}"
        parts.append(text)
    queued = len(queued_runs(workspace))
    return "GPUs: " + " · ".join(parts) + (f"  ({queued} queued)" if queued else "")
