"""Device slots: which GPUs (or CPU slots) a run may use, and the queue for them.

The engine process itself waits here, before importing torch, so a queued run costs almost
nothing and needs no scheduler daemon and no open terminal app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.runfolder import RunFolder


@dataclass
class Lease:
    gpus: list[int] = field(default_factory=list)

    def release(self) -> None:
        pass


def acquire(folder: RunFolder, request: dict, should_stop: Callable[[], bool],
            on_wait: Callable[[str], None]) -> Lease | None:
    return Lease()
