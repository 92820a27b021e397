"""Shared fixtures: a fresh workspace, and the CLI run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "presets"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "runs"
    ws.mkdir()
    return ws


def cockpit(*args: str, workspace: Path | None = None, timeout: float = 300,
            cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m cockpit ARGS`` in a subprocess; returns the completed process."""
    e = os.environ.copy()
    e.pop("COCKPIT_WORKSPACE", None)
    e["PYTHONPATH"] = str(ROOT)
    e["NO_COLOR"] = "1"
    e.update(env or {})
    cmd = [sys.executable, "-m", "cockpit", *args]
    if workspace is not None:
        cmd += ["--workspace", str(workspace)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=e)
