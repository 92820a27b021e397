"""The watcher thread: it keeps the app's picture of the workspace current.

One thread for the whole workspace, so the app's cost does not grow with threads per run.
Every tick it stats each run's files and re-reads a run only when something changed (a
finished run costs one ``stat`` per tick); it tails each live run's telemetry for the
data-wait share; and it polls the histories the UI is drawing. What it learns it posts as
coalescing messages; it never touches a widget.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from textual.message import Message

from cockpit.app.envelope import numpy
from cockpit.app.history import RunHistory
from cockpit.app.messages import HistoryUpdated, RunState, RunsUpdated
from engine.torchfree.runfolder import FINAL, LIVE, JsonlTail, RunFolder

WINDOW_S = 600.0
"""How far back the data-wait series reach (the GPU panel's time axis)."""
LIVENESS_S = 5.0
"""How often a live run whose files stand still is checked for a dead engine."""
TELEMETRY_BACKLOG = 128_000
"""Bytes of an old telemetry.jsonl read when a run is first seen (~10 minutes of rows)."""
FIRST_BATCH = 40
"""Runs read before the first partial list is posted (the top rows, at once)."""
NEXT_BATCH = 1000
"""Runs read between later partial lists (each costs the UI a pass over every row)."""
HISTORY_POLLS_PER_SCAN = 4
"""The watched histories are polled four times per scan (every 0.25 s; a poll with nothing new
is a ``stat`` of three files): with the views' cadence (0.75 s) a new point is on screen
within a second."""
OFFSCREEN_SCANS = 5
"""While a view shows some runs only (a run view: one), the others are read every fifth scan:
their rows are hidden, and the list gets a full scan at once when it is shown again."""
_STAMP = re.compile(r"(\d{8}-\d{6})")


def created_hint(name: str) -> tuple[str, str]:
    """Sorts run ids by the creation time written in them (``preset-YYYYMMDD-HHMMSS-xxxx``)
    without reading anything: the order in which a large workspace is first read."""
    match = _STAMP.search(name)
    return (match.group(1) if match else "", name)


class RunTracker:
    """The watcher's memory of one run folder: file stamps, the last snapshot, telemetry."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.stamp: tuple = ()
        self.state: RunState | None = None
        self.checked_at = -LIVENESS_S
        """time.monotonic() of the last full read (the liveness clock is not the display clock)."""
        self.waits: deque[tuple[float, float]] = deque()
        self.gpu_index: int | None = None
        self.pids: frozenset[int] = frozenset()
        self._telemetry: JsonlTail | None = None

    def _stamp(self, live: bool) -> tuple:
        names = (
            ("summary.json", "steps.bin", "evals.jsonl", "telemetry.jsonl")
            if live
            else ("summary.json",)
        )
        out = []
        for name in names:
            try:
                st = os.stat(self.folder.file(name))
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def poll(self, now: float) -> bool:
        """Re-read the run if its files changed (or a live one is due a liveness check).

        ``now`` is the wall clock of the telemetry window."""
        live = self.state is None or self.state.snapshot.status not in FINAL
        stamp = self._stamp(live)
        due = live and time.monotonic() - self.checked_at >= LIVENESS_S
        if stamp == self.stamp and not due:
            return False
        self.stamp = stamp
        self.checked_at = time.monotonic()
        snapshot = self.folder.snapshot()
        if snapshot.status in LIVE:
            self._read_telemetry(now)
            if due or self.state is None:
                self.pids = _process_tree(self.folder)
        else:
            self.waits.clear()
            self.pids = frozenset()
        position = None
        if snapshot.status == "queued":
            position = self.folder.summary().get("queue_position")
        previous = self.state
        self.state = RunState(
            snapshot,
            self.folder.last_eval(),
            tuple(self.waits),
            self.gpu_index,
            self.pids,
            int(position) if isinstance(position, (int, float)) else None,
        )
        return previous is None or _differs(previous, self.state)

    def _read_telemetry(self, now: float) -> None:
        if self._telemetry is None:
            self._telemetry = JsonlTail(self.folder.file("telemetry.jsonl"))
            with contextlib.suppress(OSError):
                size = os.path.getsize(self._telemetry.path)
                # start near the end; the first, partial line fails to parse and is skipped
                self._telemetry.offset = max(0, size - TELEMETRY_BACKLOG)
        for row in self._telemetry.read_new():
            if row.get("kind") == "header":
                if row.get("gpu_index") is not None:
                    self.gpu_index = int(row["gpu_index"])
                continue
            gpu = row.get("gpu")
            if isinstance(gpu, dict) and gpu.get("index") is not None:
                self.gpu_index = int(gpu["index"])
            wait, t = row.get("data_wait"), row.get("t")
            if isinstance(wait, (int, float)) and isinstance(t, (int, float)):
                self.waits.append((float(t), float(wait)))
        while self.waits and self.waits[0][0] < now - WINDOW_S:
            self.waits.popleft()


def _differs(a: RunState, b: RunState) -> bool:
    # to_json turns NaN into None: NaN != NaN would make every run look changed every tick
    return (
        a.snapshot.to_json() != b.snapshot.to_json()
        or a.last_eval != b.last_eval
        or a.waits != b.waits
        or a.gpu_index != b.gpu_index
        or a.queue_position != b.queue_position
    )


def _process_tree(folder: RunFolder) -> frozenset[int]:
    import psutil

    from cockpit.launch import engine_process  # on the watcher thread, after the first frame

    proc = engine_process(folder)
    if proc is None:
        return frozenset()
    try:
        return frozenset([proc.pid, *(c.pid for c in proc.children(recursive=True))])
    except psutil.Error:
        return frozenset([proc.pid])


class WorkspaceWatcher:
    """Polls the workspace and the watched histories; posts what changed.

    ``post`` receives Messages (the app's ``post_message``, which is thread-safe)."""

    sources: tuple = ()
    """More runs than the workspace's: objects whose ``scan()`` returns {run id: run folder},
    e.g. a TensorBoard log directory mirrored as run folders (``cockpit --tensorboard DIR``)."""

    def __init__(
        self,
        workspace: Path,
        post: Callable[[Message], object],
        clock: Callable[[], float] = time.time,
        interval: float = 0.5,
    ):
        self.workspace = workspace
        self.post = post
        self.clock = clock
        self.interval = interval
        """Seconds between scans of the runs are twice this; the watched histories are polled
        four times per scan (every ``interval / 2``): with the views' 0.75 s cadence a new
        point is on screen within a second."""
        self.trackers: dict[str, RunTracker] = {}
        self._histories: dict[str, RunHistory] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tick = 0
        self._post_next_scan = True  # the first scan always reports, even an empty workspace
        self._warmed = False
        self.focus: frozenset[str] | None = None
        """The runs on screen when a view shows only some (None: all of them are)."""
        self._scans = 0
        self._scan_all = True

    # ---- called from the UI thread -------------------------------------------------
    def watch(self, history: RunHistory) -> None:
        """Keep ``history`` current (and load it now, if it is new here)."""
        with self._lock:
            new = self._histories.get(history.run_id) is not history
            self._histories[history.run_id] = history
        if new:
            self._wake.set()

    def unwatch(self, run_id: str) -> None:
        with self._lock:
            self._histories.pop(run_id, None)

    def rescan(self) -> None:
        """Look at the workspace now rather than at the next tick (after a launch or a kill)."""
        self._tick = 0
        self._post_next_scan = True
        self._scan_all = True
        self._wake.set()

    def set_focus(self, run_ids: frozenset[str] | None) -> None:
        """The runs a view shows (None: every run is on screen again, read them now)."""
        self.focus = run_ids
        if run_ids is None:
            self.rescan()

    def wake(self) -> None:
        """Poll the histories now (a new smoothing to apply)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # ---- the thread ----------------------------------------------------------------
    def run(self) -> None:
        polls = HISTORY_POLLS_PER_SCAN
        while not self._stop.is_set():
            if self._tick % polls == 0:
                self.scan()
                if not self._warmed:
                    self._warmed = True
                    numpy()  # before the first history is opened, off the UI thread
            self._tick += 1
            with self._lock:
                histories = list(self._histories.values())
            for history in histories:
                if self._stop.is_set():
                    return
                if history.poll():
                    self.post(HistoryUpdated(history.run_id))
            self._wake.wait(self.interval * 2 / polls)
            self._wake.clear()

    def scan(self) -> None:
        """Stat every run, re-read the changed ones, post the whole picture if anything moved."""
        now = self.clock()
        try:
            names = {
                e.name
                for e in os.scandir(self.workspace)
                if e.is_dir() and os.path.exists(os.path.join(e.path, "summary.json"))
            }
        except FileNotFoundError:
            names = set()
        elsewhere: dict[str, Path] = {}
        for source in self.sources:
            with contextlib.suppress(Exception):  # a broken log directory never stops the app
                elsewhere.update(source.scan())
        names |= set(elsewhere)
        changed = names != set(self.trackers)
        for name in set(self.trackers) - names:
            del self.trackers[name]
        new = sorted(names - set(self.trackers), key=created_hint)  # oldest first: the top rows
        for name in new:
            self.trackers[name] = RunTracker(
                RunFolder(elsewhere.get(name) or self.workspace / name)
            )
        fresh = set(new)
        focus = self.focus
        every = focus is None or self._scan_all or self._scans % OFFSCREEN_SCANS == 0
        self._scans += 1
        self._scan_all = False
        read, batch = 0, FIRST_BATCH
        for name, tracker in list(self.trackers.items()):
            if not every and name not in focus and name not in fresh:  # type: ignore[operator]
                continue  # off screen: read at every fifth scan
            changed |= tracker.poll(now)
            if name in fresh:
                read += 1
                if read == batch and read < len(fresh):
                    # a large workspace shows up a batch at a time instead of all at the end
                    self._post_states((read, len(fresh)))
                    batch += NEXT_BATCH
        if changed or self._post_next_scan:
            self._post_next_scan = False
            self._post_states(None)

    def _post_states(self, loading: tuple[int, int] | None) -> None:
        states = [t.state for t in self.trackers.values() if t.state is not None]
        states.sort(key=lambda s: (s.snapshot.created, s.run_id))
        self.post(RunsUpdated(tuple(states), loading))
