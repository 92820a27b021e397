"""A run requeued by Slurm logs each step once: before the resumed attempt appends, what the
previous attempt logged after the checkpoint it resumes from is cut off steps.bin, losses.bin
and evals.jsonl (``engine/torchfree/slurm.py``'s ``resume_plan`` says from which step).

Apart from slurm.py because it needs the run folder's formats while the run folder reads
Slurm's state: slurm.py imports neither runfolder.py nor losses.py, so no import cycle forms.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path
from typing import Any

from engine.torchfree.losses import RECORD_BYTES
from engine.torchfree.regular import open_regular
from engine.torchfree.runfolder import RECORD_SIZE


def log_cut(folder: Any, step: int) -> dict[str, int]:
    """Cut the logs back to ``step`` (``cut_logs_after``) and say what went, in a line for
    engine.log. Returns what was removed, by file."""
    cut = cut_logs_after(folder, step)
    if any(cut.values()):
        print(
            f"requeued: cut what the previous attempt logged after step {step}: "
            + ", ".join(f"{n} {name}" for name, n in cut.items() if n),
            flush=True,
        )
    return cut


def _first_record_after(f: Any, size: int, record: int, step: float) -> int:
    """Index of the first fixed-size record whose first float64 (the step) is above ``step``;
    the steps of one file never go down (a resume cuts the file back before it appends)."""
    lo, hi = 0, size // record
    while lo < hi:
        mid = (lo + hi) // 2
        f.seek(mid * record)
        (value,) = struct.unpack("<d", f.read(8))
        if value > step:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _open_to_cut(path: Path):
    """The file opened read-write, or None when there is none or something other than a
    regular file is in its place (a FIFO cannot be cut, and reading one would block; nothing
    but the engine's own files is cut)."""
    try:
        return open_regular(path, "r+b")
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise


def cut_records_after(path: Path, record: int, step: int) -> int:
    """Cut a file of ``record``-byte float64 records (steps.bin, losses.bin: the step first)
    back to the records of steps up to ``step``. Returns the records removed."""
    f = _open_to_cut(path)
    if f is None:
        return 0
    with f:
        size = os.fstat(f.fileno()).st_size
        whole = size - size % record
        keep = _first_record_after(f, whole, record, float(step))
        if keep * record < size:
            f.truncate(keep * record)  # one truncate: a reader sees the old or the new end
            os.fsync(f.fileno())
        return whole // record - keep


def cut_jsonl_after(path: Path, step: int) -> int:
    """Cut evals.jsonl back before its first row of a step above ``step`` (one truncate at a
    line boundary; rows without a step stay, a torn last line goes). Returns the rows removed."""
    f = _open_to_cut(path)
    if f is None:
        return 0
    with f:
        offset, cut, removed = 0, None, 0
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            at = row.get("step") if isinstance(row, dict) else None
            torn = not line.endswith(b"\n")  # the killed attempt's half line goes too
            if cut is None and (torn or (isinstance(at, (int, float)) and at > step)):
                cut = offset
            if cut is not None:
                removed += 1
            offset += len(line)
        if cut is not None:
            f.truncate(cut)
            os.fsync(f.fileno())
        return removed


def cut_logs_after(folder: Any, step: int) -> dict[str, int]:
    """A requeued train-only run resumes from its checkpoint at ``step``: what its previous
    attempt logged after that step is cut off steps.bin, losses.bin and evals.jsonl before the
    run logs those steps again, so every reader (the app's history, ``ls``, export) sees each
    step once. Idempotent: a crash half-way is repaired by the next attempt's cut."""
    root = Path(folder.path)
    return {
        "steps.bin": cut_records_after(root / "steps.bin", RECORD_SIZE, step),
        "losses.bin": cut_records_after(root / "losses.bin", RECORD_BYTES, step),
        "evals.jsonl": cut_jsonl_after(root / "evals.jsonl", step),
    }
