"""The cockpit app: state shared by the screens, the background threads, and the actions.

Data flow: the watcher thread (workspace, histories) and the device thread (NVML / CPU) post
coalescing messages; the app keeps the newest state and publishes it through signals that
the visible widgets subscribe to; widgets redraw at most twice a second. User actions that
block (starting an engine, stopping one) run in thread workers; the engines they start are
processes of their own session, so quitting the app leaves them running.
"""

from __future__ import annotations

import gc
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import App
from textual.signal import Signal

from cockpit.app.devices import DeviceProbe, DeviceSampler
from cockpit.app.history import RunHistory
from cockpit.app.messages import DeviceSample, DevicesSampled, HistoryUpdated, RunState, RunsUpdated
from cockpit.app.screens.runs import RunsScreen
from cockpit.app.settings import ViewSettings
from cockpit.app.watcher import WorkspaceWatcher
from engine.torchfree.runfolder import LIVE, RunFolder

if TYPE_CHECKING:
    from cockpit.app.screens.fork import ForkRequest
    from cockpit.app.screens.new_run import LaunchRequest

# The other screens, the dialogs and the launcher are imported when first opened: the first
# frame waits only for the runs screen's code.

IDLE_HISTORIES = 16
"""Histories kept in memory after their view closed, so going back to a run is instant (a
history holds envelopes only, a few hundred kB whatever the run's length)."""


class CockpitApp(App[None]):
    """``cockpit``: the runs of one workspace, live."""

    CSS_PATH = "app.tcss"
    TITLE = "cockpit"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [
        (0, "-narrow"),
        (80, "-normal"),
        (124, "-wide"),
    ]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [
        (0, "-short"),
        (24, "-normal-height"),
        (40, "-tall"),
    ]

    def __init__(
        self,
        workspace: Path,
        *,
        clock: Callable[[], float] = time.time,
        device_probe: DeviceProbe | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.workspace = Path(workspace)
        self.clock = clock
        """Wall time as the app sees it (tests freeze it so ages and time axes are stable)."""
        self.settings = ViewSettings.from_env()
        self.runs: tuple[RunState, ...] = ()
        """Every run of the workspace, oldest first, as of the watcher's last scan."""
        self.loading: tuple[int, int] | None = (0, 0)
        """(runs read, runs found) until the workspace has been read once; then None."""
        self.marked: set[str] = set()
        """Runs marked with space, for the compare view."""
        self.stopping: set[str] = set()
        """Runs being killed right now."""
        self.samples: tuple[DeviceSample, ...] = ()
        self.device_note: str | None = None
        self.runs_changed: Signal[tuple[RunState, ...]] = Signal(self, "runs")
        self.history_changed: Signal[str] = Signal(self, "history")
        self.devices_changed: Signal[tuple[tuple[DeviceSample, ...], str | None]] = Signal(
            self, "devices"
        )
        self.settings_changed: Signal[ViewSettings] = Signal(self, "settings")
        self.watcher = WorkspaceWatcher(self.workspace, self.post_message, clock, poll_interval)
        self.device_sampler = DeviceSampler(self.post_message, device_probe, clock=clock)
        self._histories: OrderedDict[str, RunHistory] = OrderedDict()
        self._history_users: dict[str, set[int]] = {}
        self._threads: list[threading.Thread] = []
        self._engines: list[subprocess.Popen] = []
        self.resume_gc = False
        """Set by ``run_app``, which starts the app with the garbage collector off: it is
        turned on again once the first frame is out."""

    # ---- life ----------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.push_screen(RunsScreen())
        # the threads start once the first frame is out: they would compete with it for the GIL
        self.call_after_refresh(self._start_threads)

    def _start_threads(self) -> None:
        if self.resume_gc:
            self.resume_gc = False
            gc.freeze()  # what the start made stays: later passes need not look at it again
            gc.enable()
        if self._threads:
            return
        for name, target in (
            ("cockpit-watcher", self.watcher.run),
            ("cockpit-devices", self.device_sampler.run),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def on_unmount(self) -> None:
        self.watcher.stop()
        self.device_sampler.stop()
        for thread in self._threads:
            thread.join(timeout=2.0)

    # ---- what the threads report ---------------------------------------------------------------
    def on_runs_updated(self, message: RunsUpdated) -> None:
        self.runs = message.runs
        self.loading = message.loading
        live = {r.run_id for r in self.runs if r.snapshot.status in LIVE}
        self.stopping &= live
        self.marked &= {r.run_id for r in self.runs}
        self._engines = [p for p in self._engines if p.poll() is None]  # reap finished engines
        self.runs_changed.publish(self.runs)

    def on_history_updated(self, message: HistoryUpdated) -> None:
        self.history_changed.publish(message.run_id)

    def on_devices_sampled(self, message: DevicesSampled) -> None:
        self.samples, self.device_note = message.samples, message.note
        self.devices_changed.publish((self.samples, self.device_note))

    def run_state(self, run_id: str | None) -> RunState | None:
        return next((r for r in self.runs if r.run_id == run_id), None)

    # ---- histories, shared by the views that draw them ---------------------------------------
    def acquire_history(self, run_id: str, user: object) -> RunHistory | None:
        """The run's history, kept current while at least one user holds it."""
        history = self._histories.get(run_id)
        if history is None:
            state = self.run_state(run_id)
            folder = RunFolder(state.snapshot.path if state else self.workspace / run_id)
            if not folder.file("summary.json").exists():
                return None
            history = RunHistory(folder, self.settings.smoothing)
            self._histories[run_id] = history
        self._histories.move_to_end(run_id)
        history.request_smoothing(self.settings.smoothing)
        self._history_users.setdefault(run_id, set()).add(id(user))
        self.watcher.watch(history)
        return history

    def release_history(self, run_id: str, user: object) -> None:
        users = self._history_users.get(run_id)
        if users is None:
            return
        users.discard(id(user))
        if users:
            return
        del self._history_users[run_id]
        self.watcher.unwatch(run_id)
        idle = [rid for rid in self._histories if rid not in self._history_users]
        for rid in idle[:-IDLE_HISTORIES]:  # the least recently used go
            del self._histories[rid]

    # ---- screens -----------------------------------------------------------------------------
    def open_run(self, run_id: str) -> None:
        from cockpit.app.screens.run import RunScreen

        state = self.run_state(run_id)
        if state is None:
            self.notify(f"{run_id} is gone from the workspace", severity="warning")
            return
        self.push_screen(RunScreen(run_id, RunFolder(state.snapshot.path)))

    def open_compare(self, run_id: str | None) -> None:
        from cockpit.app.screens.compare import CompareScreen

        state = self.run_state(run_id)
        if self.marked:
            group = "(marked)"
        elif state is not None and state.snapshot.group:
            group = state.snapshot.group
        else:
            group = "(all runs)"
        self.push_screen(CompareScreen(group))

    def show_help(self) -> None:
        from cockpit.app.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    # ---- settings ------------------------------------------------------------------------------
    def _set_settings(self, settings: ViewSettings, note: str) -> None:
        self.settings = settings
        for history in self._histories.values():
            history.request_smoothing(settings.smoothing)
        self.settings_changed.publish(settings)
        self.notify(note, timeout=2)

    def toggle_log_scale(self) -> None:
        on = not self.settings.log_scale
        self._set_settings(
            ViewSettings(self.settings.marker, on, self.settings.smoothing),
            f"log scale {'on' if on else 'off'}",
        )

    def cycle_markers(self) -> None:
        settings = self.settings.next_marker()
        self._set_settings(settings, f"{settings.marker} markers")

    def change_smoothing(self, notches: int) -> None:
        settings = self.settings.smoother(notches)
        self._set_settings(
            settings,
            f"smoothing {settings.smoothing:g}" + (" (off)" if not settings.smoothing else ""),
        )
        self.watcher.wake()  # re-smooth the open histories now

    def toggle_mark(self, run_id: str) -> None:
        if run_id in self.marked:
            self.marked.discard(run_id)
        else:
            self.marked.add(run_id)

    # ---- launching, forking, killing ---------------------------------------------------------
    def open_new_run(self) -> None:
        from cockpit.app.presets import discover_presets
        from cockpit.app.screens.new_run import NewRunDialog

        self.push_screen(NewRunDialog(discover_presets(self.workspace)), self._launch_answered)

    def _launch_answered(self, request: LaunchRequest | None) -> None:
        if request is not None:
            self.launch(request)

    @work(thread=True, group="launch")
    def launch(self, request: LaunchRequest) -> None:
        from cockpit.launch import create_run, start_engine

        try:
            folder = create_run(
                self.workspace, request.preset, overrides=request.overrides, stages=request.stages
            )
            engine = start_engine(folder)
        except (OSError, LookupError) as e:  # a full disk, a bad launcher setting: say so
            self.call_from_thread(
                self.notify, f"could not start the run: {e}", severity="error", timeout=8
            )
            return
        self.call_from_thread(self._engines.append, engine)
        self.watcher.rescan()
        self.call_from_thread(self.notify, f"started {folder.run_id}")

    def open_fork(self, run_id: str | None) -> None:
        from cockpit.app.screens.fork import ForkDialog

        state = self.run_state(run_id)
        if state is None:
            self.notify("no run selected to fork", severity="warning")
            return
        folder = RunFolder(state.snapshot.path)
        self.push_screen(ForkDialog(folder), lambda answer: self._fork_answered(folder, answer))

    def _fork_answered(self, parent: RunFolder, answer: ForkRequest | None) -> None:
        if answer is not None:
            self.fork(parent, answer)

    @work(thread=True, group="launch")
    def fork(self, parent: RunFolder, request: ForkRequest) -> None:
        from cockpit.fork import fork_run
        from engine.torchfree.preset import PresetError

        try:
            folder, proc = fork_run(
                self.workspace, parent, request.overrides, warm=request.warm, stages=request.stages
            )
        except (PresetError, LookupError, OSError) as e:
            self.call_from_thread(self.notify, str(e).strip("'\""), severity="error", timeout=8)
            return
        if proc is not None:
            self.call_from_thread(self._engines.append, proc)
        self.watcher.rescan()
        how = "warm" if request.warm else "cold"
        self.call_from_thread(self.notify, f"forked {folder.run_id} from {parent.run_id} ({how})")

    def confirm_kill(self, run_id: str | None) -> None:
        from cockpit.app.screens.confirm_kill import ConfirmKill

        state = self.run_state(run_id)
        if state is None:
            self.notify("no run selected to kill", severity="warning")
            return
        if state.snapshot.status not in LIVE:
            self.notify(f"{state.run_id} is not running ({state.snapshot.status})", timeout=3)
            return
        if state.run_id in self.stopping:
            self.notify(f"{state.run_id} is already stopping", timeout=3)
            return
        self.push_screen(
            ConfirmKill(state.snapshot),
            lambda yes: self._kill_answered(state.run_id, state.snapshot.path, yes),
        )

    def _kill_answered(self, run_id: str, path: Path, yes: bool | None) -> None:
        if yes:
            self.stopping.add(run_id)
            self.runs_changed.publish(self.runs)
            self.kill(run_id, RunFolder(path))

    @work(thread=True, group="kill")
    def kill(self, run_id: str, folder: RunFolder) -> None:
        from cockpit.launch import RunElsewhere, stop

        started = time.monotonic()
        try:
            was_running = stop(folder)
        except RunElsewhere as e:
            self.stopping.discard(run_id)
            self.call_from_thread(self.runs_changed.publish, self.runs)
            self.call_from_thread(self.notify, str(e), severity="warning", timeout=12)
            return
        took = time.monotonic() - started
        self.watcher.rescan()
        note = (
            f"killed {run_id} in {took:.1f} s" if was_running else f"{run_id} had already stopped"
        )
        self.call_from_thread(self.notify, note)

    def live_count(self) -> int:
        return sum(1 for r in self.runs if r.snapshot.status in LIVE)
