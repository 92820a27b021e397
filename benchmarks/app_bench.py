"""The terminal app's costs, each against a baseline measured in the same run.

1. curves   — building a stage's loss plot (decimate + plotext) with 1,000 vs 1,000,000
              logged batches; raw plotext on 1,000 and 20,000 points for scale.
2. history  — reading a 1,000,000-step run's history from disk vs a 1,000-step one.
3. start    — `cockpit` on an empty workspace in a pseudo-terminal, until its first frame.
4. CPU      — `cockpit` watching 8 fake live runs (20 steps/s each, telemetry 1 Hz, evals),
              nobody typing, vs the same app idle on an empty workspace; both in a
              pseudo-terminal, measured from the process's CPU time.

    python benchmarks/app_bench.py [--seconds 20] [--size 120x36]

Machines here are noisy: the ratios are what the README quotes.
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import pty
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cockpit.app.history import RunHistory, SmoothedSeries, StageHistory  # noqa: E402
from cockpit.app.settings import ViewSettings  # noqa: E402
from cockpit.app.widgets.curves import buckets_for, loss_figure  # noqa: E402
from engine.torchfree.runfolder import JsonlAppender, RunFolder, StepsAppender, write_json_atomic  # noqa: E402

PLOT_W, PLOT_H = 120, 30


def loss(step: int) -> float:
    return 0.05 + 1.5 * math.exp(-step / 50_000) * (1 + 0.3 * math.sin(step * 12.9898))


def rows(first: int, n: int, stage: int = 0, t0: float = 0.0) -> list[tuple]:
    return [
        (float(s), t0 + s * 0.01, float(stage), loss(s), loss(s) * 1.1, 0.001, 0.01, math.nan, 1e-3)
        for s in range(first, first + n)
    ]


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ---- 1. curves ------------------------------------------------------------------------------


def stage_with(n: int) -> StageHistory:
    stage = StageHistory("train", SmoothedSeries(0.9), SmoothedSeries(0.9))
    chunk = 100_000
    for first in range(1, n + 1, chunk):
        block = rows(first, min(chunk, n + 1 - first))
        xs = [r[0] for r in block]
        stage.train.extend(xs, [r[3] for r in block])
        stage.val.extend(xs, [r[4] for r in block])
    return stage


def build_decimated(stage: StageHistory) -> None:
    from textual_plotext.plot import Plot

    settings = ViewSettings()
    plt = Plot()
    plt.plotsize(PLOT_W, PLOT_H)
    loss_figure(stage, buckets_for(PLOT_W, settings), log=False).plot(plt, "braille", log=False)
    plt.build()


def build_raw(n: int) -> None:
    from textual_plotext.plot import Plot

    plt = Plot()
    plt.plotsize(PLOT_W, PLOT_H)
    xs = list(range(n))
    plt.plot(xs, [loss(x) for x in xs], marker="braille")
    plt.build()


def bench_curves() -> None:
    small, large = stage_with(1_000), stage_with(1_000_000)
    raw_1k = best_of(lambda: build_raw(1_000))
    raw_20k = best_of(lambda: build_raw(20_000), repeats=2)
    dec_1k = best_of(lambda: build_decimated(small))
    dec_1m = best_of(lambda: build_decimated(large))
    print(f"curves ({PLOT_W}x{PLOT_H}, braille; raw = every point handed to plotext)")
    print(f"  raw plotext, 1k points        {raw_1k * 1e3:8.1f} ms   (baseline)")
    print(
        f"  raw plotext, 20k points       {raw_20k * 1e3:8.1f} ms   ×{raw_20k / raw_1k:.1f}: grows with the points"
    )
    print(
        f"  cockpit plot, 1k batches      {dec_1k * 1e3:8.1f} ms   ×{dec_1k / raw_1k:.2f} of the baseline"
    )
    print(
        f"  cockpit plot, 1M batches      {dec_1m * 1e3:8.1f} ms   ×{dec_1m / dec_1k:.2f} of 1k batches"
    )


# ---- 2. history -----------------------------------------------------------------------------


def write_history(path: Path, n: int) -> RunFolder:
    folder = RunFolder(path)
    path.mkdir(parents=True)
    folder.write_summary(
        {"run_id": path.name, "status": "passed", "stage_names": ["train"], "stages": []}
    )
    folder.write_steps_header()
    out = StepsAppender(folder.file("steps.bin"))
    for first in range(1, n + 1, 100_000):
        out.append_many(rows(first, min(100_000, n + 1 - first)))
    out.close()
    evals = JsonlAppender(folder.file("evals.jsonl"))
    for step in range(0, n + 1, max(1, n // 400)):
        evals.append({"step": step, "stage": "train", "val_loss": loss(step), "accuracy": 0.9})
    evals.close()
    return folder


def bench_history(tmp: Path) -> None:
    small = write_history(tmp / "h-1k", 1_000)
    large = write_history(tmp / "h-1m", 1_000_000)

    def load(folder: RunFolder) -> None:
        history = RunHistory(folder)
        history.poll()
        assert history.loaded

    t_small = best_of(lambda: load(small))
    t_large = best_of(lambda: load(large), repeats=3)
    size = large.file("steps.bin").stat().st_size / 2**20
    print("history (steps.bin read, split by stage, smoothed, decimated; page cache warm)")
    print(f"  1k-step run                   {t_small * 1e3:8.1f} ms   (baseline)")
    print(
        f"  1M-step run ({size:.0f} MB)          {t_large * 1e3:8.1f} ms   ×{t_large / t_small:.0f}"
    )


# ---- 3 and 4: the real app in a pseudo-terminal -----------------------------------------------


class Terminal:
    """`cockpit` in a pty of a given size; drains its output; notes when the first frame came."""

    def __init__(self, workspace: Path, cols: int, rows: int):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", PYTHONPATH=str(ROOT))
        env.pop("NO_COLOR", None)
        self.started = time.perf_counter()
        self.first_frame: float | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cockpit", "--workspace", str(workspace)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self._seen = b""
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            if self.first_frame is None:
                if b"cockpit" in self._seen + chunk:  # the title bar: the first frame is out
                    self.first_frame = time.perf_counter() - self.started
                self._seen = chunk[-16:]

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def share(self, seconds: float) -> float:
        """Share of one core used over ``seconds`` of wall time."""
        c0, t0 = self.cpu_seconds(), time.perf_counter()
        time.sleep(seconds)
        return (self.cpu_seconds() - c0) / (time.perf_counter() - t0)

    def close(self) -> None:
        os.write(self.master, b"q")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def fake_live_runs(workspace: Path, count: int, stop: threading.Event) -> None:
    """``count`` runs that log like a training loop: 20 steps/s, telemetry 1 Hz, evals every 250."""
    import psutil

    me = psutil.Process()
    folders = []
    now = time.time()
    for i in range(count):
        path = workspace / f"live-20300101-00000{i}-{i:04x}"
        path.mkdir(parents=True)
        folder = RunFolder(path)
        write_json_atomic(folder.file("run.json"), {"run_id": path.name, "stages": ["train"]})
        folder.write_summary(
            {
                "run_id": path.name,
                "preset": "live",
                "status": "running",
                "stages": [],
                "stage_names": ["train"],
                "current_stage": "train",
                "created": now,
            }
        )
        folder.write_steps_header()
        write_json_atomic(
            folder.file("proc.json"),
            {"pid": me.pid, "create_time": me.create_time(), "host": socket.gethostname()},
        )
        folders.append(
            (
                folder,
                StepsAppender(folder.file("steps.bin")),
                JsonlAppender(folder.file("telemetry.jsonl")),
                JsonlAppender(folder.file("evals.jsonl")),
            )
        )
    step = 0
    tick = 0
    while not stop.wait(0.25):
        tick += 1
        t = time.time()
        for _folder, steps, telemetry, evals in folders:
            steps.append_many(rows(step + 1, 5, t0=t - step * 0.01))
            if tick % 4 == 0:
                telemetry.append({"t": t, "cpu": 50.0, "ram": 10.0, "steps": 20, "data_wait": 0.3})
            if (step + 5) // 250 > step // 250:
                evals.append(
                    {"step": step + 5, "stage": "train", "val_loss": loss(step), "accuracy": 0.9}
                )
        step += 5


def bench_app(tmp: Path, seconds: float, cols: int, rows_: int) -> None:
    empty = tmp / "empty"
    empty.mkdir()
    starts = []
    for _ in range(3):
        term = Terminal(empty, cols, rows_)
        deadline = time.perf_counter() + 10
        while term.first_frame is None and time.perf_counter() < deadline:
            time.sleep(0.01)
        starts.append(term.first_frame or math.inf)
        term.close()
    print("start (empty workspace, pseudo-terminal)")
    print(
        f"  first frame                   {min(starts):8.2f} s    (best of 3; {', '.join(f'{s:.2f}' for s in starts)})"
    )

    idle = Terminal(empty, cols, rows_)
    time.sleep(4)
    idle_share = idle.share(seconds)
    idle.close()

    live = tmp / "live"
    live.mkdir()
    stop = threading.Event()
    writer = threading.Thread(target=fake_live_runs, args=(live, 8, stop), daemon=True)
    writer.start()
    watching = Terminal(live, cols, rows_)
    time.sleep(4)
    watch_share = watching.share(seconds)
    os.write(watching.master, b"\r")  # open the first run: its curves redraw twice a second
    time.sleep(4)
    curves_share = watching.share(seconds)
    watching.close()
    stop.set()
    writer.join()
    print(f"CPU of the app, {cols}x{rows_}, nobody typing, {seconds:.0f} s each")
    print(f"  idle, empty workspace         {idle_share * 100:8.2f} % of a core   (baseline)")
    print(
        f"  runs list, 8 live runs        {watch_share * 100:8.2f} % of a core   "
        f"(+{(watch_share - idle_share) * 100:.2f} points)"
    )
    print(
        f"  one live run's curves         {curves_share * 100:8.2f} % of a core   "
        f"(+{(curves_share - idle_share) * 100:.2f} points)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="CPU measuring window per case")
    ap.add_argument("--size", default="120x36", help="terminal size for the app cases")
    args = ap.parse_args()
    cols, rows_ = (int(v) for v in args.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="cockpit-app-bench-"))
    try:
        bench_curves()
        bench_history(tmp)
        bench_app(tmp, args.seconds, cols, rows_)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
