"""A run a pruning rule killed reads 'pruned' everywhere: the app, `cockpit ls`, `cockpit show`
and `cockpit kill` share one rule (engine/torchfree/runfolder.py ``is_pruned``)."""

from __future__ import annotations

from pathlib import Path

from cockpit import cli
from cockpit.app import formatting as fmt
from cockpit.show import render
from engine.torchfree.runfolder import RunFolder, display_status, is_pruned
from tests.app.workspaces import RunSpec, write_run

PRUNED = "pruned-20260101-000000-aaaa"
KILLED = "killed-20260101-000001-bbbb"
DECISION = {"metric": "val_loss", "step": 10, "reason": "pruned: val_loss 1.6 at step 10 is worse"}


def _workspace(ws: Path) -> tuple[RunFolder, RunFolder]:
    pruned = write_run(ws, RunSpec(PRUNED, status="killed", reason=DECISION["reason"], group="g"))
    pruned.write_summary({**pruned.summary(), "pruned": DECISION})  # as the engine ends it
    killed = write_run(ws, RunSpec(KILLED, status="killed", reason="stopped during train"))
    return pruned, killed


def _row(out: str, run_id: str) -> list[str]:
    (line,) = [line for line in out.splitlines() if line.startswith(run_id)]
    return line.split()


def test_the_rule_is_shared_by_the_app_and_the_cli(tmp_path):
    pruned, killed = _workspace(tmp_path / "ws")
    assert is_pruned("killed", DECISION["reason"]) and is_pruned("killed", "Pruned by rule")
    assert not is_pruned("killed", "stopped during train")
    assert not is_pruned("failed", DECISION["reason"])  # only a killed run was pruned
    assert not is_pruned("killed", None)
    assert display_status("passed", "") == "passed"
    assert fmt.display_status(pruned.snapshot()) == "pruned"
    assert fmt.display_status(killed.snapshot()) == "killed"


def test_cockpit_ls_shows_a_pruned_run_as_pruned(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "0")
    ws = tmp_path / "ws"
    _workspace(ws)
    assert cli.main(["ls", "--workspace", str(ws)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert _row(out.out, PRUNED)[2] == "pruned", out.out
    assert _row(out.out, KILLED)[2] == "killed", out.out


def test_cockpit_show_and_kill_say_pruned_too(capsys, tmp_path):
    ws = tmp_path / "ws"
    pruned, killed = _workspace(ws)
    assert "this run is pruned" in render(pruned, color=False)  # no batches/ written
    assert "this run is killed" in render(killed, color=False)
    assert cli.main(["kill", PRUNED, "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert f"{PRUNED}: not running (pruned)" in out
