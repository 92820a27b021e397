"""The terminal app's costs, each against a baseline measured in the same run.

With ``--before REV`` the same cases also run on the app as it was at git revision REV
(``git archive`` into a temporary folder), interleaved with the current one, so the two are
compared on the same machine under the same load. Each figure is the median of
``--repeats`` runs; the machine's load average is printed at the start and the end.

1. curves   — building a stage's loss plot (decimate + plotext) with 1,000 vs 1,000,000
              logged batches; raw plotext on 1,000 and 20,000 points for scale; the cost of a
              "look" (what a redraw that moves no dot costs instead of a build).
2. history  — opening a 1k-, 1M- and 10M-step run (steps.bin read, split by stage, smoothed,
              decimated; page cache warm), opening it again while the app holds it, and the
              peak memory of opening the 10M-step run — each in a fresh process.
3. start    — `cockpit` in a pseudo-terminal until its first frame: on an empty workspace and
              on one of 500 finished runs (there also: the first rows, and the whole list);
              with each, the CPU time the process had used by its first frame (on a
              crowded machine the wall time is mostly waiting for a core; the CPU is not);
              and the floor: a bare Textual app with one widget, started the same way.
4. CPU      — `cockpit` idle on an empty workspace (baseline); the runs list with 8 fake live
              runs (20 steps/s each, telemetry 1 Hz, evals); one of them open on its curves
              (a fresh run, and one with 50,000 steps of history); nobody typing, measured
              from the process's CPU time.

    python benchmarks/app_bench.py [--seconds 15] [--repeats 3] [--size 120x36] [--before REV]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import pty
import re
import shutil
import socket
import statistics
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

from cockpit.app.history import SmoothedSeries, StageHistory  # noqa: E402
from cockpit.app.settings import ViewSettings  # noqa: E402
from cockpit.app.widgets.curves import buckets_for, loss_figure, step_range  # noqa: E402
from cockpit.app.widgets.plot import matrix_strips  # noqa: E402
from engine.torchfree.runfolder import (  # noqa: E402
    STEP_COLUMNS,
    JsonlAppender,
    RunFolder,
    StepsAppender,
    write_json_atomic,
)

PLOT_W, PLOT_H = 120, 30
SETTLE_S = 8.0
"""Seconds an app runs before its CPU is measured (a loaded machine starts it slowly)."""


def loss(step: int) -> float:
    return 0.05 + 1.5 * math.exp(-step / 50_000) * (1 + 0.3 * math.sin(step * 12.9898))


def rows(first: int, n: int, stage: int = 0, t0: float = 0.0) -> list[tuple]:
    return [
        (float(s), t0 + s * 0.01, float(stage), loss(s), loss(s) * 1.1, 0.001, 0.01, math.nan, 1e-3)
        for s in range(first, first + n)
    ]


def median_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def python_speed() -> str:
    """A machine's pure-Python speed, to compare figures across machines (the shared VMs
    differ by 2-3x: a figure that moved between two runs on two machines may be the machine)."""
    t0 = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i
    return f"this machine runs a 3M-addition Python loop in {time.perf_counter() - t0:.2f} s"


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def ratio(a: float, b: float) -> str:
    return f"×{a / b:.2f}" if b and math.isfinite(a) and math.isfinite(b) else "-"


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
    """What the app does for a rebuild: decimate, lay out the frame in plotext, rasterize
    the data into it, turn the matrix into strips."""
    from textual_plotext.plot import Plot

    settings = ViewSettings()
    plt = Plot()
    plt.plotsize(PLOT_W, PLOT_H)
    figure = loss_figure(stage, buckets_for(PLOT_W, settings), log=False)
    overlay = figure.plot(plt, "braille", log=False, x_range=step_range(stage))
    matrix_strips(plt, overlay)


def look(stage: StageHistory) -> None:
    """What a data-driven redraw costs when no dot moves: the figure and its dot key."""
    settings = ViewSettings()
    figure = loss_figure(stage, buckets_for(PLOT_W, settings), log=False)
    figure.visible_key(PLOT_W, PLOT_H, "braille", log=False, x_range=step_range(stage))


def build_raw(n: int) -> None:
    from textual_plotext.plot import Plot

    plt = Plot()
    plt.plotsize(PLOT_W, PLOT_H)
    xs = list(range(n))
    plt.plot(xs, [loss(x) for x in xs], marker="braille")
    matrix_strips(plt)  # the same matrix-to-strips step as the app's


def bench_curves() -> None:
    small, large = stage_with(1_000), stage_with(1_000_000)
    build_raw(10)  # imports
    raw_1k = median_of(lambda: build_raw(1_000))
    raw_20k = median_of(lambda: build_raw(20_000), repeats=3)
    dec_1k = median_of(lambda: build_decimated(small))
    dec_1m = median_of(lambda: build_decimated(large))
    look_1m = median_of(lambda: look(large))
    print(f"curves ({PLOT_W}x{PLOT_H}, braille; raw = every point handed to plotext)")
    print(f"  raw plotext, 1k points        {raw_1k * 1e3:8.1f} ms   (baseline)")
    print(f"  raw plotext, 20k points       {raw_20k * 1e3:8.1f} ms   {ratio(raw_20k, raw_1k)}")
    print(f"  cockpit plot, 1k batches      {dec_1k * 1e3:8.1f} ms   {ratio(dec_1k, raw_1k)}")
    print(f"  cockpit plot, 1M batches      {dec_1m * 1e3:8.1f} ms   {ratio(dec_1m, dec_1k)} of 1k")
    print(
        f"  a look that moves no dot, 1M  {look_1m * 1e3:8.1f} ms   {ratio(look_1m, dec_1m)} of a build"
    )


# ---- 2. history -----------------------------------------------------------------------------


def write_history(path: Path, n: int) -> RunFolder:
    """A finished one-stage run of ``n`` steps (written with numpy: 10M steps in seconds)."""
    import numpy as np

    folder = RunFolder(path)
    path.mkdir(parents=True)
    folder.write_summary(
        {"run_id": path.name, "status": "passed", "stage_names": ["train"], "stages": []}
    )
    folder.write_steps_header()
    with open(folder.file("steps.bin"), "wb") as out:
        for first in range(1, n + 1, 1 << 20):
            s = np.arange(first, min(n, first + (1 << 20) - 1) + 1, dtype=np.float64)
            train = 0.05 + 1.5 * np.exp(-s / 50_000) * (1 + 0.3 * np.sin(s * 12.9898))
            cols = {
                "step": s,
                "time": s * 0.01,
                "stage": np.zeros_like(s),
                "train_loss": train,
                "val_loss": train * 1.1,
                "data_s": np.full_like(s, 1e-3),
                "step_s": np.full_like(s, 1e-2),
                "gpu_s": np.full_like(s, np.nan),
                "lr": np.full_like(s, 1e-3),
            }
            out.write(np.stack([cols[c] for c in STEP_COLUMNS], axis=1).astype("<f8").tobytes())
    evals = JsonlAppender(folder.file("evals.jsonl"))
    for step in range(0, n + 1, max(1, n // 400)):
        evals.append({"step": step, "stage": "train", "val_loss": loss(step), "accuracy": 0.9})
    evals.close()
    return folder


HISTORY_SCRIPT = """
import json, sys, time
from engine.torchfree.runfolder import RunFolder
from cockpit.app.history import RunHistory
try:
    import numpy  # the app imports it on its watcher thread before a history is opened
except ImportError:
    pass
folder, repeats = RunFolder(sys.argv[1]), int(sys.argv[2])
def peak_mb():  # VmHWM: this process's peak resident memory (ru_maxrss survives exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
rss0 = peak_mb()
times = []
for _ in range(repeats):
    t = time.perf_counter()
    history = RunHistory(folder)
    history.poll()
    times.append(time.perf_counter() - t)
    assert history.loaded
t = time.perf_counter()
history.poll()  # opened again while the app holds it: only new bytes are read
reopen = time.perf_counter() - t
rss = peak_mb()
print(json.dumps({"times": times, "reopen": reopen, "rss0": rss0, "rss": rss}))
"""


def open_history(tree: Path, folder: RunFolder, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-c", HISTORY_SCRIPT, str(folder.path), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        timeout=600,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_history(tmp: Path, trees: dict[str, Path], repeats: int) -> None:
    runs = {n: write_history(tmp / f"h-{n}", n) for n in (1_000, 1_000_000, 10_000_000)}
    size = {n: runs[n].file("steps.bin").stat().st_size / 2**20 for n in runs}
    got: dict[tuple[str, int], dict] = {}
    for name, tree in trees.items():
        for n, folder in runs.items():
            if name != "now" and n > 1_000_000:
                continue  # the old reader takes tens of seconds and gigabytes there
            got[name, n] = open_history(tree, folder, repeats if n < 10_000_000 else 3)
    now = {n: statistics.median(got["now", n]["times"]) for n in runs}
    print("history (open a run: steps.bin read, split by stage, smoothed, decimated; warm cache)")
    print(f"  1k-step run                   {now[1_000] * 1e3:8.1f} ms   (baseline)")
    for n, label in ((1_000_000, "1M"), (10_000_000, "10M")):
        line = f"  {label}-step run ({size[n]:.0f} MB)".ljust(32)
        line += f"{now[n] * 1e3:8.1f} ms   {ratio(now[n], now[1_000])} of 1k"
        if ("before", n) in got:
            was = statistics.median(got["before", n]["times"])
            line += f"; before: {was * 1e3:.0f} ms ({ratio(now[n], was)})"
        print(line)
    if ("before", 1_000) in got:
        was = statistics.median(got["before", 1_000]["times"])
        print(f"  1k-step run, before           {was * 1e3:8.1f} ms   {ratio(now[1_000], was)}")
    big = got["now", 10_000_000]
    print(f"  10M, opened again (held)      {big['reopen'] * 1e3:8.2f} ms")
    print(
        f"  10M, peak memory              {big['rss']:8.0f} MB   "
        f"(+{big['rss'] - big['rss0']:.0f} MB over the {big['rss0']:.0f} MB of the imports)"
    )


# ---- 3 and 4: the real app in a pseudo-terminal -----------------------------------------------

ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b\][^\x07]*\x07")


class Terminal:
    """`cockpit` in a pty of a given size; drains its output; notes when the first frame came,
    when ``rows_marker`` first showed, and when the bar showed ``done_marker``."""

    def __init__(
        self,
        tree: Path,
        workspace: Path,
        cols: int,
        rows: int,
        rows_marker: bytes | None = None,
        done_marker: bytes | None = None,
        argv: list[str] | None = None,
    ):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", PYTHONPATH=str(tree))
        env.pop("NO_COLOR", None)
        self.workspace = str(workspace).encode()
        self.rows_marker, self.done_marker = rows_marker, done_marker
        self.started = time.perf_counter()
        self.first_frame: float | None = None
        self.first_frame_cpu: float | None = None
        self.first_rows: float | None = None
        self.done: float | None = None
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "cockpit", "--workspace", str(workspace)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=tree,
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
            if self.done is not None and self.first_rows is not None:
                continue
            now = time.perf_counter() - self.started
            text = ANSI.sub(b"", self._seen + chunk)
            if self.first_frame is None and b"cockpit" in text:  # the title bar
                # CPU seconds the process had used by then: what the start costs, whatever
                # the load (on a crowded machine the wall time is mostly waiting for a core)
                self.first_frame_cpu = self.cpu_seconds()
                self.first_frame = now  # last: wait() returns as soon as this is set
            if self.rows_marker and self.first_rows is None and self.rows_marker in text:
                self.first_rows = now
            if self.done_marker and self.done is None:
                at = text.rfind(self.workspace)
                bar = text[at : at + 400] if at >= 0 else b""
                if self.done_marker in bar and b"reading" not in bar:
                    self.done = now
            self._seen = text[-4096:]

    def wait(self, what: str, timeout: float = 20.0) -> float:
        deadline = time.perf_counter() + timeout
        while getattr(self, what) is None and time.perf_counter() < deadline:
            time.sleep(0.005)
        value = getattr(self, what)
        return math.inf if value is None else value

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


def many_runs(workspace: Path, count: int) -> tuple[bytes, bytes]:
    """``count`` finished runs; returns (the oldest run's short id, the bar's count of them)."""
    workspace.mkdir()
    base = time.time() - 86_400
    names = []
    for i in range(count):
        t = base + 60 * i
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(t))
        run_id = f"sweep-{stamp}-{i:04x}"
        names.append(run_id)
        folder = RunFolder(workspace / run_id)
        folder.path.mkdir()
        write_json_atomic(folder.file("run.json"), {"run_id": run_id, "stages": ["train"]})
        folder.write_summary(
            {
                "run_id": run_id,
                "preset": "sweep",
                "status": "passed",
                "stages": [{"name": "train", "status": "pass", "reason": "", "checks": []}],
                "stage_names": ["train"],
                "created": t,
                "step": 200,
            }
        )
        folder.write_steps_header()
        out = StepsAppender(folder.file("steps.bin"))
        out.append_many(rows(1, 200, t0=t))
        out.close()
        evals = JsonlAppender(folder.file("evals.jsonl"))
        evals.append({"step": 200, "stage": "train", "val_loss": 0.3, "accuracy": 0.9})
        evals.close()
    return f"sweep·{0:04x}".encode(), str(count).encode()


def prefill(folder: RunFolder, steps: int, t0: float) -> None:
    """``steps`` of history written at once, as if the run had been going for a while."""
    out = StepsAppender(folder.file("steps.bin"))
    for first in range(1, steps + 1, 10_000):
        out.append_many(rows(first, min(10_000, steps + 1 - first), t0=t0))
    out.close()


def fake_live_runs(workspace: Path, count: int, stop: threading.Event, history: int = 0) -> None:
    """``count`` runs that log like a training loop: 20 steps/s, telemetry 1 Hz, evals every
    250 steps; ``history`` steps already logged."""
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
        if history:
            prefill(folder, history, now - history * 0.05)
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
    step = history
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


BARE_APP = """\
from textual.app import App
from textual.widgets import Static


class Bare(App):
    def compose(self):
        yield Static("cockpit")


Bare().run()
"""
"""The floor under any Textual app's first frame: Textual's import and start, one widget."""


def start_times(
    tree: Path, workspace: Path, cols: int, rows_: int, markers=(None, None), argv=None
) -> dict:
    term = Terminal(tree, workspace, cols, rows_, *markers, argv=argv)
    out = {"first frame": term.wait("first_frame")}
    out["first frame CPU"] = term.first_frame_cpu if term.first_frame_cpu is not None else math.inf
    if markers[0]:
        out["first rows"] = term.wait("first_rows")
        out["whole list"] = term.wait("done", timeout=30)
    term.close()
    return out


def bench_start(tmp: Path, trees: dict[str, Path], repeats: int, cols: int, rows_: int) -> None:
    empty = tmp / "start-empty"
    empty.mkdir()
    many = tmp / "start-500"
    markers = many_runs(many, 500)
    bare = tmp / "bare_textual_app.py"
    bare.write_text(BARE_APP)
    got: dict[tuple[str, str], list[dict]] = {}
    for _ in range(repeats):
        floor = start_times(ROOT, empty, cols, rows_, argv=[sys.executable, str(bare)])
        got.setdefault(("floor", "empty"), []).append(floor)
        for name, tree in trees.items():  # interleaved: the same load for both
            got.setdefault((name, "empty"), []).append(start_times(tree, empty, cols, rows_))
            got.setdefault((name, "500"), []).append(start_times(tree, many, cols, rows_, markers))
    print(f"start ({cols}x{rows_} pseudo-terminal, bytecode compiled; median of {repeats})")

    def med(name: str, ws: str, what: str) -> float:
        return statistics.median(r[what] for r in got[name, ws])

    rows_out = [
        ("empty workspace: first frame", "empty", "first frame"),
        ("… CPU used by then", "empty", "first frame CPU"),
        ("500 runs: first frame", "500", "first frame"),
        ("… CPU used by then", "500", "first frame CPU"),
        ("500 runs: first rows", "500", "first rows"),
        ("500 runs: the whole list", "500", "whole list"),
    ]
    floor, floor_cpu = (
        med("floor", "empty", "first frame"),
        med("floor", "empty", "first frame CPU"),
    )
    print(
        "  a bare Textual app (the floor)".ljust(32) + f"{floor:8.2f} s     "
        f"(Textual's import and start, one Static; CPU {floor_cpu:.2f} s)"
    )
    base = med("now", "empty", "first frame")
    for label, ws, what in rows_out:
        value = med("now", ws, what)
        line = f"  {label}".ljust(32) + f"{value:8.2f} s "
        if (ws, what) == ("empty", "first frame"):
            line += f"   (baseline; the floor +{value - floor:.2f} s)"
        elif (ws, what) == ("empty", "first frame CPU"):
            line += f"   (the floor +{value - floor_cpu:.2f} s)"
        elif "CPU" not in what:
            line += f"   {ratio(value, base)}"
        if "before" in trees:
            was = med("before", ws, what)
            line += f"; before: {was:.2f} s ({ratio(value, was)})"
        print(line)


def bench_cpu(
    tmp: Path, trees: dict[str, Path], repeats: int, seconds: float, cols: int, rows_: int
) -> None:
    got: dict[tuple[str, str], list[float]] = {}

    def add(name: str, case: str, value: float) -> None:
        got.setdefault((name, case), []).append(value)

    empty = tmp / "cpu-empty"
    empty.mkdir(exist_ok=True)
    for r in range(repeats):
        for name, tree in trees.items():
            idle = Terminal(tree, empty, cols, rows_)
            time.sleep(SETTLE_S)  # past the start (imports, first scan, first samples)
            add(name, "idle", idle.share(seconds))
            idle.close()

            for history in (0, 50_000):
                live = tmp / f"cpu-live-{name}-{r}-{history}"
                live.mkdir()
                stop = threading.Event()
                writer = threading.Thread(
                    target=fake_live_runs, args=(live, 8, stop, history), daemon=True
                )
                writer.start()
                time.sleep(1.0)
                watching = Terminal(tree, live, cols, rows_)
                time.sleep(SETTLE_S)
                if not history:
                    add(name, "list", watching.share(seconds))
                os.write(watching.master, b"\r")  # open the first run: its curves, live
                time.sleep(4)
                add(name, "curves" if not history else "curves-50k", watching.share(seconds))
                watching.close()
                stop.set()
                writer.join()
                shutil.rmtree(live, ignore_errors=True)
    print(
        f"CPU of the app, {cols}x{rows_}, nobody typing, {seconds:.0f} s each, "
        f"median of {repeats} (% of one core)"
    )
    cases = [
        ("idle, empty workspace", "idle"),
        ("runs list, 8 live runs", "list"),
        ("one live run's curves", "curves"),
        ("… one with 50k steps logged", "curves-50k"),
    ]
    base = statistics.median(got["now", "idle"])
    for label, case in cases:
        value = statistics.median(got["now", case])
        line = f"  {label}".ljust(32) + f"{value * 100:8.2f} %"
        line += "   (baseline)" if case == "idle" else f"   +{(value - base) * 100:.2f} points"
        if "before" in trees:
            was = statistics.median(got["before", case])
            line += f"; before: {was * 100:.2f} % ({ratio(value, was)})"
        print(line)
    print(
        "  every sample (now / before): "
        + json.dumps({f"{n}:{c}": [round(v * 100, 2) for v in vs] for (n, c), vs in got.items()})
    )


def checkout(rev: str, into: Path) -> Path:
    """The app and the engine as they were at ``rev``, in a folder of their own."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "cockpit", "engine"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def compile_tree(tree: Path) -> None:
    """Bytecode for the tree, as an installed package has (PYTHONDONTWRITEBYTECODE is set on
    some machines, which would make every start compile the app's sources again)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "cockpit", "engine"],
        cwd=tree,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="CPU measuring window per case")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (median reported)")
    ap.add_argument("--size", default="120x36", help="terminal size for the app cases")
    ap.add_argument("--before", help="git revision of the app to measure against, same run")
    ap.add_argument(
        "--only", default="curves,history,start,cpu", help="comma-separated sections to run"
    )
    args = ap.parse_args()
    cols, rows_ = (int(v) for v in args.size.lower().split("x"))
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="cockpit-app-bench-"))
    print(f"start: {load_text()}; {python_speed()}")
    try:
        trees = {"now": ROOT}
        if args.before:
            trees["before"] = checkout(args.before, tmp / "before")
        for tree in trees.values():
            compile_tree(tree)
        if "curves" in only:
            bench_curves()
        if "history" in only:
            bench_history(tmp, trees, args.repeats)
        if "start" in only:
            bench_start(tmp, trees, args.repeats, cols, rows_)
        if "cpu" in only:
            bench_cpu(tmp, trees, args.repeats, args.seconds, cols, rows_)
    finally:
        print(f"end: {load_text()}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
