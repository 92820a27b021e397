"""`cockpit ablate` end to end: a grid run N at a time, the preset's ablations list, pruning a
planted hopeless run, Ctrl-C stopping the lot, and clear exit-2 messages for bad arguments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cockpit.ablate import best_row, format_table, grid_points, parse_grid, split_values
from cockpit.cli import UsageError
from engine.torchfree.runfolder import RunFolder, iter_runs
from tests.conftest import ROOT, ZOO, cockpit

BLOBS = ZOO / "blobs.yaml"
TWO_SLOTS = {"COCKPIT_CPU_SLOTS": "2", "COCKPIT_FAKE_GPUS": "0"}
PRUNE = [
    "--set",
    "prune={rule: median, metric: val_loss, warmup_steps: 10, every: 10, min_peers: 2}",
    "--set",
    "train={steps: 60, eval_every: 10, checkpoint_every: 30}",
]


def runs(ws: Path) -> list[RunFolder]:
    return list(iter_runs(ws))


def test_grid_values_split_on_top_level_commas_only():
    assert split_values('1e-3,[8,16],"a,b", {x: 1, y: 2}') == [
        "1e-3",
        "[8,16]",
        '"a,b"',
        "{x: 1, y: 2}",
    ]
    grid = parse_grid(["optimizer.lr=1e-3,3e-3", "batch_size=16,32"])
    assert grid == [("optimizer.lr", [1e-3, 3e-3]), ("batch_size", [16, 32])]
    assert (
        grid_points(grid)[1] == {"optimizer.lr": 1e-3, "batch_size": 32}
        and len(grid_points(grid)) == 4
    )


def test_the_table_marks_the_best_run_and_says_why_others_stopped():
    rows = [
        {
            "run_id": "a",
            "point": {"optimizer.lr": 0.01},
            "status": "passed",
            "reason": "",
            "pruned": None,
            "step": 60,
            "train_loss": 0.1,
            "val_loss": 0.2,
            "metric_name": "accuracy",
            "metric": 0.9,
        },
        {
            "run_id": "b",
            "point": {"optimizer.lr": 0.0},
            "status": "killed",
            "reason": "pruned: val_loss 1.4 ...",
            "pruned": {"metric": "val_loss"},
            "step": 10,
            "train_loss": 1.4,
            "val_loss": 1.4,
            "metric_name": "accuracy",
            "metric": 0.25,
        },
    ]
    assert best_row(rows) is rows[0]
    lines = format_table(rows, ["optimizer.lr"]).splitlines()
    assert lines[0].split() == [
        "RUN",
        "optimizer.lr",
        "STATUS",
        "STEP",
        "TRAIN",
        "LOSS",
        "VAL",
        "LOSS",
        "ACCURACY",
    ]
    assert lines[1].split() == ["★", "a", "0.01", "passed", "60", "0.1", "0.2", "0.9"]
    assert lines[2].split() == ["b", "0", "pruned", "10", "1.4", "1.4", "0.25"]
    assert lines[3] == "  b: pruned: val_loss 1.4 ..."


@pytest.mark.slow
def test_a_grid_of_three_runs_two_at_a_time(workspace):
    r = cockpit(
        "ablate",
        str(BLOBS),
        "--grid",
        "optimizer.lr=3e-3,1e-2,3e-2",
        "--parallel",
        "2",
        "--set",
        "train.steps=40",
        workspace=workspace,
        env=TWO_SLOTS,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    folders = runs(workspace)
    assert len(folders) == 3
    summaries = [f.summary() for f in folders]
    assert len({s["group"] for s in summaries}) == 1 and summaries[0]["group"]
    assert [s["overrides"] for s in summaries] == [
        {"train.steps": 40, "optimizer.lr": lr} for lr in (3e-3, 1e-2, 3e-2)
    ]
    assert all(s["status"] == "passed" and s["stage_names"] == ["train"] for s in summaries)
    assert all(f.request()["group_parallel"] == 2 for f in folders)
    # never more than two at once: the third started only after one of the first two ended
    spans = sorted((s["started"], s["ended"]) for s in summaries)
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    table = r.stdout[r.stdout.index("RUN") :].splitlines()
    assert table[0].split()[:3] == ["RUN", "optimizer.lr", "STATUS"]
    assert [line.split()[-6] for line in table[1:4]] == ["0.003", "0.01", "0.03"]
    assert sum(line.startswith("★") for line in table) == 1


@pytest.mark.slow
def test_the_presets_ablations_list_and_detach(workspace):
    r = cockpit(
        "ablate",
        str(BLOBS),
        "--set",
        "ablations=[{optimizer.lr: 0.01}, {batch_size: 16}]",
        "--set",
        "train.steps=20",
        "--detach",
        workspace=workspace,
        env=TWO_SLOTS,
    )
    assert r.returncode == 0, r.stderr
    assert "2 runs of zoo-blobs (train), 1 at a time" in r.stdout
    folders = runs(workspace)
    assert [f.summary()["overrides"] for f in folders] == [
        {
            "ablations": [{"optimizer.lr": 0.01}, {"batch_size": 16}],
            "train.steps": 20,
            "optimizer.lr": 0.01,
        },
        {
            "ablations": [{"optimizer.lr": 0.01}, {"batch_size": 16}],
            "train.steps": 20,
            "batch_size": 16,
        },
    ]
    deadline = time.monotonic() + 60
    while (
        any(f.state()["status"] in ("queued", "running") for f in folders)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert [f.state()["status"] for f in folders] == ["passed", "passed"]


@pytest.mark.slow
def test_pruning_stops_a_planted_hopeless_run(workspace):
    r = cockpit(
        "ablate",
        str(BLOBS),
        "--grid",
        "optimizer.lr=1e-2,3e-2,1e-9",  # the last learns nothing (0 is refused as a preset error)
        "--parallel",
        "2",
        *PRUNE,
        workspace=workspace,
        env=TWO_SLOTS,
    )
    assert r.returncode == 1, r.stdout + r.stderr  # exit as `run`: a pruned run is a killed run
    good, better, hopeless = (f.summary() for f in runs(workspace))
    assert good["status"] == better["status"] == "passed"
    assert hopeless["status"] == "killed"
    pruned = hopeless["pruned"]
    assert (
        pruned["metric"] == "val_loss"
        and pruned["peers"] == 2
        and pruned["value"] > pruned["median"]
    )
    assert hopeless["reason"] == pruned["reason"]
    assert pruned["reason"].startswith(
        f"pruned: val_loss {pruned['value']:.3g} at step {pruned['step']} is worse "
        f"than the median {pruned['median']:.3g} of 2 peers"
    )
    assert "pruned" in r.stdout.splitlines()[-2]


@pytest.mark.slow
def test_ctrl_c_stops_every_run_of_the_ablation(workspace):
    env = {**os.environ, **TWO_SLOTS, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cockpit",
            "ablate",
            str(BLOBS),
            "--grid",
            "optimizer.lr=1e-3,3e-3,1e-2",
            "--parallel",
            "2",
            "--set",
            "train.steps=100000",
            "--workspace",
            str(workspace),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        folders = runs(workspace)
        if sum(f.summary().get("status") == "running" for f in folders) == 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "stopping every run of the ablation" in out
    folders = runs(workspace)
    assert [f.state()["status"] for f in folders] == ["killed"] * 3
    assert all(f.proc() is None or not _alive(f.proc()["pid"]) for f in folders)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--grid", "optimizer.lr"],
            "--grid optimizer.lr: expected KEY=V1,V2,... with a dotted key",
        ),
        (["--grid", "optimizer.lr=1e-3,"], "--grid optimizer.lr=1e-3,: a value is empty"),
        (
            ["--grid", "optimzer.lr=1e-3,1e-2"],
            "'optimzer' is not a preset key — did you mean 'optimizer'?",
        ),
        (["--grid", "batch_size=8", "--grid", "batch_size=16"], "--grid batch_size is given twice"),
        (
            ["--grid", "batch_size=8,-3"],
            "batch_size must be an integer > 0, got -3 (a number). (in the ablation batch_size=-3)",
        ),
        (
            ["--grid", "batch_size=8", "--parallel", "0"],
            "--parallel 0: give how many runs may go at once",
        ),
        ([], "nothing to ablate in"),
        (
            ["--grid", "batch_size=8", "--set", "prune.rule=median", "--set", "prune.metric=miou"],
            "prune.metric 'miou' is not measured for classification runs; choose one of val_loss, accuracy, macro_f1.",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_sentence_and_start_nothing(workspace, args, message):
    r = cockpit("ablate", str(BLOBS), *args, workspace=workspace)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert runs(workspace) == []


def test_parse_grid_raises_usage_errors():
    with pytest.raises(UsageError, match="a value is empty"):
        parse_grid(["optimizer.lr="])


def test_ablate_and_the_scheduler_stay_torch_free():
    code = (
        "import sys; import cockpit.ablate, engine.torchfree.slots, engine.torchfree.pruning; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_an_ablation_that_cannot_fit_the_machine_starts_nothing(workspace):
    r = cockpit(
        "ablate",
        str(BLOBS),
        "--grid",
        "gpus=1,2",
        workspace=workspace,
        env={"COCKPIT_FAKE_GPUS": "1"},
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "cockpit: the preset asks for gpus: 2, but this machine has 1 GPU (0); "
        "lower gpus, or set gpus: 0 to train on the CPU."
    )
    assert runs(workspace) == []


@pytest.mark.slow
def test_tricks_print_the_baseline_and_one_row_per_trick_with_a_noise_band(workspace):
    """`cockpit ablate presets/quickstart.yaml --tricks` (issue 9's done-when), two of the
    quickstart's tricks and a short budget to stay quick."""
    r = cockpit(
        "ablate",
        str(ROOT / "presets" / "quickstart.yaml"),
        "--tricks",
        "--parallel",
        "2",
        "--set",
        "train={steps: 40, eval_every: 40, checkpoint_every: 0}",
        "--set",
        "tricks={batchnorm: {model.batchnorm: true}, dropout: {model.dropout: 0.2}}",
        workspace=workspace,
        env=TWO_SLOTS,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    table = r.stdout[r.stdout.index("TRICK") :].splitlines()
    assert table[0].split()[:2] == ["TRICK", "RUN"] and "VS BASELINE" in table[0]
    assert table[1].split()[0] == "baseline" and "(reference)" in table[1]
    rows = {line.split()[0]: line for line in table[2:4]}
    assert set(rows) == {"batchnorm", "dropout"}
    for line in rows.values():  # "+32.2% ± 4.4%  better": the difference and its band
        assert "% ± " in line and line.rstrip().endswith(("better", "worse", "within noise"))
    assert "binomial standard error of accuracy on 500 val samples" in r.stdout
    folders = runs(workspace)
    assert sorted(f.request()["trick"] for f in folders) == ["baseline", "batchnorm", "dropout"]
    assert all(f.summary()["overrides"]["prune.rule"] == "none" for f in folders)
    assert len({f.summary()["group"] for f in folders}) == 1


def test_tricks_with_a_grid_or_without_tricks_exit_2(workspace):
    r = cockpit("ablate", str(BLOBS), "--tricks", workspace=workspace)
    assert r.returncode == 2 and "declares no tricks" in r.stderr and "Traceback" not in r.stderr
    r = cockpit(
        "ablate",
        str(ROOT / "presets" / "quickstart.yaml"),
        "--tricks",
        "--grid",
        "optimizer.lr=1e-3,3e-3",
        workspace=workspace,
    )
    assert r.returncode == 2 and "--tricks and --grid do not mix" in r.stderr
    assert runs(workspace) == []


def test_the_header_says_when_the_machine_not_parallel_sets_how_many_run_at_once(
    workspace, monkeypatch
):
    # a 2-core machine has one CPU slot: `--parallel 2` would quietly run them one by one
    from cockpit.ablate import room_note
    from engine.torchfree import preset as presets

    runs = [({}, presets.load(BLOBS)), ({}, presets.load(BLOBS))]
    monkeypatch.delenv("COCKPIT_FAKE_GPUS", raising=False)
    monkeypatch.setenv("COCKPIT_CPU_SLOTS", "1")
    assert room_note(runs, workspace, 2) == (
        "1 at a time, not 2: this machine has 1 CPU slot ($COCKPIT_CPU_SLOTS=2 or cpu_slots: 2 "
        f"in {workspace / 'cockpit.yaml'} for 2)"
    )
    monkeypatch.setenv("COCKPIT_CPU_SLOTS", "2")
    assert room_note(runs, workspace, 2) is None  # room for both
    assert room_note(runs, workspace, 5) is None  # two runs: two slots are all they can use
    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "2")
    gpu_runs = [({}, presets.load(BLOBS, {"gpus": 1}))] * 4
    assert room_note(gpu_runs, workspace, 4) == "2 at a time, not 4: this machine has 2 GPUs"
    monkeypatch.setenv("COCKPIT_CPU_SLOTS", "many")  # a bad setting is said where it is used
    monkeypatch.delenv("COCKPIT_FAKE_GPUS")
    assert room_note(runs, workspace, 2) is None
