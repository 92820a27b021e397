"""Run and verdict statuses: the words summary.json uses (Contract 3), named once.

Plain strings in a namespace, so they compare, print and serialise as the words themselves.
"""

from __future__ import annotations

from types import MappingProxyType


class Run:
    """A run's ``status`` in summary.json."""

    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    KILLED = "killed"

    LIVE = (QUEUED, RUNNING)
    """An engine is (or should be) behind it."""
    FINAL = (PASSED, FAILED, ERROR, KILLED)
    """It ended, and says how."""
    ALL = LIVE + FINAL


class Verdict:
    """A stage's or a check's ``status``, and how they rank (the worst check is the stage's)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    ALL = (PASS, WARN, FAIL, SKIP)
    SEVERITY = MappingProxyType({PASS: 0, SKIP: 0, WARN: 1, FAIL: 2})
