"""The engine's `train` stage against a hand-written loop doing the same work.

Whole processes, alternated, in the same run: `cockpit run presets/quickstart.yaml
--stages train` (CLI, engine process, per-batch binary log, telemetry thread, events,
summary, a checkpoint and a full-val pass at the end) against benchmarks/handwritten_loop.py
(same data, model, optimizer, random val batch, both losses read every step, the same final
val pass and checkpoint). Prints each pair, the median ratio and the ratio of the fastest run
of each (the least disturbed by a noisy machine); then the hot path alone, in one process.
Machines here are noisy, so only the ratios mean anything.

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


def per_step(steps: int, repeats: int) -> None:
    """The hot path alone, in one process: the engine's train_loop (readback, steps.bin row,
    wait meter) against the same step written by hand, alternating."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from cockpit.launch import create_run
    from engine.context import RunContext
    from engine.loop import train_loop
    from engine.targets import add_import_path
    from engine.torchfree import preset as presets

    add_import_path(ROOT / "presets")
    preset = presets.load(ROOT / "presets" / "quickstart.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        folder = create_run(Path(tmp), preset, stages=["train"])
        ctx = RunContext(preset, folder, ["train"], folder.request())

        def engine() -> float:
            model = ctx.build_model()
            opt = ctx.build_optimizer(model)
            t0 = time.perf_counter()
            train_loop(
                ctx, model, opt, ctx.train_batches(), steps=steps, val_batches=ctx.val_batches()
            )
            return (time.perf_counter() - t0) / steps

        def by_hand() -> float:
            model = ctx.build_model()
            opt = ctx.build_optimizer(model)
            loss_fn = torch.nn.CrossEntropyLoss()
            loader = DataLoader(ctx.data.train, batch_size=32, shuffle=True, drop_last=True)
            sampler = RandomSampler(ctx.data.val, replacement=True, num_samples=10**9)
            val = iter(DataLoader(ctx.data.val, batch_size=32, sampler=sampler))
            it = iter(loader)
            t0 = time.perf_counter()
            for _ in range(steps):
                try:
                    x, y = next(it)
                except StopIteration:
                    it = iter(loader)
                    x, y = next(it)
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                vx, vy = next(val)
                model.eval()
                with torch.no_grad():
                    vloss = loss_fn(model(vx), vy)
                model.train()
                loss.item(), vloss.item()
            return (time.perf_counter() - t0) / steps

        ratios = []
        for i in range(repeats):
            e, b = (engine(), by_hand()) if i % 2 else (by_hand(), engine())[::-1]
            ratios.append(e / b)
            print(
                f"  round {i + 1}: by hand {b * 1e3:.2f} ms/step   train_loop {e * 1e3:.2f} ms/step   ratio {e / b:.3f}"
            )
    print(f"median per-step ratio train_loop / by hand: {statistics.median(ratios):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    ratios, engine_times, base_times = [], [], []
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
            engine_times.append(e)
            base_times.append(b)
            print(
                f"  pair {i + 1}: hand-written {b:6.2f} s   cockpit train stage {e:6.2f} s   ratio {e / b:.3f}"
            )
    print(
        f"median ratio engine / hand-written: {statistics.median(ratios):.3f}; ratio of the fastest of "
        f"each: {min(engine_times) / min(base_times):.3f} (target ≤ 1.15)"
    )
    if args.device == "cpu":
        print("the hot path alone, in one process:")
        per_step(min(args.steps, 400), 6)


if __name__ == "__main__":
    main()
