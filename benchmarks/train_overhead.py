"""The engine's `train` stage against a hand-written loop doing the same work.

Whole processes, alternated, in the same run: `cockpit run presets/quickstart.yaml
--stages train` (CLI, engine process, per-batch binary log, telemetry thread, events,
summary, a checkpoint and a full-val pass at the end) against benchmarks/handwritten_loop.py
(same data, model, optimizer, random val batch, both losses read every step, the same final
val pass and checkpoint). Prints each pair and the median ratio; machines here are noisy, so
only the ratio means anything.

    python benchmarks/train_overhead.py [--steps 2000] [--repeats 3] [--device cuda]
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


def timed(cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = [
            sys.executable,
            "-m",
            "cockpit",
            "run",
            "presets/quickstart.yaml",
            "--stages",
            "train",
            "--set",
            f"train.steps={args.steps}",
            "--set",
            f"train.eval_every={args.steps}",
            "--set",
            f"train.checkpoint_every={args.steps}",
            "--set",
            f"device={args.device}",
            "--workspace",
            str(Path(tmp) / "runs"),
        ]
        base = [sys.executable, "benchmarks/handwritten_loop.py", str(args.steps), tmp, args.device]
        timed(base)  # warm the file cache for torch's libraries
        print(
            f"{args.steps} steps of presets/quickstart.yaml on {args.device}, whole processes, alternating"
        )
        for i in range(args.repeats):
            if i % 2 == 0:
                b, e = timed(base), timed(engine)
            else:
                e, b = timed(engine), timed(base)
            ratios.append(e / b)
            print(
                f"  pair {i + 1}: hand-written {b:6.2f} s   cockpit train stage {e:6.2f} s   ratio {e / b:.3f}"
            )
    print(
        f"median ratio engine / hand-written: {statistics.median(ratios):.3f} "
        f"(target ≤ 1.15; {100 * (statistics.median(ratios) - 1):+.1f}% wall time)"
    )


if __name__ == "__main__":
    main()
