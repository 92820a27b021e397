"""Is the GPU starving for data? One sentence from the data-wait share and the GPU's load."""

from __future__ import annotations

import math
from collections.abc import Iterable

GPU_BUSY = 80.0
"""GPU utilization (%) from which the device counts as kept busy."""
RECENT_S = 60.0
"""The verdict looks at the last minute: long enough to smooth epochs' spikes, short enough to follow a change."""


def is_data_bound(share: float) -> bool:
    """The ladder's one rule for "data-bound" (``engine.torchfree.ladder.is_data_bound``),
    imported on first use: the ladder's settings take ~15 ms to import, which the app's
    first frame does not wait for."""
    from engine.torchfree.ladder import is_data_bound as rule

    return rule(share)


def mean_since(series: Iterable[tuple[float, float]], since: float) -> float | None:
    """Mean of the values of (time, value) pairs at or after ``since``; None when there are none."""
    values = [v for t, v in series if t >= since and v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def bottleneck(wait_share: float | None, gpu_util: float | None) -> str:
    """The verdict in words; ``gpu_util`` is None for a run on the CPU."""
    if wait_share is None:
        return "no telemetry in the last minute"
    wait = f"{wait_share:.0%}"
    if gpu_util is None:
        if is_data_bound(wait_share):
            return f"data-bound: the loop waits on the loader {wait} of the time"
        return f"compute-bound: waits on the loader only {wait} of the time"
    idle = f"{100.0 - gpu_util:.0f}%"
    if is_data_bound(wait_share) and gpu_util < GPU_BUSY:
        return (
            f"data-bound: GPU idle {idle} of the time while the loop waits on the loader ({wait})"
        )
    if is_data_bound(wait_share):
        return (
            f"GPU busy {gpu_util:.0f}% yet the loop waits on the loader {wait} of the time: "
            "another process shares this GPU?"
        )
    if gpu_util >= GPU_BUSY:
        return f"compute-bound: GPU busy {gpu_util:.0f}%, the loader keeps up (waits {wait})"
    return (
        f"host-bound: GPU idle {idle} of the time though the loader keeps up (waits {wait}): "
        "host work between steps (syncs, logging, small batches)"
    )
