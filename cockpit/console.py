"""What ``cockpit run`` prints: one line per stage as its verdict lands, failing checks
beneath it, a live progress line on a terminal, and the run folder to look in."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from typing import TextIO

from engine.torchfree.runfolder import JsonlTail, RunFolder, StepsTail

MARK = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "·"}
COLOR = {
    "pass": "32",
    "warn": "33",
    "fail": "31",
    "skip": "2",
    "passed": "32",
    "failed": "31",
    "error": "31",
    "killed": "35",
}


class Printer:
    def __init__(self, out: TextIO = sys.stdout):
        self.out = out
        self.tty = out.isatty()
        self.color = self.tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self.live = False

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def line(self, text: str = "") -> None:
        self.clear_live()
        print(text, file=self.out, flush=True)

    def status(self, text: str) -> None:
        """A progress line that the next line overwrites (terminals only)."""
        if not self.tty:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.out.write("\r\x1b[2K" + self.paint(text[:width], "2"))
        self.out.flush()
        self.live = True

    def clear_live(self) -> None:
        if self.live:
            self.out.write("\r\x1b[2K")
            self.live = False


def stage_line(p: Printer, record: dict, width: int = 20) -> None:
    status = record.get("status", "?")
    mark = p.paint(MARK.get(status, "?"), COLOR.get(status, "0"))
    secs = record.get("seconds")
    took = f"  ({secs:.1f} s)" if isinstance(secs, (int, float)) else ""
    name = record.get("stage") or record.get("name", "")
    p.line(
        f"  {mark} {name:<{width}} {p.paint(f'{status:<4}', COLOR.get(status, '0'))}  {record.get('reason', '')}{took}"
    )
    if status in ("warn", "fail"):
        for c in record.get("checks", []):
            if c.get("status") in ("warn", "fail") and c.get("detail") != record.get("reason"):
                cm = p.paint(MARK[c["status"]], COLOR[c["status"]])
                p.line(f"      {cm} {c['name']}: {c['detail']}")


def follow(
    folder: RunFolder,
    proc: subprocess.Popen | None,
    p: Printer,
    *,
    poll: float = 0.2,
    on_interrupt=None,
    tick=None,
) -> dict:
    """Print events until the engine exits; returns the final summary."""
    events = JsonlTail(folder.file("events.jsonl"))
    steps = StepsTail(folder.file("steps.bin"))
    names = folder.summary().get("stage_names") or []
    width = max([len(n) for n in names] + [18]) + 1
    current = None
    shown_queue = None
    last_progress = 0.0
    while True:
        try:
            for ev in events.read_new():
                kind = ev.get("event")
                if kind == "run_start":
                    gpus = ev.get("gpus")
                    p.line(
                        p.paint(
                            "  started" + (f" on GPU {','.join(map(str, gpus))}" if gpus else ""),
                            "2",
                        )
                    )
                elif kind == "stage_start":
                    current = ev.get("stage")
                elif kind == "stage_end":
                    if current == ev.get("stage"):
                        current = None
                    stage_line(p, ev, width)
                elif kind == "error" and ev.get("kind") != "preset":
                    p.line(p.paint(f"  ✗ {ev.get('message')}", COLOR["fail"]))
            cols = steps.read_new()
            now = time.monotonic()
            summary = None
            if current and len(cols) and now - last_progress > 0.25:
                last_progress = now
                loss = cols["train_loss"][-1]
                p.status(
                    f"  … {current:<{width}} step {int(cols['step'][-1])}  train loss {_num(loss)}"
                )
            elif not current and now - last_progress > 1.0:
                last_progress = now
                summary = folder.summary()
                q = summary.get("queue")
                if summary.get("status") == "queued" and q and q != shown_queue:
                    shown_queue = q
                    p.line(p.paint(f"  queued: {q}", "2"))
            done = proc.poll() is not None if proc is not None else _finished(folder)
            if done:
                for ev in events.read_new():
                    if ev.get("event") == "stage_end":
                        stage_line(p, ev, width)
                p.clear_live()
                return folder.summary()
            if tick is not None:
                tick()
            time.sleep(poll)
        except KeyboardInterrupt:
            if on_interrupt is None:
                raise
            on_interrupt()


def _finished(folder: RunFolder) -> bool:
    return folder.state().get("status") not in ("queued", "running")


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"
