"""Run folders written directly with the run folder's writers: fast, and fixed in time.

Every timestamp derives from ``T0``; the tests freeze the app's clock at ``T0`` so ages,
time axes and snapshots never move. "Live" runs point their proc.json at a real, harmless
process (``sleep``) so the liveness check sees them alive and a kill has something to stop.
"""

from __future__ import annotations

import math
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from engine.torchfree.runfolder import JsonlAppender, RunFolder, StepsAppender, write_json_atomic

T0 = 1_900_000_000.0
"""The frozen 'now' of the fixture workspaces."""

LADDER = ["init", "batch_independence", "overfit_one", "overfit_few", "generalize", "speed"]
PRESET_YAML = """name: blobs
task: classification
seed: 0
model: {_target_: zoo.MLP, in_dim: 16, hidden: 32, classes: 4}
data: {_target_: zoo.blobs}
optimizer: {_target_: torch.optim.Adam, lr: 0.01}
batch_size: 32
"""


def wiggle(i: int, seed: int) -> float:
    """Deterministic noise in [-1, 1] (no RNG: snapshots must not move)."""
    return math.sin(i * 12.9898 + seed * 78.233) * 0.5 + math.sin(i * 0.37 + seed) * 0.5


def loss_rows(
    steps: Iterable[int],
    stage: int,
    *,
    start: float = 1.4,
    floor: float = 0.05,
    tau: float = 300.0,
    seed: int = 0,
    t_start: float = T0 - 600,
    dt: float = 0.1,
    val_every: int = 1,
    data_wait: float = 0.1,
) -> list[tuple]:
    """Step records (STEP_COLUMNS order) of a loss decaying from ``start`` to ``floor``."""
    rows = []
    for n, step in enumerate(steps):
        train = floor + (start - floor) * math.exp(-step / tau) * (1 + 0.25 * wiggle(step, seed))
        val = train * 1.15 + 0.02 * wiggle(step, seed + 1) if step % val_every == 0 else math.nan
        step_s = 0.05
        rows.append(
            (
                float(step),
                t_start + n * dt,
                float(stage),
                train,
                val,
                data_wait * step_s,
                step_s,
                math.nan,
                1e-3,
            )
        )
    return rows


@dataclass
class RunSpec:
    run_id: str
    status: str = "passed"
    stage_names: list[str] = field(default_factory=lambda: list(LADDER))
    verdicts: list[tuple[str, str, str]] = field(default_factory=list)
    """(stage, pass|warn|fail, reason) of the stages that landed."""
    steps: list[tuple] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    telemetry: list[dict] = field(default_factory=list)
    created: float = T0 - 3600
    reason: str = ""
    current_stage: str | None = None
    parent: str | None = None
    fork_step: int | None = None
    overrides: dict = field(default_factory=dict)
    group: str | None = None
    queue: str | None = None
    queue_position: int | None = None
    engine_pid: int | None = None
    """A live process to record as the engine (live runs), else no proc.json."""
    log: str = ""
    checkpoint_step: int | None = None
    device: str = "cpu"


def write_run(workspace: Path, spec: RunSpec) -> RunFolder:
    folder = RunFolder(workspace / spec.run_id)
    folder.path.mkdir(parents=True)
    write_json_atomic(
        folder.file("run.json"),
        {
            "run_id": spec.run_id,
            "preset_path": "presets/blobs.yaml",
            "preset_dir": "presets",
            "overrides": spec.overrides,
            "stages": spec.stage_names,
            "parent": spec.parent,
            "fork_step": spec.fork_step,
            "warm_from": f"../{spec.parent}/checkpoints/x.pt" if spec.fork_step else None,
            "gpus": 0,
            "group": spec.group,
            "created": spec.created,
        },
    )
    folder.file("preset.yaml").write_text(PRESET_YAML)
    stages = [
        {
            "name": name,
            "status": verdict,
            "reason": reason,
            "checks": [{"name": f"{name}_check", "status": verdict, "detail": reason}],
            "metrics": {"seconds": 1.5},
            "seconds": 1.5,
        }
        for name, verdict, reason in spec.verdicts
    ]
    summary = {
        "run_id": spec.run_id,
        "preset": "blobs",
        "status": spec.status,
        "parent": spec.parent,
        "fork_step": spec.fork_step,
        "overrides": spec.overrides,
        "stages": stages,
        "stage_names": spec.stage_names,
        "group": spec.group,
        "created": spec.created,
        "started": spec.created + 1,
        "current_stage": spec.current_stage,
        "reason": spec.reason,
        "device": spec.device,
        "task": "classification",
    }
    if spec.status not in ("queued", "running"):
        summary["ended"] = spec.created + 600
    if spec.queue:
        summary["queue"] = spec.queue
        summary["queue_position"] = spec.queue_position
    folder.write_summary(summary)
    folder.write_steps_header()
    steps = StepsAppender(folder.file("steps.bin"))
    steps.append_many(spec.steps)
    steps.close()
    for name, rows in (("evals.jsonl", spec.evals), ("telemetry.jsonl", spec.telemetry)):
        out = JsonlAppender(folder.file(name))
        for row in rows:
            out.append(row)
        out.close()
    folder.file("engine.log").write_text(spec.log)
    if spec.engine_pid is not None:
        write_json_atomic(
            folder.file("proc.json"),
            {
                "pid": spec.engine_pid,
                "pgid": None,
                "create_time": psutil.Process(spec.engine_pid).create_time(),
                "host": socket.gethostname(),
            },
        )
    if spec.checkpoint_step is not None:
        (folder.path / "checkpoints").mkdir()
        name = f"step_{spec.checkpoint_step:09d}.pt"
        (folder.path / "checkpoints" / name).write_bytes(b"not a real checkpoint")
        write_json_atomic(
            folder.path / "checkpoints" / "latest.json",
            {"file": name, "step": spec.checkpoint_step, "stage": "train"},
        )
    return folder


def evals_every(every: int, last: int, stage: str, *, seed: int = 0, first: int = 0) -> list[dict]:
    rows = []
    for step in range(first, last + 1, every):
        progress = 1 - math.exp(-step / 300)
        rows.append(
            {
                "step": step,
                "time": T0 - 600 + step * 0.1,
                "stage": stage,
                "val_loss": 1.5 - 1.3 * progress + 0.01 * wiggle(step, seed),
                "accuracy": 0.25 + 0.7 * progress,
                "macro_f1": 0.2 + 0.72 * progress,
            }
        )
    return rows


def telemetry_rows(wait: float, *, seconds: int = 180, gpu_index: int | None = 0) -> list[dict]:
    rows: list[dict] = [{"t": T0 - seconds - 1, "kind": "header", "gpu_index": gpu_index}]
    for i in range(seconds):
        row = {
            "t": T0 - seconds + i + 1,
            "cpu": 50.0,
            "ram": 10.0,
            "rss_mb": 300.0,
            "steps": 20,
            "data_wait": round(max(0.0, min(1.0, wait + 0.05 * wiggle(i, 3))), 4),
        }
        if gpu_index is not None:
            row["gpu"] = {
                "index": gpu_index,
                "util": 40.0,
                "mem_used_mb": 2000.0,
                "mem_total_mb": 81920.0,
                "power_w": 120.0,
            }
        rows.append(row)
    return rows


def start_sleeper() -> subprocess.Popen:
    """A stand-in engine: a process that lives until killed (and then is reaped)."""
    return subprocess.Popen(["sleep", "600"], start_new_session=True)


def build_lab(workspace: Path, sleeper_pid: int) -> dict[str, str]:
    """Seven runs covering every look: passed ladder, live train, failed, warm fork, pruned,
    queued, crashed. Returns {role: run_id}."""
    ids = {
        "passed": "blobs-20300101-000000-aaaa",
        "live": "blobs-20300101-000100-bbbb",
        "failed": "blobs-20300101-000200-cccc",
        "fork": "blobs-20300101-000300-dddd",
        "pruned": "blobs-20300101-000400-eeee",
        "queued": "blobs-20300101-000500-ffff",
        "crashed": "blobs-20300101-000600-abcd",
    }
    ladder_verdicts = [
        ("init", "pass", "loss at init 1.39 ≈ ln 4 = 1.386 for 4 classes"),
        ("batch_independence", "pass", "4 samples: no output depends on another sample's input"),
        ("overfit_one", "pass", "memorised one sample in 40 steps"),
        ("overfit_few", "warn", "memorised 8 samples, slowly: 380 steps"),
        ("generalize", "pass", "val loss 1.39 → 0.21 in 400 steps; accuracy 0.93"),
        ("speed", "pass", "compute-bound: 4.1 ms per batch, data wait 3%"),
    ]
    write_run(
        workspace,
        RunSpec(
            ids["passed"],
            created=T0 - 7200,
            verdicts=ladder_verdicts,
            steps=loss_rows(range(1, 41), 2, tau=10, seed=1)
            + loss_rows(range(1, 381), 3, tau=80, seed=2)
            + loss_rows(range(1, 401), 4, seed=3)
            + loss_rows(range(1, 21), 5, seed=4),
            evals=evals_every(100, 400, "generalize", seed=3),
        ),
    )
    write_run(
        workspace,
        RunSpec(
            ids["live"],
            status="running",
            created=T0 - 300,
            stage_names=["train"],
            current_stage="train",
            steps=loss_rows(range(1, 1501), 0, seed=5, val_every=5, data_wait=0.6),
            evals=evals_every(250, 1500, "train", seed=5),
            telemetry=telemetry_rows(0.6),
            overrides={"optimizer.lr": 0.001},
            group="lr-sweep",
            engine_pid=sleeper_pid,
            checkpoint_step=1500,
            log="[00:00:01] run starting\n[00:00:02] train: started\n",
        ),
    )
    write_run(
        workspace,
        RunSpec(
            ids["failed"],
            status="failed",
            created=T0 - 5400,
            reason="overfit_one: loss stuck at 1.38 after 300 steps",
            verdicts=[
                *ladder_verdicts[:2],
                ("overfit_one", "fail", "loss stuck at 1.38 after 300 steps (lr too low?)"),
            ],
            steps=loss_rows(range(1, 301), 2, tau=1e6, seed=6),
            overrides={"optimizer.lr": 1e-7},
        ),
    )
    write_run(
        workspace,
        RunSpec(
            ids["fork"],
            status="passed",
            created=T0 - 200,
            stage_names=["train"],
            parent=ids["live"],
            fork_step=1000,
            overrides={"optimizer.lr": 0.0003},
            group="lr-sweep",
            verdicts=[("train", "pass", "trained 500 steps: train loss 0.09 → 0.06")],
            steps=loss_rows(range(1001, 1501), 0, seed=7, start=0.5, tau=400),
            evals=evals_every(250, 1500, "train", seed=7, first=1250),
        ),
    )
    write_run(
        workspace,
        RunSpec(
            ids["pruned"],
            status="killed",
            created=T0 - 250,
            stage_names=["train"],
            group="lr-sweep",
            reason="pruned: val_loss 0.91 at step 500 is worse than the median 0.42 of 2 peers",
            verdicts=[],
            overrides={"optimizer.lr": 0.1},
            steps=loss_rows(range(1, 501), 0, seed=8, start=1.6, floor=0.8),
            evals=evals_every(250, 500, "train", seed=8),
        ),
    )
    write_run(
        workspace,
        RunSpec(
            ids["queued"],
            status="queued",
            created=T0 - 30,
            stage_names=["train"],
            group="lr-sweep",
            queue="2nd in line for a CPU slot (1 CPU slot, all busy)",
            queue_position=2,
            overrides={"optimizer.lr": 0.03},
            engine_pid=sleeper_pid,
        ),
    )
    write_run(
        workspace,
        RunSpec(
            ids["crashed"],
            status="error",
            created=T0 - 100,
            reason="init: crashed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (in zoo.py:12, forward)",
            verdicts=[
                ("init", "fail", "crashed: RuntimeError: mat1 and mat2 shapes cannot be multiplied")
            ],
            log="[00:00:01] init: started\n[00:00:02] init crashed:\nTraceback (most recent call last):\n"
            '  File "zoo.py", line 12, in forward\n    return self.net(x)\n'
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x15 and 16x32)\n",
        ),
    )
    return ids
