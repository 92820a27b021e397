"""`cockpit run` end to end, as a user runs it: verdicts on the console, exit codes, clear
messages for bad presets, Ctrl-C and kill that leave no process behind, --detach."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine.torchfree.runfolder import RunFolder, iter_runs
from tests.conftest import PRESETS, ROOT, ZOO, cockpit, wait_for

QUICK = PRESETS / "quickstart.yaml"
BLOBS = ZOO / "blobs.yaml"


def only_run(ws: Path) -> RunFolder:
    runs = list(iter_runs(ws))
    assert len(runs) == 1, runs
    return runs[0]


def engine_processes(run_dir: Path) -> list[psutil.Process]:
    """Every process whose command line names the run folder (engine and its workers)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(run_dir) in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.Error:
            continue
    return out


def descendants_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_quickstart_passes_the_whole_ladder(workspace):
    r = cockpit("run", str(QUICK), workspace=workspace)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("init", "batch_independence", "overfit_one", "overfit_few", "generalize", "speed"):
        assert f"✓ {name}" in r.stdout
    assert "passed" in r.stdout
    folder = only_run(workspace)
    assert str(folder.path) in r.stdout
    s = folder.summary()
    for key in ("run_id", "preset", "status", "parent", "fork_step", "overrides", "stages"):
        assert key in s
    assert s["status"] == "passed" and s["preset"] == "quickstart"
    assert all(set(st) >= {"name", "status", "reason", "checks", "metrics"} for st in s["stages"])
    steps = folder.steps()
    trained = sum(st["metrics"]["steps"] for st in s["stages"] if "steps" in st["metrics"])
    assert trained > 0 and len(steps) == trained  # every batch of every training stage
    assert list(steps["step"][:3]) == [1.0, 2.0, 3.0]
    assert folder.evals() and folder.telemetry()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "optimizr.lr=1"], "did you mean 'optimizer'"),
        (["--set", "batch_size=abc"], "batch_size must be an integer > 0, got 'abc'"),
        (
            ["--set", "overfit_one.step=5"],
            "'step' is not a setting of overfit_one — did you mean 'steps'?",
        ),
        (["--stages", "init,overfit"], "'overfit' is not a stage"),
        (["--set", "nonsense"], "expected KEY=VALUE"),
    ],
)
def test_bad_arguments_exit_2_with_one_sentence(workspace, args, words):
    r = cockpit("run", str(QUICK), *args, workspace=workspace)
    assert r.returncode == 2
    assert words in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(iter_runs(workspace)), "a rejected preset must not leave a run folder"


def test_yaml_syntax_error_names_the_line(workspace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: {_target_: shapes.SmallCNN\ndata: {_target_: shapes.classification}\n"
    )
    r = cockpit("run", str(bad), workspace=workspace)
    assert r.returncode == 2
    assert f"{bad}, line 3" in r.stderr and "YAML syntax error" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_preset_file_suggests_a_near_name(workspace):
    r = cockpit("run", "presets/quikstart.yaml", workspace=workspace)
    assert r.returncode == 2
    assert "did you mean presets/quickstart.yaml" in r.stderr


def test_unimportable_target_exits_2_from_the_engine(workspace):
    r = cockpit("run", str(QUICK), "--set", "model._target_=shapes.SmallCNNN", workspace=workspace)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "(--set model._target_=shapes.SmallCNNN)" in r.stderr
    assert "has no attribute 'SmallCNNN' — did you mean 'SmallCNN'?" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert only_run(workspace).summary()["error_kind"] == "preset"


def test_unimportable_target_in_the_file_names_its_line(workspace, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        "task: regression\nmodel: {_target_: torch.nn.Linear, in_features: 4, out_features: 1}\n"
        "data: {_target_: torch.utils.data.TensorDatasett}\n"
    )
    r = cockpit("run", str(bad), "--stages", "init", workspace=workspace)
    assert r.returncode == 2
    assert (
        f"{bad}, line 3: data._target_ 'torch.utils.data.TensorDatasett' cannot be imported"
        in r.stderr
    )
    assert "did you mean 'TensorDataset'?" in r.stderr


def test_crash_in_user_code_exits_1_traceback_only_in_the_log(workspace):
    r = cockpit(
        "run",
        str(BLOBS),
        "--set",
        "model={_target_: zoo.ShapeBug}",
        "--stages",
        "overfit_one",
        workspace=workspace,
    )
    assert r.returncode == 1
    assert "crashed: RuntimeError: mat1 and mat2 shapes cannot be multiplied" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    folder = only_run(workspace)
    assert "Traceback (most recent call last)" in folder.log_tail()
    assert folder.summary()["status"] == "error"


def test_failing_stage_exits_1_and_stops_the_ladder(workspace):
    r = cockpit(
        "run", str(BLOBS), "--set", "data._target_=zoo.blobs_augmented_val", workspace=workspace
    )
    assert r.returncode == 1
    assert "✗ init" in r.stdout and "never augment val" in r.stdout
    assert "overfit_one" not in r.stdout


def long_run_args(workers: int) -> list[str]:
    return [
        "--stages",
        "train",
        "--set",
        "train.steps=1000000",
        "--set",
        f"num_workers={workers}",
        "--set",
        "train.checkpoint_every=0",
    ]


def test_ctrl_c_stops_the_run_and_its_workers(workspace):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cockpit",
            "run",
            str(BLOBS),
            *long_run_args(2),
            "--workspace",
            str(workspace),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    folder = wait_for(lambda: next(iter(iter_runs(workspace)), None))
    wait_for(lambda: len(folder.steps()) > 20)
    tree = engine_processes(folder.path.resolve())
    engine = psutil.Process(folder.proc()["pid"])
    pids = [engine.pid] + [c.pid for c in engine.children(recursive=True)]
    assert len(pids) >= 3, "expected DataLoader workers under the engine"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "stopping" in out and "killed" in out
    assert "Traceback" not in out + err
    assert folder.summary()["status"] == "killed"
    assert wait_for(lambda: not descendants_alive(pids), timeout=15)
    assert tree  # the engine was found by its command line too
    assert len(folder.steps()) > 20  # the data logged before the stop is intact
    assert folder.latest_checkpoint() is not None  # the train stage saved on its way out


def test_detach_then_kill_leaves_nothing_behind(workspace):
    r = cockpit("run", str(BLOBS), *long_run_args(2), "--detach", workspace=workspace)
    assert r.returncode == 0
    folder = only_run(workspace)
    assert folder.run_id in r.stdout
    wait_for(lambda: len(folder.steps()) > 20)
    engine = psutil.Process(folder.proc()["pid"])
    pids = [engine.pid] + [c.pid for c in engine.children(recursive=True)]
    ls = cockpit("ls", "--json", workspace=workspace)
    (row,) = json.loads(ls.stdout)
    assert row["status"] == "running" and row["stage"] == "train" and row["step"] > 0
    k = cockpit("kill", folder.run_id[:12], workspace=workspace)
    assert k.returncode == 0 and "killed" in k.stdout
    assert not descendants_alive(pids)
    s = folder.summary()
    assert s["status"] == "killed"
    assert len(folder.steps()) > 20
    again = cockpit("kill", folder.run_id, workspace=workspace)
    assert "not running (killed)" in again.stdout


def test_unknown_run_id_is_a_clear_error(workspace):
    r = cockpit("kill", "nope", workspace=workspace)
    assert r.returncode == 2
    assert "no run 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_engine_killed_hard_reads_as_error(workspace):
    r = cockpit("run", str(BLOBS), *long_run_args(0), "--detach", workspace=workspace)
    assert r.returncode == 0
    folder = only_run(workspace)
    wait_for(lambda: len(folder.steps()) > 5)
    os.kill(folder.proc()["pid"], signal.SIGKILL)
    wait_for(lambda: folder.state()["status"] == "error")
    assert "gone without a word" in folder.state()["reason"]
    assert folder.summary()["status"] == "running"  # the file itself was never touched


def test_cockpit_side_never_imports_torch():
    code = (
        "import sys; import cockpit.cli, cockpit.launch, cockpit.console, cockpit.fork, "
        "engine.torchfree.preset, engine.torchfree.runfolder, engine.torchfree.ladder, engine.torchfree.slots; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_engine_never_imports_textual():
    code = (
        "import sys, pkgutil, importlib, engine, engine.stages; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(engine.__path__, 'engine.') "
        "if not m.name.endswith('__main__')]; "
        "assert not any(m.startswith('textual') for m in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_kill_of_a_run_training_on_another_machine_says_where_and_leaves_it_be(workspace):
    # a workspace on a shared file system (NFS home): the run was started on gpu-node-7
    from engine.torchfree.runfolder import write_json_atomic

    folder = RunFolder(workspace / "remote-20300101-000800-9998")
    folder.path.mkdir()
    folder.write_summary({"run_id": folder.run_id, "preset": "blobs", "status": "running"})
    write_json_atomic(
        folder.file("proc.json"), {"pid": 4242, "create_time": 1.0e9, "host": "gpu-node-7"}
    )
    r = cockpit("kill", "remote", workspace=workspace)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith(f"{folder.run_id}: not stopped — it runs on gpu-node-7, not on")
    assert f"ssh gpu-node-7 cockpit kill {folder.run_id}" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert folder.summary()["status"] == "running"  # not marked killed while it trains on
