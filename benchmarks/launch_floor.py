"""The loop at the launch floor: a model so small that each step is mostly kernel launches
(tens of microseconds on an H200), where a per-step host sync or Python overhead is the cost.

Same run, same batch (already on the device), ratios against the bare hand-written loop:
- by hand, no readback at all (the floor);
- by hand with ``loss.item()`` every step (what most scripts do: one host sync per step);
- the engine's train_loop (pinned readback behind CUDA events, a steps.bin row per step) with
  readback depth 4 (the default), 8 and 16;
- NVML sampling cost per call (the telemetry thread's work), when there is a GPU.

    python benchmarks/launch_floor.py [--device cuda] [--steps 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tiny(device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def by_hand(batch, device: torch.device, steps: int, item: bool) -> float:
    model, opt = _tiny(device)
    loss_fn = nn.CrossEntropyLoss()
    x, y = batch
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if item:
            loss.item()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def engine_loop(ctx, batch, steps: int, depth: int) -> float:
    import engine.loop as loop

    model, opt = _tiny(ctx.device)
    original = loop.Readback
    loop.Readback = functools.partial(original, depth=depth)
    try:
        _sync(ctx.device)
        t0 = time.perf_counter()
        loop.train_loop(ctx, model, opt, itertools.repeat(batch), steps=steps)
        _sync(ctx.device)
    finally:
        loop.Readback = original
    return (time.perf_counter() - t0) / steps


def nvml_cost(calls: int = 1000) -> str:
    from engine.torchfree.nvml import Nvml

    with Nvml() as nvml:
        if not nvml.ok or nvml.count() == 0:
            return f"NVML: not measured ({nvml.error or 'no GPU'})"
        handle = nvml.handle(index=0)
        nvml.sample(handle)
        t0 = time.perf_counter()
        for _ in range(calls):
            nvml.sample(handle)
        per = (time.perf_counter() - t0) / calls
    return f"NVML sample (util, memory, power): {per * 1e6:.0f} µs per call; at 1 Hz {per * 100:.4f}% of a core"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)

    from cockpit.launch import create_run
    from engine.context import RunContext
    from engine.targets import add_import_path
    from engine.torchfree import preset as presets

    add_import_path(ROOT / "tests" / "zoo")
    preset = presets.load(ROOT / "tests" / "zoo" / "blobs.yaml", {"device": args.device})
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(256, 32, generator=g).to(device),
        torch.randint(4, (256,), generator=g).to(device),
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = create_run(Path(tmp), preset, stages=["train"])
        ctx = RunContext(preset, folder, ["train"], folder.request())
        ctx.loss_fn = nn.CrossEntropyLoss()
        runs = {
            "by hand, no readback": lambda: by_hand(batch, device, args.steps, False),
            "by hand, .item() every step": lambda: by_hand(batch, device, args.steps, True),
            **{
                f"train_loop, readback depth {d}": functools.partial(
                    engine_loop, ctx, batch, args.steps, d
                )
                for d in (4, 8, 16)
            },
        }
        for run in runs.values():  # warm-up: kernels, allocator, files
            run()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved: a noisy neighbour hits every variant alike
            for name, run in runs.items():
                times[name].append(run())
    floor = statistics.median(times["by hand, no readback"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"launch floor on {name}, {args.steps} steps × {args.repeats} (medians)")
    for label, ts in times.items():
        t = statistics.median(ts)
        print(f"  {label:32s} {t * 1e6:8.1f} µs/step   {t / floor:5.2f}× the floor")
    print(" ", nvml_cost())


if __name__ == "__main__":
    main()
