"""cockpit.track and the TensorBoard reader against their baselines, in the same run.

    python benchmarks/track_bench.py            # the whole thing (~1-2 min on 2 cores)
    python benchmarks/track_bench.py --quick    # smaller sizes
    python benchmarks/track_bench.py --cuda-check   # on a GPU: log() with CUDA tensors, no sync

1. ``run.log(step, ...)`` per call, five values (step, train_loss, val_loss, lr, data_s) and
   the same plus a named metric, against a bare loop making the same values and against
   torch.utils.tensorboard's ``SummaryWriter.add_scalar`` of the same values (when torch and
   tensorboard are installed). W&B and trackio are not measured (not installed here).
2. Reading one event file of N scalars (written in the layout torch.utils.tensorboard
   writes): cockpit's reader against TensorBoard's ``EventAccumulator`` on the same file, and
   the mirror of that file as a cockpit run folder (what ``cockpit --tensorboard`` does once).

Machines here are shared and noisy: compare the ratios, which move much less than the times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def bench_log(n: int, tmp: Path) -> dict:
    import cockpit.track as track

    values = [(1.0 / (i + 1), 2.0 / (i + 1), 1e-3, 1e-4) for i in range(n)]

    def bare() -> float:
        t = time.perf_counter()
        sink = None
        for i in range(n):
            tl, vl, lr, ds = values[i]
            sink = (i, tl, vl, lr, ds)
        del sink
        return time.perf_counter() - t

    def tracked(extra: bool) -> float:
        run = track.start(name="bench", workspace=tmp / "ws")
        log = run.log
        t = time.perf_counter()
        if extra:
            for i in range(n):
                tl, vl, lr, ds = values[i]
                log(i, train_loss=tl, val_loss=vl, lr=lr, data_s=ds, acc=tl)
        else:
            for i in range(n):
                tl, vl, lr, ds = values[i]
                log(i, train_loss=tl, val_loss=vl, lr=lr, data_s=ds)
        run.flush()
        dt = time.perf_counter() - t
        run.finish()
        return dt

    out = {}
    best = {k: float("inf") for k in ("bare", "log5", "log5+acc")}
    for _ in range(3):
        best["bare"] = min(best["bare"], bare())
        best["log5"] = min(best["log5"], tracked(False))
        best["log5+acc"] = min(best["log5+acc"], tracked(True))
    out["bare_us"] = best["bare"] / n * 1e6
    out["log5_us"] = (best["log5"] - best["bare"]) / n * 1e6
    out["log5_acc_us"] = (best["log5+acc"] - best["bare"]) / n * 1e6
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # torch or tensorboard missing
        out["summarywriter"] = f"skipped: {e}"
        return out
    m = max(2000, n // 20)  # add_scalar is slow: fewer steps, per-step cost compared
    w = SummaryWriter(str(tmp / "sw"), flush_secs=3600)
    t = time.perf_counter()
    for i in range(m):
        tl, vl, lr, ds = values[i]
        w.add_scalar("train_loss", tl, i)
        w.add_scalar("val_loss", vl, i)
        w.add_scalar("lr", lr, i)
        w.add_scalar("data_s", ds, i)
    w.flush()
    out["summarywriter_us"] = (time.perf_counter() - t) / m * 1e6
    w.close()
    return out


def bench_read(n_scalars: int, tmp: Path, with_reference: bool) -> dict:
    from cockpit import tensorboard as tb

    logdir = tmp / "tb" / "run"
    tags = ("train/loss", "train/lr", "val/loss", "val/acc", "grad_norm")
    t = time.perf_counter()
    with tb.EventWriter(logdir) as w:
        for i in range(n_scalars // len(tags)):
            for tag in tags:
                w.scalar(tag, 1.0 / (i + 1), i, 1.7e9 + i * 0.01)
            if i % 10000 == 0:
                w.flush()
    (path,) = tb.event_files(logdir)
    out = {
        "scalars": n_scalars,
        "file_mb": path.stat().st_size / 1e6,
        "write_s": time.perf_counter() - t,
    }
    best = float("inf")
    best_cpu = float("inf")
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        got = tb.read_scalars(path)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    assert len(got) == n_scalars, len(got)
    out["ours_s"] = best
    out["ours_cpu_s"] = best_cpu
    out["ours_per_s"] = n_scalars / best
    os.environ["COCKPIT_TB_CACHE"] = str(tmp / "cache")
    t = time.perf_counter()
    tb.TensorBoardDir(tmp / "tb").sync()
    out["mirror_s"] = time.perf_counter() - t
    if with_reference:
        try:
            from tensorboard.backend.event_processing import event_accumulator as ea
        except ImportError as e:
            out["reference"] = f"skipped: {e}"
            return out
        t, c = time.perf_counter(), time.process_time()
        acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
        acc.Reload()
        count = sum(len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"])
        out["reference_s"] = time.perf_counter() - t
        out["reference_cpu_s"] = time.process_time() - c
        assert count == n_scalars, count
        out["reference_per_s"] = n_scalars / out["reference_s"]
    return out


def cuda_check(steps: int, tmp: Path) -> None:
    """On a CUDA machine: log() with CUDA tensors adds no host sync (sync debug mode 'error')
    and the values written are the ones .item() gives afterwards."""
    import torch

    import cockpit.track as track
    from engine.torchfree.runfolder import RunFolder

    if not torch.cuda.is_available():
        print("cuda check: skipped (no CUDA device)")
        return
    dev = torch.device("cuda")
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    )
    model.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(512, 256, device=dev)
    y = torch.randint(0, 10, (512,), device=dev)
    run = track.start(name="cuda-check", workspace=tmp / "cuda")
    losses = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    t = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            run.log(step, train_loss=loss, val_loss=loss * 2, lr=0.01, acc=loss / 3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    took = time.perf_counter() - t
    run.finish()
    cols = RunFolder(run.path).steps()
    expected = [v.item() for v in losses]
    assert list(cols["step"]) == list(range(1, steps + 1))
    assert all(abs(a - b) < 1e-5 for a, b in zip(cols["train_loss"], expected))
    tel = RunFolder(run.path).telemetry()
    print(
        f"cuda check: {steps} steps logged with CUDA tensors and no host sync, "
        f"{took / steps * 1e3:.2f} ms/step; values match .item(); telemetry header: {tel[0]}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--steps", type=int, help="log() calls per loop")
    ap.add_argument("--scalars", type=int, help="scalars in the event file")
    ap.add_argument("--no-reference", action="store_true", help="skip EventAccumulator")
    ap.add_argument("--cuda-check", action="store_true", help="only the CUDA no-sync check")
    args = ap.parse_args()
    if args.cuda_check:
        with tempfile.TemporaryDirectory() as d:
            cuda_check(args.steps or 500, Path(d))
        return
    steps = args.steps or (50_000 if args.quick else 300_000)
    scalars = args.scalars or (200_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log = bench_log(steps, tmp)
        print(f"log(), {steps} calls (best of 3), cost above a bare loop making the same values:")
        print(f"  bare loop                         {log['bare_us']:.2f} µs per iteration")
        print(f"  run.log, 5 values                 {log['log5_us']:.2f} µs per call")
        print(f"  run.log, 5 values + a named one   {log['log5_acc_us']:.2f} µs per call")
        if "summarywriter_us" in log:
            sw = log["summarywriter_us"]
            print(
                f"  SummaryWriter, 4 add_scalar       {sw:.1f} µs per step  "
                f"→ run.log is {sw / max(log['log5_us'], 1e-9):.0f}x cheaper"
            )
        else:
            print(f"  SummaryWriter                     {log['summarywriter']}")
        read = bench_read(scalars, tmp, not args.no_reference)
        print(
            f"\nreading one event file: {read['scalars']:,} scalars, {read['file_mb']:.1f} MB "
            f"(written by cockpit's EventWriter in {read['write_s']:.1f} s)"
        )
        print(
            f"  cockpit's reader                  {read['ours_s']:.2f} s  "
            f"({read['ours_per_s'] / 1e6:.2f} M scalars/s; {read['ours_cpu_s']:.2f} s of CPU)"
        )
        print(
            f"  the mirror as a cockpit run       {read['mirror_s']:.2f} s (once, then by offset)"
        )
        if "reference_s" in read:
            print(
                f"  TensorBoard's EventAccumulator    {read['reference_s']:.2f} s  "
                f"({read['reference_per_s'] / 1e3:.0f} k scalars/s; "
                f"{read['reference_cpu_s']:.2f} s of CPU)  "
                f"→ cockpit's reader is {read['reference_s'] / read['ours_s']:.0f}x faster "
                f"({read['reference_cpu_s'] / read['ours_cpu_s']:.0f}x in CPU time)"
            )
        elif "reference" in read:
            print(f"  EventAccumulator                  {read['reference']}")


if __name__ == "__main__":
    main()
