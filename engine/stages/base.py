"""A stage: a name, settings with defaults, and ``run(ctx) -> Verdict`` with evidence."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

# the stages' names for the one number formatter (engine/torchfree/numbers.py)
from engine.torchfree.numbers import duration as secs  # noqa: F401
from engine.torchfree.numbers import significant as fmt  # noqa: F401
from engine.torchfree.status import Verdict as VerdictStatus

if TYPE_CHECKING:
    from engine.context import RunContext
    from engine.distributed.rank import Ranks

ORDER = VerdictStatus.SEVERITY


@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail | skip
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class Verdict:
    status: str  # pass | warn | fail | skip
    reason: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "reason": self.reason,
            "checks": [c.to_json() for c in self.checks],
            "metrics": {
                k: (float(v) if v is not None and math.isfinite(float(v)) else None)
                for k, v in self.metrics.items()
            },
        }

    @classmethod
    def from_json(cls, d: dict) -> Verdict:
        checks = [Check(c["name"], c["status"], c["detail"]) for c in d.get("checks", [])]
        metrics = {k: v for k, v in (d.get("metrics") or {}).items() if v is not None}
        return cls(d["status"], d["reason"], checks, metrics)


def worst(checks: list[Check]) -> str:
    status = "pass"
    for c in checks:
        if ORDER[c.status] > ORDER[status]:
            status = c.status
    return status


def from_checks(checks: list[Check], metrics: dict[str, float], ok_reason: str) -> Verdict:
    """The stage's verdict is its worst check; the reason is that check's detail."""
    status = worst(checks)
    if status == "pass":
        return Verdict("pass", ok_reason, checks, metrics)
    bad = [c for c in checks if c.status == status]
    reason = bad[0].detail
    if len(bad) > 1:
        reason += f" (+{len(bad) - 1} more {status}{'s' if len(bad) > 2 else ''})"
    return Verdict(status, reason, checks, metrics)


class Stage:
    """Subclasses set ``name`` and implement ``run``.

    A stage that also runs under DDP (``gpus`` > 1) sets ``distributed`` and implements
    ``run_rank``: the runner then starts it on every rank through torchrun, and turns rank 0's
    result into the verdict with ``from_ranks``. Nothing else is needed."""

    name: ClassVar[str] = ""
    distributed: ClassVar[bool] = False

    def __init__(self, settings: Any):
        self.settings = settings

    def run(self, ctx: RunContext) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_rank(self, ctx: RunContext, ranks: Ranks) -> dict | None:  # pragma: no cover
        """On each rank of a DDP job; rank 0's JSON-able result goes to ``from_ranks``."""
        raise NotImplementedError

    def from_ranks(self, ctx: RunContext, result: dict) -> Verdict:
        return Verdict.from_json(result["verdict"])


def crash_verdict(result: dict) -> Verdict:
    """The verdict of a DDP stage whose ranks crashed."""
    reason = (
        f"DDP on {result['world']} processes crashed: {result['error']} (traceback in engine.log)"
    )
    return Verdict("fail", reason, [Check("ddp_runs", "fail", reason)])


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan
