"""How numbers read, in verdicts, the CLI and the app alike — one formatter, torch-free.

``significant`` is the one rule for losses and metrics; the rest are fixed shapes of it (table
cells, durations, counts). Exponents are written short: 4.7e-4, 1.2e5.
"""

from __future__ import annotations

import math

__all__ = ["compact", "duration", "params", "significant", "steps_compact", "thousands"]


def _short_exponent(text: str) -> str:
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}"


def significant(
    x: float | None, digits: int = 3, missing: str = "nan", big: float = 1e3, small: float = 1e-3
) -> str:
    """A loss or metric: ``digits`` significant digits, scientific outside [small, big).

    Sentences spell a missing value 'nan' (and 'inf'); tables pass ``missing='-'``."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    if isinstance(x, float) and math.isinf(x):
        return missing if missing != "nan" else ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    if abs(x) >= big or abs(x) < small:
        return _short_exponent(f"{x:.{max(1, digits - 1)}e}")
    return f"{x:.{digits}g}"


def compact(x: float | None) -> str:
    """At most 6 characters, for table cells: 0.8243, 0.0123, 4.7e-4, 1.2e5."""
    if x is None or not math.isfinite(x):
        return "-"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e4 or a < 0.01:
        return significant(x, 2, "-")
    return f"{x:.3g}" if a < 0.1 else f"{x:.4g}"


def duration(x: float | None) -> str:
    """Durations: '170 µs', '7.5 ms', '1.2 s'."""
    if x is None or not math.isfinite(x):
        return "?"
    if x < 1e-3:
        return f"{x * 1e6:.0f} µs"
    if x < 1.0:
        return f"{x * 1e3:.3g} ms"
    return f"{x:.3g} s"


def params(n: int) -> str:
    """Parameter counts: 950, 23.6k, 1.02M."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def thousands(n: float | None) -> str:
    """Steps with a thin space every three digits: 1 234 567."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "-"
    return f"{int(n):,}".replace(",", "\u2009")


def steps_compact(n: float) -> str:
    """Steps in at most 6 characters: 950, 20 000, 123k, 1.2M."""
    if n < 100_000:
        return thousands(n)
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.3g}M"
