"""Ablations at scale, each figure against a baseline measured in the same run.

1. ddp       — the multi_gpu stage on presets/quickstart.yaml with gpus: 2: samples/s of DDP on
               2 processes (gloo on CPU, NCCL on GPUs) against one process on the same device
               and cores, as measured inside the stage.
2. schedule  — how long a queued run waits after the slot it waits for frees up (the run
               ahead ends) until it holds the slot, against how long a run takes to get a free
               slot from its launch (the engine's own start-up): whole processes, CPU slots = 1.
3. kill      — `cockpit kill` until every process of the run is gone and its slot is free, for
               a run with 2 DataLoader workers and for a 2-rank DDP run, against SIGKILL of the
               same process tree (the floor: no grace, no checkpoint).

    python benchmarks/ablation_bench.py [ddp] [schedule] [kill] [--repeats 5]

Machines here are noisy: the README quotes these ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cockpit import launch  # noqa: E402
from engine.torchfree import slots  # noqa: E402
from engine.torchfree.runfolder import RunFolder, iter_runs  # noqa: E402

QUICK = ROOT / "presets" / "quickstart.yaml"
BLOBS = ROOT / "tests" / "zoo" / "blobs.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COCKPIT_CPU_SLOTS": "1", "NO_COLOR": "1"}
SLOW_RUN = [
    "--stages",
    "train",
    "--set",
    "train={steps: 1000000, eval_every: 1000, checkpoint_every: 1000}",
    "--set",
    "data._target_=zoo.blobs_slow",
    "--set",
    "data.delay=0.0005",
    "--set",
    "num_workers=2",
]


def cockpit(ws: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cockpit", *args, "--workspace", str(ws)],
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=ROOT,
        check=False,
    )


def wait_for(pred, timeout: float = 120.0, every: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError("timed out")


def newest(ws: Path) -> RunFolder:
    return list(iter_runs(ws))[-1]


def bench_ddp() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        r = cockpit(
            Path(tmp),
            "run",
            str(QUICK),
            "--set",
            "gpus=2",
            "--stages",
            "multi_gpu",
            "--set",
            "multi_gpu.batches=60",
        )
        stage = newest(Path(tmp)).summary()["stages"][0]
    m = stage["metrics"]
    print(
        f"ddp: {stage['status']} — {stage['reason']}"
        + ("" if r.returncode == 0 else f" (exit {r.returncode})")
    )
    print(
        f"  one process {m['samples_per_s_single']:.0f} samples/s · DDP on {m['world_size']:.0f} processes "
        f"{m['samples_per_s_ddp']:.0f} samples/s · ratio {m['scaling']:.2f}× ({100 * m['efficiency']:.0f}% efficiency)"
    )


def bench_schedule(repeats: int) -> None:
    free, queued = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        for _ in range(repeats):
            t0 = time.time()
            cockpit(
                ws, "run", str(BLOBS), "--stages", "train", "--set", "train.steps=400", "--detach"
            )
            ahead = newest(ws)
            cockpit(
                ws, "run", str(BLOBS), "--stages", "train", "--set", "train.steps=20", "--detach"
            )
            behind = newest(ws)
            free.append(wait_for(lambda f=ahead: f.summary().get("started")) - t0)
            wait_for(lambda f=behind: f.summary().get("started"))
            # the slot frees when the engine ahead releases its lease, right after it wrote `ended`
            queued.append(behind.summary()["started"] - ahead.summary()["ended"])
            wait_for(lambda f=behind: f.summary().get("status") not in ("queued", "running"))
    f, q = statistics.median(free), statistics.median(queued)
    print(f"schedule ({repeats} pairs, poll every {slots.POLL_S} s):")
    print(f"  a free slot: launch → slot held {f * 1000:.0f} ms (median) — the engine's start-up")
    print(
        f"  a queued run: slot freed → slot held {q * 1000:.0f} ms median, {max(queued) * 1000:.0f} ms worst "
        f"(target < 2000 ms) · ratio to the free start {q / f:.2f}×"
    )


def kill_once(ws: Path, extra: list[str], hard: bool) -> tuple[float, int]:
    """Seconds from the kill to every process gone and the slot free; the tree's size."""
    cockpit(ws, "run", str(BLOBS), *SLOW_RUN, *extra, "--detach")
    folder = newest(ws)
    wait_for(lambda: len(folder.steps()) > 50)
    tree = launch.process_tree(launch.engine_process(folder))
    tree = launch._merge(
        tree, [q for p in launch.recorded_processes(folder) for q in launch.process_tree(p)]
    )
    t0 = time.monotonic()
    if hard:
        launch.stop(folder, force=True)
    else:
        r = cockpit(ws, "kill", folder.run_id)
        assert r.returncode == 0, r.stderr
    wait_for(lambda: not any(launch._running(p) for p in tree))
    wait_for(lambda: not any(v.run_id == folder.run_id for v in slots.slot_views(ws)))
    return time.monotonic() - t0, len(tree)


def bench_kill(repeats: int) -> None:
    for name, extra in (
        ("2 DataLoader workers", []),
        ("DDP, 2 ranks", ["--set", "gpus=2", "--set", "num_workers=1"]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            graceful = [kill_once(Path(tmp), extra, hard=False) for _ in range(repeats)]
            hard = [kill_once(Path(tmp), extra, hard=True) for _ in range(repeats)]
        g = statistics.median(t for t, _ in graceful)
        h = statistics.median(t for t, _ in hard)
        print(
            f"kill, {name} ({graceful[0][1]} processes, {repeats}×): `cockpit kill` → all gone and slot free "
            f"{g:.2f} s median, {max(t for t, _ in graceful):.2f} s worst (target < 10 s) · SIGKILL floor "
            f"{h:.2f} s · ratio {g / h:.1f}×"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("parts", nargs="*", choices=["ddp", "schedule", "kill", []], default=[])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    parts = args.parts or ["ddp", "schedule", "kill"]
    if "ddp" in parts:
        bench_ddp()
    if "schedule" in parts:
        bench_schedule(args.repeats)
    if "kill" in parts:
        bench_kill(args.repeats)


if __name__ == "__main__":
    main()
