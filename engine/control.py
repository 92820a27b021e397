"""Stopping a run: one flag with one owner, and the exception that carries a stop up the stack.

The runner owns the flag (its signal handler sets it; the pruner sets it with its reason); the
loop reads it at every step boundary and raises ``Stopped`` there, saying which step was the
last one completed, so the stage can save a checkpoint of exactly that step.
"""

from __future__ import annotations

from typing import Any


class Stopped(Exception):
    """The run was asked to stop (SIGTERM / Ctrl-C / the pruner); raised at a step boundary."""

    def __init__(self, step: int | None = None):
        super().__init__("stopped" if step is None else f"stopped after step {step}")
        self.step = step


class StopFlag:
    """Set once, read everywhere: by the loop at step boundaries and by the slot queue."""

    def __init__(self) -> None:
        self.requested = False
        self.pruned: dict[str, Any] | None = None  # the pruning rule's decision, when it stopped us

    def request(self, pruned: dict[str, Any] | None = None) -> None:
        if pruned is not None:
            self.pruned = pruned
        self.requested = True
