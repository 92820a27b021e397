"""How curves are drawn: markers, log scale, smoothing — shared by every plot in the app."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

MARKERS_ENV = "COCKPIT_MARKERS"
MARKERS = {"braille": "braille", "block": "hd", "dot": "dot"}
"""Our names -> plotext's: braille (2×4 dots per cell) needs a font with U+2800–28FF;
block (2×2 quadrants) and dot work with nearly any font."""
PIXELS_PER_CELL = {"braille": 2, "block": 2, "dot": 1}
"""Horizontal resolution per character cell: how many points a column of the plot can show."""

SMOOTHING_STEPS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
"""The EMA factors ``+`` and ``-`` walk through (0 = no smoothing)."""


@dataclass(frozen=True)
class ViewSettings:
    marker: str = "braille"
    """A key of MARKERS."""
    log_scale: bool = False
    """Loss axes in log10 (plotted as log10 of the values, ticks labelled in real units)."""
    smoothing: float = 0.9
    """EMA factor of the smoothed loss lines."""

    @classmethod
    def from_env(cls) -> ViewSettings:
        """``COCKPIT_MARKERS=block`` for fonts without braille."""
        marker = os.environ.get(MARKERS_ENV, "").strip().lower()
        return cls(marker=marker if marker in MARKERS else "braille")

    @property
    def plotext_marker(self) -> str:
        return MARKERS[self.marker]

    def next_marker(self) -> ViewSettings:
        names = list(MARKERS)
        return replace(self, marker=names[(names.index(self.marker) + 1) % len(names)])

    def smoother(self, steps: int) -> ViewSettings:
        """``steps`` notches along SMOOTHING_STEPS (negative: rougher)."""
        nearest = min(
            range(len(SMOOTHING_STEPS)), key=lambda i: abs(SMOOTHING_STEPS[i] - self.smoothing)
        )
        index = max(0, min(len(SMOOTHING_STEPS) - 1, nearest + steps))
        return replace(self, smoothing=SMOOTHING_STEPS[index])
