"""Tracking for any training script: the run folder the engine writes, from three calls.

```python
import cockpit.track as track

run = track.start(name="my-script", config={"lr": 3e-4})   # workspace=None: as the CLI
for step in range(n):
    ...
    run.log(step, train_loss=loss, val_loss=vloss, lr=lr, acc=acc)   # floats or tensors
run.eval(step, accuracy=0.91)                                       # full-val results
run.finish()                                                        # status passed
```

``track.start`` is also a context manager. What lands in ``<workspace>/<run_id>/`` is what
an engine run has (Contract 3), so ``cockpit ls``, the app, compare, ``cockpit kill`` and
``cockpit export`` work on it unchanged:

- ``summary.json`` (status running → passed / error / killed), ``run.json`` (the script, its
  argv and config; ``source: "track"``), ``preset.yaml`` (the config, for reading),
  ``proc.json`` (this process, so ``cockpit kill`` can stop it), ``events.jsonl``;
- ``steps.bin``: one record per ``log`` call in the engine's columns — ``step, time, stage,
  train_loss, val_loss, data_s, step_s, gpu_s, lr``; ``step_s`` is the time since the
  previous ``log`` call, ``data_s`` what the script passes (``data_s=``), the stage is
  ``train``;
- ``evals.jsonl``: ``eval()`` rows, and the other named per-step values of ``log`` (``acc=``)
  as rows with ``"kind": "step"``, so the app draws them as metric curves;
- ``telemetry.jsonl``: about once a second CPU, RAM, the process tree's RSS, the steps
  logged, the share of time in ``data_s`` and, once the script uses a CUDA device, NVML's
  view of it; ``engine.log``: a crash's traceback.

Light to import: the standard library and the torch-free run-folder code; psutil when a run
starts; torch only when a value is a tensor (it is never imported here). A CUDA tensor is
copied into a pinned host slot with ``non_blocking=True`` behind a CUDA event and read once
the event has fired, a call or more later — ``log`` never waits on the device, except when
the device is ``DEPTH`` logged steps behind.

An uncaught exception ends the run ``error`` (its traceback in engine.log), Ctrl-C ends it
``killed``, and so do SIGTERM (``cockpit kill``) and SIGHUP: the handlers are installed while
a run is active and chained to the ones that were there. ``log`` costs about a microsecond
with five float values: rows are packed in memory and written with one ``os.write`` at most
four times a second (and by the telemetry thread when the script pauses).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from engine.torchfree.runfolder import (
    RECORD_SIZE,
    RUN_DIR_MODES,
    STEP_COLUMNS,
    JsonlAppender,
    RunFolder,
    StepsAppender,
    clean_number,
    new_run_id,
    prepare_workspace,
    resolve_workspace,
    sharing,
    write_bytes_private,
    write_json_atomic,
)

__all__ = ["Run", "TrackError", "active", "start"]

STAGE = "train"
DEPTH = 8
"""CUDA readback slots: ``log`` waits on the device only when it is this many calls behind."""
FLUSH_S = 0.25
"""Logged rows reach the file at least this often while the script logs."""
FLUSH_BYTES = 512 * RECORD_SIZE
_NAN = math.nan
_pack = struct.Struct("<" + "d" * len(STEP_COLUMNS)).pack
_perf = time.perf_counter
_time = time.time
_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGHUP")) if s is not None
)

_active: list[Run] = []


class TrackError(ValueError):
    """A value ``log`` or ``eval`` cannot record (one sentence, what to pass instead)."""


def start(
    name: str | None = None,
    config: dict | None = None,
    workspace: str | os.PathLike | None = None,
) -> Run:
    """Create a run folder in ``workspace`` (None: ``$COCKPIT_WORKSPACE``, else ``./runs``) and
    start recording. Works as a context manager: ``with track.start(...) as run:``."""
    if name is None:
        if "ipykernel" in sys.modules:
            name = "notebook"
        else:
            name = (
                Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else "script"
            )
    if config is not None and not isinstance(config, dict):
        raise TrackError(
            f"cockpit.track.start: config must be a dict of settings, got {type(config).__name__}"
        )
    return Run(str(name), dict(config or {}), resolve_workspace(workspace))


def active() -> Run | None:
    """The most recently started run that is still recording (the callbacks use it)."""
    return _active[-1] if _active else None


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[dotted] = value
        else:
            out[dotted] = str(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return clean_number(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "device")


class _Readback:
    """CUDA values to the host without a per-step sync: one pinned float64 row per ``log``
    call, a CUDA event recorded behind the copy, read once ``event.query()`` says it landed."""

    WIDTH = 16

    def __init__(self, device: Any):
        # the script imported torch already (its values are tensors); cockpit never imports it
        torch = sys.modules["torch"]
        self.torch = torch
        self.device = device
        self.host = torch.empty((DEPTH, self.WIDTH), dtype=torch.float64, pin_memory=True)
        self.events = [torch.cuda.Event() for _ in range(DEPTH)]
        self.next_slot = 0
        self.in_flight = 0

    def push(self, tensors: list) -> int:
        """Start the copy of ``tensors`` (one-element, on ``self.device``); returns the slot."""
        torch = self.torch
        slot = self.next_slot
        row = torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors])
        self.host[slot, : len(tensors)].copy_(row, non_blocking=True)
        self.events[slot].record()
        self.next_slot = (slot + 1) % DEPTH
        self.in_flight += 1
        return slot

    def ready(self, slot: int) -> bool:
        return self.events[slot].query()

    def wait(self, slot: int) -> None:
        self.events[slot].synchronize()

    def take(self, slot: int, n: int) -> list[float]:
        self.in_flight -= 1
        return self.host[slot, :n].tolist()


class _Pending:
    """A logged row whose tensor values are still on their way to the host."""

    __slots__ = ("extras", "fixed", "names", "slot")

    def __init__(self, fixed: list, names: list, slot: int | None, extras: dict | None):
        self.fixed = fixed  # step, time, stage, train, val, data_s, step_s, gpu_s, lr
        self.names = names  # where each tensor value goes: a column index or an extra's name
        self.slot = slot
        self.extras = extras


class Run:
    """One tracked run. Make it with :func:`start`."""

    def __init__(self, name: str, config: dict, workspace: Path):
        workspace = prepare_workspace(workspace)  # WorkspaceError: one sentence
        dir_mode = RUN_DIR_MODES[sharing(workspace)]
        for _ in range(20):
            run_id = new_run_id(name)
            try:
                (workspace / run_id).mkdir(mode=0o700)
                os.chmod(workspace / run_id, dir_mode)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 20 collisions of 16 random bits in one second
            raise RuntimeError("could not find a free run id")
        self.folder = RunFolder(workspace / run_id)
        self.name = name
        self.config = config
        self.status = "running"
        self.created = _time()
        self.steps = 0
        self._closed = False
        self._lock = threading.RLock()  # a signal handler may flush inside a flush
        self._rows = bytearray()  # packed steps.bin records; += and del are atomic under the GIL
        # named per-step values: (template, rows) per run of calls with the same names;
        # written by the script's own thread only (the telemetry thread leaves them alone)
        self._egroups: list[tuple[str, list]] = []
        self._enames: tuple | None = None
        self._erows: list = []
        self._formats: dict[tuple, str] = {}  # a JSON line's template per set of names
        self._pending: deque[_Pending] = deque()
        self._readback: _Readback | None = None
        self._device = "cpu"
        self._prev = _perf()
        self._last_flush = self._prev
        self._data_total = 0.0  # cumulative, read by the telemetry thread
        self._step_total = 0.0
        self._interrupted: str | None = None
        self._pid = os.getpid()  # a forked child has a copy of this object: it must not write
        self._saved_handlers: dict[int, Any] = {}
        self._saved_excepthook = None
        self._write_start()
        self._steps_out = StepsAppender(self.folder.file("steps.bin"))
        self._evals_out = JsonlAppender(self.folder.file("evals.jsonl"))
        self._telemetry = _Telemetry(self)
        self._telemetry.start()
        self._install_handlers()
        atexit.register(self._at_exit)
        _active.append(self)

    # ---- identity ------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.folder.run_id

    @property
    def path(self) -> Path:
        return self.folder.path

    def __repr__(self) -> str:
        return f"<cockpit.track.Run {self.run_id} {self.status} · {self.steps} steps>"

    # ---- logging -------------------------------------------------------------------
    def log(
        self,
        step: int,
        train_loss: Any = _NAN,
        val_loss: Any = _NAN,
        lr: Any = _NAN,
        data_s: Any = _NAN,
        **metrics: Any,
    ) -> None:
        """One training step: losses, LR, the seconds the script waited on data, and any
        other named values (floats, ints, or one-element tensors on any device)."""
        now = _perf()
        step_s = now - self._prev
        self._prev = now
        if self._closed:
            return
        self.steps += 1
        fast = (
            type(train_loss) is float
            and type(val_loss) is float
            and type(lr) is float
            and type(data_s) is float
            and not self._pending
        )
        if fast and metrics:
            for v in metrics.values():
                if type(v) is not float:
                    fast = False
                    break
        if fast:
            t = _time()
            self._rows += _pack(step, t, 0.0, train_loss, val_loss, data_s, step_s, _NAN, lr)
            if metrics:
                names = tuple(metrics)
                if names != self._enames:
                    self._new_group(names)
                self._erows.append((step, t, *metrics.values()))
            if data_s == data_s:
                self._data_total += data_s
        else:
            self._log_slow(step, step_s, train_loss, val_loss, lr, data_s, metrics)
        self._step_total += step_s
        if now - self._last_flush > FLUSH_S or len(self._rows) >= FLUSH_BYTES:
            self.flush()

    def _log_slow(self, step, step_s, train_loss, val_loss, lr, data_s, metrics) -> None:
        fixed: list = [float(step), _time(), 0.0, train_loss, val_loss, data_s, step_s, _NAN, lr]
        tensors: list = []
        names: list = []
        for col in (3, 4, 5, 8):
            v = fixed[col]
            if type(v) is float:
                continue
            fixed[col] = self._number(v, STEP_COLUMNS[col], tensors, names, col)
        if fixed[5] == fixed[5]:
            self._data_total += fixed[5]
        extras = None
        if metrics:
            extras = {}
            for key, v in metrics.items():
                extras[key] = (
                    float(v)
                    if type(v) in (float, int)
                    else self._number(v, key, tensors, names, key)
                )
        slot = self._readback.push(tensors) if tensors else None
        if slot is None and not self._pending:
            self._emit(fixed, extras)
            return
        self._pending.append(_Pending(fixed, names, slot, extras))
        self._drain(block=self._readback is not None and self._readback.in_flight >= DEPTH)

    def _number(self, v: Any, name: str, tensors: list, names: list, where: Any) -> float:
        """A float now, or NaN with the tensor queued for the readback."""
        if v is None:
            return _NAN
        if type(v) in (int, bool):
            return float(v)
        if _is_tensor(v):
            if v.numel() != 1:
                raise TrackError(
                    f"cockpit.track: {name} must be a number or a one-element tensor, got a tensor "
                    f"of shape {tuple(v.shape)}; log its mean (.mean()) or one element"
                )
            if v.device.type == "cuda":
                if self._readback is None:
                    self._readback = _Readback(v.device)
                    self._device = str(v.device)
                    self._telemetry.use_cuda(v.device)
                if v.device == self._readback.device and len(tensors) < _Readback.WIDTH:
                    tensors.append(v)
                    names.append(where)
                    return _NAN
            return float(v.detach().item())  # CPU tensors: no device to wait for
        try:
            return float(v)  # numpy scalars, Decimal, ...
        except (TypeError, ValueError):
            raise TrackError(
                f"cockpit.track: {name} must be a number or a one-element tensor, got "
                f"{type(v).__name__} {v!r:.40}"
            ) from None

    def _drain(self, block: bool = False) -> None:
        rb = self._readback
        while self._pending:
            p = self._pending[0]
            if p.slot is not None:
                if not rb.ready(p.slot):
                    if not block:
                        return
                    rb.wait(p.slot)
                for where, value in zip(p.names, rb.take(p.slot, len(p.names))):
                    if isinstance(where, int):
                        p.fixed[where] = value
                    else:
                        p.extras[where] = value
            self._pending.popleft()
            block = False
            self._emit(p.fixed, p.extras)

    def _emit(self, fixed: list, extras: dict | None) -> None:
        self._rows += _pack(*fixed)
        if extras:
            names = tuple(extras)
            if names != self._enames:
                self._new_group(names)
            self._erows.append((fixed[0], fixed[1], *map(float, extras.values())))

    def eval(self, step: int, **metrics: Any) -> None:
        """Full-val results at ``step`` (a row of evals.jsonl): ``accuracy=0.91, val_loss=...``."""
        if self._closed:
            return
        row: dict[str, Any] = {"step": step, "time": round(_time(), 3), "stage": STAGE}
        for key, v in metrics.items():
            if _is_tensor(v) and v.numel() == 1:
                value = float(v.detach().item())  # an eval is rare: a sync here is fine
            else:
                value = v if type(v) is float else self._number(v, key, [], [], key)
            row[key] = clean_number(value)
        self.flush()
        self._evals_out.append(row)

    def flush(self) -> None:
        """Write what was logged (it happens by itself; call it before reading the folder)."""
        if self._readback is not None and threading.current_thread() is threading.main_thread():
            self._drain()
        with self._lock:
            self._last_flush = _perf()
            rows = self._rows
            if rows:
                data = bytes(rows)  # what the other thread appends meanwhile stays for next time
                del rows[: len(data)]
                self._steps_out.write(data)
        if threading.current_thread() is threading.main_thread():
            self._flush_extras()

    def _new_group(self, names: tuple) -> None:
        fmt = self._formats.get(names)
        if fmt is None:
            fmt = self._formats[names] = _row_format(names)
        self._enames, self._erows = names, []
        self._egroups.append((fmt, self._erows))

    def _flush_extras(self) -> None:
        """Named per-step values to evals.jsonl: one %-template per set of names."""
        groups = [(fmt, rows) for fmt, rows in self._egroups if rows]
        if not groups:
            return
        text = "\n".join("\n".join(map(fmt.__mod__, rows)) for fmt, rows in groups) + "\n"
        for _, rows in groups:
            rows.clear()
        self._egroups = [g for g in self._egroups if g[1] is self._erows]
        if "nan" in text or "inf" in text:  # JSON has no NaN: null (%s wrote nan, inf, -inf)
            for bad in (":nan", ":inf", ":-inf"):
                text = text.replace(bad + ",", ":null,").replace(bad + "}", ":null}")
        self._evals_out.write(text.encode())

    # ---- the end -------------------------------------------------------------------
    def finish(self, status: str = "passed", reason: str = "") -> None:
        """End the run: ``passed`` by default (``failed``, ``error`` or ``killed`` also work).
        A run interrupted by Ctrl-C or a signal ends ``killed`` whatever is asked here."""
        if status not in ("passed", "failed", "error", "killed"):
            raise TrackError(
                f"cockpit.track: finish(status={status!r}): expected passed, failed, error or killed"
            )
        if self._interrupted and status in ("passed", "failed"):
            status, reason = "killed", self._interrupted
        self._close(status, reason)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.finish()
        elif issubclass(kind, KeyboardInterrupt):
            self._close("killed", self._interrupted or "interrupted (Ctrl-C)")
        elif issubclass(kind, SystemExit):
            code = exc.code if exc is not None else 0
            if self._interrupted:
                self._close("killed", self._interrupted)
            elif code not in (0, None):
                self._close("failed", f"the script exited with code {code}")
            else:
                self.finish()
        else:
            self._crashed(kind, exc, tb)

    def _crashed(self, kind, exc, tb) -> None:
        text = "".join(traceback.format_exception(kind, exc, tb))
        try:
            with open(self.folder.file("engine.log"), "a") as f:
                f.write(text)
        except OSError:
            pass
        first = (str(exc).strip().splitlines() or [""])[0]
        where = ""
        for frame in reversed(traceback.extract_tb(tb)):
            if "site-packages" not in frame.filename and not frame.filename.startswith("<"):
                where = f" (in {Path(frame.filename).name}:{frame.lineno}, {frame.name})"
                break
        self._close("error", f"crashed: {kind.__name__}: {first}{where} (traceback in engine.log)")

    def _close(self, status: str, reason: str) -> None:
        if self._closed:
            return
        if self._readback is not None:
            try:
                self._drain(block=True)
                while self._pending:
                    self._drain(block=True)
            except Exception:  # a dead CUDA context must not keep the run 'running'
                self._pending.clear()
        self.flush()
        self._flush_extras()  # also when the run ends from another thread
        self._closed = True
        self.status = status
        self._telemetry.stop()
        self._uninstall_handlers()
        self._steps_out.close()
        self._evals_out.close()
        ended = _time()
        summary = self.folder.summary()
        record = self._stage_record(status, reason, ended)
        if record is not None:
            summary["stages"] = [record]
            self._event(
                "stage_end", stage=STAGE, **{k: v for k, v in record.items() if k != "name"}
            )
        summary.update(
            status=status,
            reason=reason,
            ended=ended,
            current_stage=None,
            device=self._device,
        )
        self.folder.write_summary(summary)
        self._event("run_end", status=status, reason=reason)
        if self in _active:
            _active.remove(self)
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # pragma: no cover
            pass

    def _stage_record(self, status: str, reason: str, ended: float) -> dict | None:
        if status == "killed":
            return None  # as the engine: a stopped stage has no verdict
        first = _decode_range(self.folder.file("steps.bin"), 0, 10)
        last = self.folder.last_steps(10)
        metrics: dict[str, Any] = {"steps": self.steps}
        metrics["train_loss_first"] = _mean(first["train_loss"])
        metrics["train_loss_last"] = _mean(last["train_loss"])
        vals = [v for v in last["val_loss"] if v == v]
        metrics["val_loss_last"] = clean_number(vals[-1]) if vals else None
        seconds = ended - self.created
        if status in ("passed",):
            what = f"{self.steps} steps logged in {seconds:.1f} s"
            if metrics["train_loss_first"] is not None and metrics["train_loss_last"] is not None:
                what += (
                    f"; train loss {metrics['train_loss_first']:.4g} → "
                    f"{metrics['train_loss_last']:.4g}"
                )
            verdict, why = "pass", what
        else:
            verdict, why = "fail", reason or status
        return {
            "name": STAGE,
            "status": verdict,
            "reason": why,
            "checks": [],
            "metrics": metrics,
            "seconds": round(seconds, 2),
        }

    # ---- the folder ----------------------------------------------------------------
    def _event(self, name: str, **data: Any) -> None:
        out = JsonlAppender(self.folder.file("events.jsonl"))
        try:
            out.append({"t": round(_time(), 3), "event": name, **data})
        finally:
            out.close()

    def _write_start(self) -> None:
        folder, now = self.folder, self.created
        config = _jsonable(self.config)
        script = sys.argv[0] if sys.argv else ""
        request = {
            "run_id": self.run_id,
            "source": "track",
            "preset_path": None,
            "script": str(Path(script).resolve()) if script and script != "-c" else script,
            "argv": list(sys.argv),
            "config": config,
            "overrides": _flatten(config),
            "stages": [STAGE],
            "parent": None,
            "fork_step": None,
            "warm_from": None,
            "group": None,
            "created": now,
            "cwd": os.getcwd(),
        }
        write_json_atomic(folder.file("run.json"), request)
        write_bytes_private(
            folder.file("preset.yaml"),
            (
                "# cockpit.track: the config the script passed to track.start (not a preset)\n"
                + f"name: {json.dumps(self.name)}\n"
                + _yaml(config)
            ).encode(),
        )
        folder.write_steps_header()
        pid = os.getpid()
        try:
            import psutil

            created = psutil.Process(pid).create_time()
        except Exception:
            created = 0.0
        proc = {"pid": pid, "create_time": created, "host": socket.gethostname(), "kind": "script"}
        try:
            if os.getpgid(0) == pid:  # only a group of our own may be killed as a group
                proc["pgid"] = pid
        except OSError:
            pass
        write_json_atomic(folder.file("proc.json"), proc)
        folder.write_summary(
            {
                "run_id": self.run_id,
                "preset": self.name,
                "status": "running",
                "parent": None,
                "fork_step": None,
                "overrides": _flatten(config),
                "stages": [],
                "stage_names": [STAGE],
                "group": None,
                "created": now,
                "started": now,
                "current_stage": STAGE,
                "device": self._device,
                "source": "track",
                "pid": pid,
                "host": socket.gethostname(),
            }
        )
        self._event("run_start", pid=pid, source="track")
        self._event("stage_start", stage=STAGE, index=0)

    # ---- signals, crashes, exit ----------------------------------------------------
    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python takes signal handlers only in the main thread
        for sig in _SIGNALS:
            try:
                self._saved_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
            except (ValueError, OSError):
                self._saved_handlers.pop(sig, None)
        self._saved_excepthook = sys.excepthook
        sys.excepthook = self._excepthook

    def _uninstall_handlers(self) -> None:
        for sig, previous in self._saved_handlers.items():
            try:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._saved_handlers = {}
        if self._saved_excepthook is not None and sys.excepthook == self._excepthook:
            sys.excepthook = self._saved_excepthook
        self._saved_excepthook = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        previous = self._saved_handlers.get(signum, signal.SIG_DFL)
        if previous == signal.SIG_IGN:
            return
        if os.getpid() != self._pid:  # a forked child (a DataLoader worker): not our run
            if callable(previous):
                previous(signum, frame)
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        self._interrupted = {
            "SIGINT": "interrupted (Ctrl-C)",
            "SIGTERM": "stopped by SIGTERM (cockpit kill?)",
            "SIGHUP": "stopped by SIGHUP (the terminal went away)",
        }.get(name, f"stopped by {name}")
        if signum != getattr(signal, "SIGINT", None) or previous in (None, signal.SIG_DFL):
            self._close("killed", self._interrupted)
        if callable(previous):
            previous(signum, frame)  # Python's own SIGINT handler raises KeyboardInterrupt
            return
        if signum == getattr(signal, "SIGINT", None):
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)  # unlike the default, `finally` blocks and atexit run

    def _excepthook(self, kind, exc, tb) -> None:
        hook = self._saved_excepthook or sys.__excepthook__
        for run in list(_active) if os.getpid() == self._pid else ():
            if issubclass(kind, KeyboardInterrupt):
                run._close("killed", run._interrupted or "interrupted (Ctrl-C)")
            else:
                run._crashed(kind, exc, tb)
        hook(kind, exc, tb)

    def _at_exit(self) -> None:
        if not self._closed and os.getpid() == self._pid:
            if self._interrupted:
                self._close("killed", self._interrupted)
            else:
                self.finish(reason="the script ended without calling run.finish()")


def _row_format(names: tuple) -> str:
    """A %-template of one per-step metrics line of evals.jsonl for these names."""
    body = "".join("," + json.dumps(str(k)).replace("%", "%%") + ":%s" for k in names)
    return '{"step":%d,"time":%.3f,"stage":"' + STAGE + '","kind":"step"' + body + "}"


def _forget_runs_in_child() -> None:
    """After fork (DataLoader workers): the child's copies of the runs write nothing."""
    for run in _active:
        run._closed = True
    _active.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_runs_in_child)


def _mean(values) -> float | None:
    xs = [v for v in values if v == v and abs(v) != math.inf]
    return clean_number(sum(xs) / len(xs)) if xs else None


def _decode_range(path: Path, start: int, n: int) -> dict:
    from engine.torchfree.runfolder import decode_steps, open_regular

    try:
        with open_regular(path) as f:  # a FIFO in its place would block forever
            f.seek(start * RECORD_SIZE)
            raw = f.read(n * RECORD_SIZE)
    except OSError:
        raw = b""
    return decode_steps(raw).columns


def _yaml(config: dict) -> str:
    """The config as YAML (JSON is YAML; pyyaml, when it is there, reads better)."""
    if not config:
        return "config: {}\n"
    try:
        import yaml

        return yaml.safe_dump({"config": config}, sort_keys=False, default_flow_style=False)
    except Exception:
        return "config: " + json.dumps(config) + "\n"


class _Telemetry(threading.Thread):
    """About once a second: CPU, RAM, RSS, steps and data-wait share, and NVML once the
    script uses CUDA — the engine's telemetry.jsonl format. Also flushes logged rows."""

    def __init__(self, run: Run, interval: float = 1.0):
        super().__init__(name="cockpit-track-telemetry", daemon=True)
        self.run_ = run
        self.interval = interval
        self.halt = threading.Event()
        self.out = JsonlAppender(run.folder.file("telemetry.jsonl"))
        self.nvml: Any = None
        self.gpu: Any = None
        self.gpu_index: int | None = None
        self.nvml_tried = False
        self.cuda_device: Any = None
        self.seen = (0.0, 0.0, 0)
        try:
            import psutil

            self.psutil = psutil
            self.proc = psutil.Process()
            psutil.cpu_percent(None)
        except Exception:  # pragma: no cover - psutil is a dependency
            self.psutil = None
        self._maybe_nvml()
        row: dict[str, Any] = {"t": _time(), "kind": "header", "gpu_index": self.gpu_index}
        if self.gpu is None:
            row["gpu_note"] = self.note or "no CUDA device in use (yet): CPU and RAM only"
        else:
            row["gpu_name"] = self.gpu_name
        self.out.append(row)

    note: str | None = None
    gpu_name: str | None = None

    def use_cuda(self, device: Any) -> None:
        self.cuda_device = device

    def _maybe_nvml(self) -> None:
        """NVML for the CUDA device the script uses, once torch has initialised CUDA."""
        if self.gpu is not None or self.nvml_tried:
            return
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if not torch.cuda.is_initialized():
                return
            device = self.cuda_device
            index = device.index if device is not None and device.index is not None else None
            if index is None:
                index = torch.cuda.current_device()
            uuid = str(torch.cuda.get_device_properties(index).uuid)
        except Exception:
            return
        self.nvml_tried = True
        from engine.torchfree.nvml import Nvml  # the project's one NVML session

        nvml = Nvml()
        if not nvml.ok:  # not installed, no library, no driver
            self.note = nvml.error
            nvml.close()
            return
        self.nvml = nvml
        try:
            self.gpu = nvml.handle(
                index=index, uuid=uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            )
            self.gpu_index = nvml.index(self.gpu)
            self.gpu_name = nvml.name(self.gpu)
        except Exception as e:
            self.note = f"NVML has no handle for cuda:{index}: {e}"
            self.gpu = None

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                if self.run_._rows:
                    self.run_.flush()
                self.sample()
            except Exception:  # telemetry must never take the script down
                continue

    def sample(self) -> None:
        run = self.run_
        self._maybe_nvml()
        data, total, steps = run._data_total, run._step_total, run.steps
        d0, t0, s0 = self.seen
        self.seen = (data, total, steps)
        row: dict[str, Any] = {"t": round(_time(), 3)}
        ps = self.psutil
        if ps is not None:
            row["cpu"] = ps.cpu_percent(None)
            row["ram"] = ps.virtual_memory().percent
            row["rss_mb"] = round(self._tree_rss() / 2**20, 1)
        row["steps"] = steps - s0
        row["data_wait"] = round((data - d0) / (total - t0), 4) if total - t0 > 0 else None
        if self.gpu is not None:
            gpu: dict[str, Any] = self.nvml.sample(self.gpu)
            gpu["index"] = self.gpu_index
            row["gpu"] = gpu
        self.out.append(row)

    def _tree_rss(self) -> int:
        ps = self.psutil
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except ps.Error:
            procs = [self.proc]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except ps.Error:
                pass
        return total

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2 * self.interval + 1)
        if self.nvml is not None:
            self.nvml.close()
            self.nvml = None
        self.out.close()
