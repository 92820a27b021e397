"""The telemetry thread on a full disk: it stops with one line, never a thread traceback."""

from __future__ import annotations

import errno
import threading

from engine.context import WaitMeter
from engine.telemetry import TelemetrySampler


def test_a_full_disk_stops_telemetry_with_one_line(tmp_path, capsys):
    sampler = TelemetrySampler(tmp_path / "telemetry.jsonl", WaitMeter(), None, interval=0.01)

    def full(row):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "telemetry.jsonl"))

    sampler.out.append = full
    crashed = []
    threading.excepthook, saved = (lambda args: crashed.append(args)), threading.excepthook
    try:
        sampler.start()
        sampler.join(timeout=5)
    finally:
        threading.excepthook = saved
    assert not sampler.is_alive() and not crashed
    out = capsys.readouterr().out
    assert "telemetry stopped: No space left on device on" in out and "telemetry.jsonl" in out
    sampler.stop()
