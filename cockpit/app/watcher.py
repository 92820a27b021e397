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
from engine.torchfree.runfolder import FINAL, LIVE, UNREAD, JsonlTail, RunFolder

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
FOCUSED_TICK = 0.9
"""While a view shows some runs only (a run's curves), the watcher ticks at 0.9 × the scan
period: each tick reads the run and polls its history (a poll with nothing new is a ``stat``
of three files), and the view draws both in one repaint — so a point is on screen within a
second of reaching the disk, at one read and one draw per tick (polling four times per scan
and drawing on a separate cadence cost a third more draws and four times the polls for the
same liveness)."""
OFFSCREEN_SCANS = 5
"""While a view shows some runs only (a run view: one), the others are read every fifth scan:
their rows are hidden, and the list gets a full scan at once when it is shown again."""
_STAMP = re.compile(r"(\d{8}-\d{6})")


def created_hint(name: str) -> tuple[str, str]:
    """Sorts run ids by the creation time written in them (``preset-YYYYMMDD-HHMMSS-xxxx``)
    without reading anything: the order in which a large workspace is first read."""
    match = _STAMP.search(name)
    return (match.group(1) if match else "", name)


EVALS, TELEMETRY = 2, 3
"""Where evals.jsonl and telemetry.jsonl are in a live run's stamp."""


class RunTracker:
    """The watcher's memory of one run folder: file stamps, the last snapshot, telemetry."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.stamp: tuple = ()
        self.state: RunState | None = None
        self.checked_at = -LIVENESS_S
        """time.monotonic() when the OS was last asked whether the engine lives (the liveness
        clock is not the display clock)."""
        self.waits: deque[tuple[float, float]] = deque()
        self.gpu_index: int | None = None
        self.pids: frozenset[int] = frozenset()
        self._telemetry: JsonlTail | None = None
        self._last_telemetry: dict | None = None
        self._last_eval: dict | None = None
        self._shown: dict | None = None
        """The last snapshot as JSON (NaN-safe to compare; made once per read, not twice)."""

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

        ``now`` is the wall clock of the telemetry window. Only what moved is read again:
        the last eval when evals.jsonl moved, the telemetry when telemetry.jsonl did; and a
        run whose files move while its engine was alive at the last check (at most
        ``LIVENESS_S`` ago) is not asked about again until the next one."""
        live = self.state is None or self.state.snapshot.status not in FINAL
        stamp = self._stamp(live)
        mono = time.monotonic()
        due = live and mono - self.checked_at >= LIVENESS_S
        if stamp == self.stamp and not due:
            return False
        before, self.stamp = self.stamp, stamp
        was_alive = self.state is not None and self.state.snapshot.status in LIVE
        check = due or not was_alive
        if check:
            self.checked_at = mono
        moved = (
            [True] * len(stamp)
            if len(before) != len(stamp)
            else [a != b for a, b in zip(before, stamp)]
        )
        if not live or moved[EVALS]:
            self._last_eval = self.folder.last_eval()
        if live and moved[TELEMETRY]:
            self._read_telemetry()
        snapshot = self.folder.snapshot(
            assume_alive=not check,
            last_eval=self._last_eval,
            last_telemetry=self._last_telemetry if live else UNREAD,
        )
        if snapshot.status in LIVE:
            self._trim_waits(now)
            if check:
                self.pids = _process_tree(self.folder)
        else:
            self.waits.clear()
            self.pids = frozenset()
        position = None
        if snapshot.status == "queued":
            position = self.folder.summary().get("queue_position")
        previous, shown = self.state, self._shown
        self.state = RunState(
            snapshot,
            self._last_eval,
            tuple(self.waits),
            self.gpu_index,
            self.pids,
            int(position) if isinstance(position, (int, float)) else None,
        )
        self._shown = snapshot.to_json()
        return previous is None or _differs(previous, shown, self.state, self._shown)

    def _read_telemetry(self) -> None:
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
            self._last_telemetry = row
            wait, t = row.get("data_wait"), row.get("t")
            if isinstance(wait, (int, float)) and isinstance(t, (int, float)):
                self.waits.append((float(t), float(wait)))

    def _trim_waits(self, now: float) -> None:
        while self.waits and self.waits[0][0] < now - WINDOW_S:
            self.waits.popleft()


def _differs(a: RunState, a_json: dict | None, b: RunState, b_json: dict) -> bool:
    # to_json turns NaN into None: NaN != NaN would make every run look changed every tick
    return (
        a_json != b_json
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
        """Seconds between scans of the runs are twice this (0.9 × that in a view of one run,
        ``FOCUSED_TICK``); the watched histories are polled right after each scan."""
        self.trackers: dict[str, RunTracker] = {}
        self._histories: dict[str, RunHistory] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
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
        while not self._stop.is_set():
            self.scan()
            if not self._warmed:
                self._warmed = True
                numpy()  # before the first history is opened, off the UI thread
            self.poll_histories()
            self._wake.wait(self.tick_s())
            self._wake.clear()

    def tick_s(self) -> float:
        """Seconds between ticks (a scan, then a poll of the watched histories)."""
        period = self.interval * 2
        return period * FOCUSED_TICK if self.focus is not None else period

    def poll_histories(self) -> None:
        """Read what the watched histories' runs appended; post the ones that changed (after
        the scan's runs: a view shows both in one repaint)."""
        with self._lock:
            histories = list(self._histories.values())
        for history in histories:
            if self._stop.is_set():
                return
            if history.poll():
                self.post(HistoryUpdated(history.run_id))

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
