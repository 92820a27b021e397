"""Pruning: an ablation stops its runs that are clearly behind (the median rule) — torch-free.

Optuna's MedianPruner, for runs that go side by side: at a full-val evaluation of the
``train`` stage, a run stops itself when its best ``prune.metric`` up to some step is worse
than the median of its group's values at that same step, with at least ``prune.min_peers``
other runs there. The step judged is the latest of the run's own evaluations that enough
peers have reached, so a run slightly ahead of its peers is judged once they catch up.

Only runs of an ablation group are pruned (``group`` in run.json); peers are the group's other
runs, read from their evals.jsonl. A pruned run ends ``killed``, its reason starts with
``pruned:``, and ``summary["pruned"]`` holds the numbers (see docs/ablations.md). A pruned
Slurm job is stopped through ``scancel`` (docs/slurm.md).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.torchfree.preset import Preset, PruneSettings
from engine.torchfree.runfolder import JsonlTail, read_json
from engine.torchfree.tasks import HIGHER_IS_BETTER, TASK_METRICS


def settings_of(preset: Preset) -> PruneSettings:
    """The preset's prune section; PresetError when its metric is not one the task reports."""
    settings = PruneSettings(**(preset.get("prune") or {}))
    task = preset.get("task")
    known = TASK_METRICS.get(task, ())
    if settings.rule not in ("median", "none"):
        raise preset.error(
            "prune.rule", f"prune.rule must be median or none, got '{settings.rule}'."
        )
    if settings.rule == "median" and settings.metric not in known:
        raise preset.error(
            "prune.metric",
            f"prune.metric '{settings.metric}' is not measured for {task} runs; choose one of "
            f"{', '.join(known)}.",
        )
    return settings


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


@dataclass
class Decision:
    """Why a run was pruned; stored as ``summary["pruned"]``."""

    metric: str
    value: float  # the run's best value up to ``step``
    step: int  # the step compared at
    median: float  # the peers' median at ``step``
    peers: int
    at_step: int  # the run's step when it was stopped
    rule: str = "median"

    @property
    def reason(self) -> str:
        return (
            f"pruned: {self.metric} {_num(self.value)} at step {self.step} is worse than the "
            f"median {_num(self.median)} of {self.peers} peers"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def median_to_beat(
    own_best: float, peer_values: list[float], higher_is_better: bool, min_peers: int
) -> float | None:
    """The peers' median when ``own_best`` is worse than it (prune), else None."""
    if len(peer_values) < max(1, min_peers):
        return None
    median = statistics.median(peer_values)
    worse = own_best < median if higher_is_better else own_best > median
    return median if worse else None


class GroupPeers:
    """The other runs of an ablation group and their train-stage evaluations, read incrementally."""

    def __init__(self, workspace: Path, group: str, me: str):
        self.workspace = Path(workspace)
        self.group = group
        self.me = me
        self.outsiders: set[str] = set()
        self.tails: dict[str, JsonlTail] = {}
        self.rows: dict[str, dict[int, dict]] = {}  # peer -> step -> evaluation

    def refresh(self) -> None:
        try:
            names = [e.name for e in os.scandir(self.workspace) if e.is_dir()]
        except FileNotFoundError:
            names = []
        for name in names:
            if name == self.me or name in self.outsiders or name in self.tails:
                continue
            request = read_json(self.workspace / name / "run.json")
            if request is None:
                continue  # not a run, or one still being created: look again next time
            if request.get("group") == self.group:
                self.tails[name] = JsonlTail(self.workspace / name / "evals.jsonl")
                self.rows[name] = {}
            else:
                self.outsiders.add(name)
        for name, tail in self.tails.items():
            for row in tail.read_new():
                if row.get("stage") == "train" and isinstance(row.get("step"), int):
                    self.rows[name][row["step"]] = row

    def values_at(self, step: int, metric: str) -> list[float]:
        out = []
        for rows in self.rows.values():
            v = rows.get(step, {}).get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.append(float(v))
        return out


class MedianPruner:
    """An eval listener: ``pruner(step, metrics)`` after each full-val evaluation."""

    def __init__(
        self,
        settings: PruneSettings,
        peers: GroupPeers,
        higher_is_better: bool,
        on_prune: Callable[[Decision], None],
    ):
        self.s = settings
        self.peers = peers
        self.higher = higher_is_better
        self.on_prune = on_prune
        self.history: dict[int, float] = {}
        self.last_check: int | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.s.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.history[step] = float(value)
        if step < self.s.warmup_steps or (
            self.last_check is not None and step - self.last_check < self.s.every
        ):
            return
        self.last_check = step
        self.peers.refresh()
        for judged in sorted((s for s in self.history if s >= self.s.warmup_steps), reverse=True):
            values = self.peers.values_at(judged, self.s.metric)
            if len(values) < max(1, self.s.min_peers):
                continue
            own = [v for s, v in self.history.items() if s <= judged]
            best = max(own) if self.higher else min(own)
            median = median_to_beat(best, values, self.higher, self.s.min_peers)
            if median is not None:
                self.on_prune(Decision(self.s.metric, best, judged, median, len(values), step))
            return


def attach(ctx: Any, request: dict) -> MedianPruner | None:
    """Listen to ``ctx``'s evaluations when the run belongs to a group and its preset prunes.

    A decision requests a stop on ``ctx.stop`` with its reason: the loop stops at the next step
    boundary (under DDP, every rank at the same step). Inside a Slurm job the run is also
    cancelled through Slurm (``scancel`` of its own job, engine/torchfree/slurm.py), so the
    allocation is freed on every node and Slurm records the end."""
    settings = settings_of(ctx.preset)
    group = request.get("group")
    if settings.rule != "median" or not group:
        return None

    def stop(decision: Decision) -> None:
        ctx.stop.request(pruned=decision.to_json())
        from engine.torchfree import slurm

        slurm.cancel_pruned(ctx.folder, request, decision.to_json())  # a Slurm job: scancel

    peers = GroupPeers(ctx.folder.path.parent, group, ctx.folder.run_id)
    pruner = MedianPruner(settings, peers, HIGHER_IS_BETTER[settings.metric], stop)
    ctx.eval_listeners.append(pruner)
    return pruner
