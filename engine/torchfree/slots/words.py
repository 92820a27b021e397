"""How slots and queues read in a sentence: '3rd in line', '2 GPUs', foreign processes."""

from __future__ import annotations


def ordinal(n: int) -> str:
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plural(n: int, word: str) -> str:
    """'1 GPU', '2 GPUs', '2 processes'."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}" + ("es" if word.endswith("s") else "s")


def foreign_note(foreign: dict[int, list[dict]]) -> str:
    parts = []
    for i, procs in sorted(foreign.items()):
        what = ", ".join(
            f"{p['name']} pid {p['pid']}" + (f" {p['mem_mb'] / 1024:.1f} GB" if p["mem_mb"] else "")
            for p in procs[:3]
        )
        parts.append(
            f"GPU {i} also runs {plural(len(procs), 'process')} cockpit did not start ({what})"
        )
    return "; ".join(parts)
