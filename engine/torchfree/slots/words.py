"""How slots and queues read in a sentence: '3rd in line', '2 GPUs', foreign processes."""

from __future__ import annotations


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


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
