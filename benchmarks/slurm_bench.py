"""Scheduling and kill latency of the Slurm launcher against plain sbatch/scancel.

    python benchmarks/slurm_bench.py [--repeat 3] [--workspace DIR]

Needs a Slurm that answers (tests/slurm/setup.sh brings up a single-node one). Per repeat:

- baseline submit: ``sbatch --wrap`` of an empty job that writes the time it started;
  latency = its start time minus the moment sbatch was called;
- cockpit submit: ``cockpit run --launcher slurm --detach`` (the CLI's own start included);
  latency to the engine running = summary.json's ``started`` (the engine took its job's
  devices, before importing torch) minus the moment the command was called; the first
  training step is printed too (torch's import and the data are the rest);
- baseline kill: ``scancel`` of the empty job until squeue says it ended (its processes are
  gone: no longer COMPLETING);
- cockpit kill: ``cockpit kill RUN`` of a training run until it returns (it waits for the
  same: the job ended, the folder says killed);
- prune: an ablation of three held jobs (blobs, learning rates 1e-2, 3e-2 and a hopeless
  1e-9); the two good ones run first, then the hopeless one, which its pruner stops through
  ``scancel`` of its own job; latency = from the decision (pruned.json's ``decided``) to the
  job ended in squeue (CANCELLED: its processes gone), and to the folder's final ``pruned``.

Prints medians and the ratios cockpit/baseline. Jobs are CPU-only (gpus: 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _squeue_state(job: str) -> str:
    p = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return p.stdout.strip()


ENDING = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")
LIVE = ("queued", "running")


def _wait_ended(job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _squeue_state(job) not in ENDING:
            return
        time.sleep(0.05)
    raise RuntimeError(f"job {job} did not end in {timeout} s")


def baseline(tmp: Path) -> tuple[float, float]:
    """(submit -> script running, scancel -> job ended) of an empty job, in seconds."""
    mark = tmp / f"started-{time.time_ns()}"
    t0 = time.time()
    out = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", f"date +%s.%N > {mark}; sleep 300"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    job = out.strip().split(";")[0]
    while not (mark.exists() and mark.read_text().strip()):
        time.sleep(0.02)
    submit = float(mark.read_text()) - t0
    time.sleep(0.5)
    t1 = time.monotonic()
    subprocess.run(["scancel", job], check=True, timeout=30)
    _wait_ended(job)
    return submit, time.monotonic() - t1


def cockpit(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cockpit", *args],
        cwd=ROOT,
        env={**os.environ, "COCKPIT_WORKSPACE": str(ws)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def with_cockpit(ws: Path) -> tuple[float, float, float]:
    """(submit -> engine running, submit -> first step, cockpit kill) in seconds."""
    before = set(os.listdir(ws)) if ws.exists() else set()
    t0 = time.time()
    cockpit(
        ws,
        "run",
        "tests/zoo/blobs.yaml",
        "--set",
        "gpus=0",
        "--stages",
        "train",
        "--set",
        "train.steps=1000000",
        "--launcher",
        "slurm",
        "--detach",
    )
    (run_id,) = [d for d in os.listdir(ws) if d not in before and not d.startswith(".")]
    summary = ws / run_id / "summary.json"
    steps = ws / run_id / "steps.bin"
    started = None
    while started is None:
        s = json.loads(summary.read_text())
        started = s.get("started")
        if s.get("status") not in ("queued", "running"):
            raise RuntimeError(f"{run_id} ended before running: {s.get('reason')}")
        time.sleep(0.02)
    while not (steps.exists() and steps.stat().st_size > 0):
        time.sleep(0.02)
    first_step = time.time() - t0
    t1 = time.monotonic()
    cockpit(ws, "kill", run_id)
    return started - t0, first_step, time.monotonic() - t1


PRUNE = "prune={rule: median, metric: val_loss, warmup_steps: 10, every: 10, min_peers: 2}"


def with_pruning(ws: Path) -> tuple[float, float]:
    """(pruning decision -> job gone in squeue, decision -> summary final) in seconds."""
    ws = ws / f"prune-{time.time_ns()}"
    cockpit(
        ws, "ablate", "tests/zoo/blobs.yaml", "--grid", "optimizer.lr=1e-2,3e-2,1e-9",
        "--set", "gpus=0", "--set", "train={steps: 60, eval_every: 10, checkpoint_every: 30}",
        "--set", PRUNE, "--launcher", "slurm", "--slurm", "extra=--hold", "--detach",
    )  # fmt: skip
    runs = {}
    for d in os.listdir(ws):
        if (ws / d / "slurm.json").exists():
            lr = json.loads((ws / d / "summary.json").read_text())["overrides"]["optimizer.lr"]
            runs[lr] = (d, json.loads((ws / d / "slurm.json").read_text())["job_id"])
    good = [job for lr, (_, job) in runs.items() if lr != 1e-9]
    subprocess.run(["scontrol", "release", *good], check=True, timeout=30)
    for job in good:
        _wait_ended(job)
    victim, job = runs[1e-9]
    subprocess.run(["scontrol", "release", job], check=True, timeout=30)
    pruned, summary = ws / victim / "pruned.json", ws / victim / "summary.json"
    deadline = time.monotonic() + 300
    while not pruned.exists():
        if time.monotonic() > deadline or _squeue_state(job) == "COMPLETED":
            raise RuntimeError(f"{victim} was not pruned (see its engine.log)")
        time.sleep(0.01)
    decided = json.loads(pruned.read_text())["decided"]
    gone = final = None
    while gone is None or final is None:  # whichever comes first: both are timed
        if time.monotonic() > deadline:
            raise RuntimeError(f"{victim}: job {job} did not end after its pruning")
        if final is None and json.loads(summary.read_text()).get("status") not in LIVE:
            final = time.time() - decided
        if gone is None and _squeue_state(job) not in ENDING:
            gone = time.time() - decided
        time.sleep(0.01)
    return gone, final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workspace", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    ws = args.workspace or tmp / "ws"
    rows = {"sbatch": [], "sbatch kill": [], "cockpit": [], "first step": [], "cockpit kill": []}
    rows |= {"prune gone": [], "prune final": []}
    for i in range(args.repeat):
        sub, kill = baseline(tmp)
        rows["sbatch"].append(sub)
        rows["sbatch kill"].append(kill)
        run, step, ck = with_cockpit(ws)
        rows["cockpit"].append(run)
        rows["first step"].append(step)
        rows["cockpit kill"].append(ck)
        gone, final = with_pruning(ws)
        rows["prune gone"].append(gone)
        rows["prune final"].append(final)
        print(
            f"  repeat {i + 1}: sbatch→script {sub:.2f} s · cockpit run→engine running {run:.2f} s "
            f"(first step {step:.2f} s) · scancel→gone {kill:.2f} s · cockpit kill {ck:.2f} s · "
            f"pruned→job gone {gone:.2f} s (folder final {final:.2f} s)",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nmedians over {args.repeat} (load average {os.getloadavg()[0]:.1f}):")
    print(f"  submit → running   plain sbatch {med['sbatch']:.2f} s · cockpit {med['cockpit']:.2f} s"
          f"  (×{med['cockpit'] / med['sbatch']:.1f}; +{med['cockpit'] - med['sbatch']:.2f} s)")  # fmt: skip
    print(f"  submit → 1st step  cockpit {med['first step']:.2f} s (torch's import and the data)")
    print(f"  kill → gone        plain scancel {med['sbatch kill']:.2f} s · cockpit kill "
          f"{med['cockpit kill']:.2f} s  (×{med['cockpit kill'] / med['sbatch kill']:.1f})")  # fmt: skip
    print(f"  pruned → gone      the engine's scancel {med['prune gone']:.2f} s to the job ended · "
          f"{med['prune final']:.2f} s to summary.json's pruned end")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
