"""Shared fixtures: a fresh workspace, and the CLI run as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "presets"

# A suite started in the background of a non-interactive shell (`pytest &` in a script) has
# SIGINT ignored, and every process it starts would inherit that: the Ctrl-C tests could not
# interrupt anything. The tests and their processes take SIGINT as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def workspace(tmp_path: Path):
    ws = tmp_path / "runs"
    ws.mkdir()
    yield ws
    _stop_leftovers(ws)


def _stop_leftovers(ws: Path) -> None:
    """SIGKILL what a test left running in its workspace (an engine or a tracked script with
    its workers): a test that fails before its own stop must not leave a million-step run
    eating a core for the rest of the suite. Never this process or one above it."""
    import psutil

    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for proc_json in ws.glob("*/proc.json"):
        try:
            info = json.loads(proc_json.read_text())
            proc = psutil.Process(int(info["pid"]))
            if proc.pid in spared or abs(proc.create_time() - float(info["create_time"])) > 1:
                continue
            for p in [*proc.children(recursive=True), proc]:
                p.kill()
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            continue


def cockpit(
    *args: str,
    workspace: Path | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m cockpit ARGS`` in a subprocess; returns the completed process."""
    e = os.environ.copy()
    e.pop("COCKPIT_WORKSPACE", None)
    e["PYTHONPATH"] = str(ROOT)
    e["NO_COLOR"] = "1"
    e.update(env or {})
    cmd = [sys.executable, "-m", "cockpit", *args]
    if workspace is not None:
        cmd += ["--workspace", str(workspace)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=e
    )


ZOO = ROOT / "tests" / "zoo"


def run_inprocess(
    preset_path: Path,
    workspace: Path,
    *,
    overrides: dict | None = None,
    stages: list[str] | None = None,
) -> tuple[int, dict, Path]:
    """Create a run folder and walk the ladder in this process (no torch import per case).

    Returns (exit code, summary, run folder)."""
    import signal

    from cockpit.launch import create_run
    from engine.runner import Runner
    from engine.torchfree import preset as presets

    preset = presets.load(preset_path, overrides)
    folder = create_run(workspace, preset, overrides=overrides or {}, stages=stages)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = Runner(folder).run()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return code, folder.summary(), folder.path


def stage(summary: dict, name: str) -> dict:
    found = [s for s in summary["stages"] if s["name"] == name]
    assert found, f"stage {name} did not run: {summary.get('status')} {summary.get('reason')}"
    return found[0]


def check(stage_record: dict, name: str) -> dict:
    found = [c for c in stage_record["checks"] if c["name"] == name]
    assert found, f"no check {name} in {[c['name'] for c in stage_record['checks']]}"
    return found[0]


def wait_for(pred, timeout: float = 90.0, every: float = 0.05):
    """Poll ``pred`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")
