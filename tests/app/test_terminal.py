"""`cockpit` as a person starts it: in tmux, keys sent, the screen read back. And the app's
import tree, which must never reach torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.app.workspaces import RunSpec, loss_rows, write_run
from tests.conftest import ROOT

NO_TORCH = """
import asyncio, sys, time
from pathlib import Path
from cockpit.app.main import CockpitApp

async def main():
    app = CockpitApp(Path(sys.argv[1]))
    async with app.run_test(size=(100, 30)) as pilot:
        while not app.runs:
            await pilot.pause(0.05)
        for keys in (["enter"], ["2"], ["3"], ["4"], ["escape"], ["c"], ["escape"], ["n"], ["escape"],
                     ["f"], ["escape"], ["question_mark"], ["escape"]):
            await pilot.press(*keys)
            await pilot.pause(0.2)
    assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
    print("no torch")

asyncio.run(main())
"""


def test_the_app_never_imports_torch(workspace):
    write_run(
        workspace,
        RunSpec("r-20300101-000000-aaaa", stage_names=["train"], steps=loss_rows(range(1, 50), 0)),
    )
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(workspace)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no torch" in done.stdout


class Tmux:
    """One detached tmux session of a fixed size."""

    def __init__(self, command: str, width: int = 100, height: int = 30):
        self.name = f"cockpit-test-{uuid.uuid4().hex[:8]}"
        # COLUMNS/LINES from the test process (run_test sets them) would override the pane's size
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                self.name,
                "-x",
                str(width),
                "-y",
                str(height),
                f"unset COLUMNS LINES; {command}",
            ],
            check=True,
        )

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        ).stdout

    def keys(self, *keys: str) -> None:
        for key in keys:  # one at a time: escape then a letter would read as alt+letter
            subprocess.run(["tmux", "send-keys", "-t", self.name, key], check=True)
            time.sleep(0.25)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never showed; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_cockpit_in_tmux(workspace):
    write_run(
        workspace,
        RunSpec(
            "smoke-20300101-000000-aaaa",
            stage_names=["train"],
            verdicts=[("train", "pass", "trained 300 steps")],
            steps=loss_rows(range(1, 301), 0),
            evals=[{"step": 300, "stage": "train", "val_loss": 0.2, "accuracy": 0.9}],
        ),
    )
    python = Path(sys.executable)
    command = (
        f"cd {ROOT} && PYTHONPATH={ROOT} {python} -m cockpit --workspace {workspace}; "
        "echo cockpit-exited-$?; sleep 60"
    )
    tmux = Tmux(command)
    try:
        screen = tmux.wait_for("smoke·aaaa")
        assert "✓ passed" in screen and "GPU vs data wait" in screen
        tmux.keys("?")
        tmux.wait_for("run view")
        tmux.keys("Escape")
        tmux.keys("Enter")
        screen = tmux.wait_for("300 steps")  # the stage bar, once the history is read
        assert "curves  ladder  log  preset" in screen
        tmux.keys("l")
        tmux.wait_for("log scale on")
        tmux.keys("Escape")
        tmux.wait_for("GPU vs data wait")
        tmux.keys("q")
        tmux.wait_for("cockpit-exited-0")
    finally:
        tmux.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_small_tmux_pane_gets_the_notice(workspace):
    tmux = Tmux(
        f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m cockpit --workspace {workspace}; sleep 60",
        width=70,
        height=20,
    )
    try:
        screen = tmux.wait_for("at least 80×24")
        assert "this one is 70×20" in screen
    finally:
        tmux.close()
