"""The run folder: the only interface between the engine and everything that watches it.

Torch-free, so the terminal app, ``cockpit ls`` and users' scripts can read runs. Layout
(see README, "The run folder"):

    <workspace>/<run_id>/
      summary.json      Contract 3; rewritten atomically as stages land
      run.json          what was asked: preset path, overrides, stages, parent, warm start, gpus
      preset.yaml       the resolved preset (file + overrides)
      steps.bin         one float64 record per optimizer step (columns in steps.json)
      steps.json        the record layout of steps.bin
      evals.jsonl       full-val metrics, one JSON object per evaluation
      telemetry.jsonl   ~1 Hz: GPU (NVML) and CPU/RAM (psutil) samples, data-wait share
      events.jsonl      lifecycle: run_start, stage_start, stage_end, error, run_end
      engine.log        the engine's stdout and stderr; a crash's traceback lands here
      proc.json         pid, process start time and host of the engine (to signal it safely)
      checkpoints/      step_<N>.pt and latest.json

Every append is one ``os.write`` of whole records or lines, so a reader never needs a lock:
it reads whole records up to the end of the file and keeps the byte offset for next time. A
killed engine loses nothing that was logged (the bytes are in the kernel already).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import struct
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP_COLUMNS = (
    "step",  # optimizer step within its stage (continues the parent's count after a warm fork)
    "time",  # unix time when the step's values were produced
    "stage",  # index into summary.json's "stage_names"
    "train_loss",
    "val_loss",  # loss on a random val batch (NaN on steps without one)
    "data_s",  # seconds the loop waited on the data loader
    "step_s",  # seconds of the whole step on the host, data wait included
    "gpu_s",  # seconds the device spent on the step (CUDA events; NaN on CPU)
    "lr",
)
_RECORD = struct.Struct("<" + "d" * len(STEP_COLUMNS))
RECORD_SIZE = _RECORD.size

LIVE = ("queued", "running")
FINAL = ("passed", "failed", "error", "killed")
WORKSPACE_ENV = "COCKPIT_WORKSPACE"


def resolve_workspace(arg: str | os.PathLike | None = None) -> Path:
    """``--workspace DIR``, else ``$COCKPIT_WORKSPACE``, else ``./runs``."""
    return Path(arg or os.environ.get(WORKSPACE_ENV) or "runs")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Temp file in the same folder, fsync, rename over, fsync the folder."""
    data = (json.dumps(obj, indent=1, default=_json_default) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def clean_number(x: float) -> float | None:
    """JSON has no NaN: non-finite numbers are stored as null."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def new_run_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"{slug[:40]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Appender:
    """Append-only file written with one ``os.write`` per record (never a torn line)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class JsonlAppender(Appender):
    def append(self, obj: dict) -> None:
        self.write((json.dumps(obj, separators=(",", ":"), default=_json_default) + "\n").encode())


class StepsAppender(Appender):
    def append(self, *values: float) -> None:
        self.write(_RECORD.pack(*values))

    def append_many(self, rows: list[tuple]) -> None:
        if rows:
            self.write(b"".join(_RECORD.pack(*r) for r in rows))


# ---------------------------------------------------------------- incremental readers


class JsonlTail:
    """Reads only the bytes added since the last call; a half-written last line waits."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in chunk[: end + 1].splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out


@dataclass
class StepColumns:
    """Per-step columns as ``array('d')``: cheap to extend, index and slice."""

    columns: dict[str, array] = field(default_factory=lambda: {c: array("d") for c in STEP_COLUMNS})

    def __len__(self) -> int:
        return len(self.columns["step"])

    def __getitem__(self, name: str) -> array:
        return self.columns[name]

    def extend(self, other: StepColumns) -> None:
        for name, col in other.columns.items():
            self.columns[name].extend(col)


def decode_steps(raw: bytes, columns: tuple[str, ...] = STEP_COLUMNS) -> StepColumns:
    n = len(columns)
    flat = array("d")
    flat.frombytes(raw[: len(raw) - len(raw) % (8 * n)])
    if flat.itemsize != 8:  # pragma: no cover - every platform we run on
        raise RuntimeError("float64 array items are not 8 bytes here")
    if struct.pack("=d", 1.0) != struct.pack("<d", 1.0):  # pragma: no cover - big-endian hosts
        flat.byteswap()
    return StepColumns({name: flat[i::n] for i, name in enumerate(columns)})


class StepsTail:
    """Incremental reader of steps.bin: only whole records, only new bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.columns = STEP_COLUMNS
        header = read_json(path.with_suffix(".json"))
        if header and isinstance(header.get("columns"), list):
            self.columns = tuple(header["columns"])
        self.record = 8 * len(self.columns)

    def read_new(self) -> StepColumns:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        whole = len(raw) - len(raw) % self.record
        self.offset += whole
        cols = decode_steps(raw[:whole], self.columns)
        if self.columns != STEP_COLUMNS:  # an older layout: keep our names, fill the gaps
            size = len(cols.columns[self.columns[0]])
            cols = StepColumns(
                {c: cols.columns.get(c, array("d", [math.nan]) * size) for c in STEP_COLUMNS}
            )
        return cols


@dataclass
class RunSnapshot:
    """One run at a glance (what `cockpit ls` and the runs panel show)."""

    run_id: str
    path: Path
    preset: str
    status: str
    reason: str = ""
    stage: str = ""
    verdicts: list[tuple[str, str]] = field(default_factory=list)
    stage_names: list[str] = field(default_factory=list)
    created: float = 0.0
    ended: float | None = None
    parent: str | None = None
    fork_step: int | None = None
    group: str | None = None
    overrides: dict = field(default_factory=dict)
    queue: str | None = None
    device: str | None = None
    step: int = 0
    train_loss: float = math.nan
    val_loss: float = math.nan
    metric_name: str = ""
    metric: float = math.nan
    data_wait: float = math.nan
    gpu_util: float = math.nan
    last_time: float | None = None

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "path"}
        out["path"] = str(self.path)
        out["verdicts"] = [list(v) for v in self.verdicts]
        return {k: clean_number(v) if isinstance(v, float) else v for k, v in out.items()}


# ---------------------------------------------------------------- the folder


def process_alive(proc: dict | None) -> bool | None:
    """True/False for a recorded engine process; None when it runs on another host."""
    if not proc or "pid" not in proc:
        return False
    if proc.get("host") and proc["host"] != socket.gethostname():
        return None
    import psutil

    try:
        p = psutil.Process(int(proc["pid"]))
        if abs(p.create_time() - float(proc.get("create_time", 0))) > 1.0:
            return False  # the pid was reused by another process
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


class RunFolder:
    """One run's folder; reading needs nothing but the standard library and psutil."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    # reading -------------------------------------------------------------
    def summary(self) -> dict:
        return read_json(self.file("summary.json")) or {}

    def request(self) -> dict:
        return read_json(self.file("run.json")) or {}

    def proc(self) -> dict | None:
        return read_json(self.file("proc.json"))

    def preset_text(self) -> str:
        try:
            return self.file("preset.yaml").read_text()
        except FileNotFoundError:
            return ""

    def state(self) -> dict:
        """The summary, with a dead engine's 'running' turned into 'error'."""
        s = self.summary()
        # no proc.json yet: the launcher is between creating the folder and starting the engine
        started = self.file("proc.json").exists() or time.time() - s.get("created", 0) > 30
        if s.get("status") in LIVE and started and process_alive(self.proc()) is False:
            s = dict(s)
            s["status"] = "error"
            s["reason"] = (
                "the engine process is gone without a word (killed -9, or out of memory?); see engine.log"
            )
        return s

    def steps(self) -> StepColumns:
        return StepsTail(self.file("steps.bin")).read_new()

    def evals(self) -> list[dict]:
        return JsonlTail(self.file("evals.jsonl")).read_new()

    def telemetry(self) -> list[dict]:
        return JsonlTail(self.file("telemetry.jsonl")).read_new()

    def events(self) -> list[dict]:
        return JsonlTail(self.file("events.jsonl")).read_new()

    def log_tail(self, max_bytes: int = 64_000) -> str:
        try:
            with open(self.file("engine.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def last_steps(self, n: int = 64) -> StepColumns:
        """The last n step records, reading only the end of the file."""
        path = self.file("steps.bin")
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                whole = size - size % RECORD_SIZE
                start = max(0, whole - n * RECORD_SIZE)
                f.seek(start)
                raw = f.read(whole - start)
        except FileNotFoundError:
            raw = b""
        return decode_steps(raw)

    def _last_jsonl(self, name: str, max_bytes: int = 8192) -> dict | None:
        try:
            with open(self.file(name), "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_bytes))
                chunk = f.read()
        except FileNotFoundError:
            return None
        for line in reversed(chunk.splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        return None

    def last_eval(self) -> dict | None:
        return self._last_jsonl("evals.jsonl")

    def last_telemetry(self) -> dict | None:
        row = self._last_jsonl("telemetry.jsonl")
        return row if row and row.get("kind") != "header" else None

    def snapshot(self) -> RunSnapshot:
        """Everything a runs table shows, read from the ends of the files only."""
        s = self.state()
        req_stages = s.get("stage_names") or []
        tail = self.last_steps(64)
        snap = RunSnapshot(
            run_id=self.run_id,
            path=self.path,
            preset=s.get("preset", "?"),
            status=s.get("status", "?"),
            reason=s.get("reason") or "",
            stage=s.get("current_stage") or (s["stages"][-1]["name"] if s.get("stages") else ""),
            verdicts=[(st.get("name", "?"), st.get("status", "?")) for st in s.get("stages", [])],
            stage_names=list(req_stages),
            created=s.get("created") or 0.0,
            ended=s.get("ended"),
            parent=s.get("parent"),
            fork_step=s.get("fork_step"),
            group=s.get("group"),
            overrides=s.get("overrides") or {},
            queue=s.get("queue"),
            device=s.get("device"),
        )
        if len(tail):
            snap.step = int(tail["step"][-1])
            snap.train_loss = tail["train_loss"][-1]
            vals = [v for v in tail["val_loss"] if not math.isnan(v)]
            snap.val_loss = vals[-1] if vals else math.nan
            total = sum(tail["step_s"])
            snap.data_wait = sum(tail["data_s"]) / total if total > 0 else math.nan
            snap.last_time = tail["time"][-1]
        ev = self.last_eval()
        if ev:
            for key in ("accuracy", "miou", "mae"):
                if ev.get(key) is not None:
                    snap.metric_name, snap.metric = key, float(ev[key])
                    break
        tel = self.last_telemetry()
        if tel and isinstance(tel.get("gpu"), dict) and tel["gpu"].get("util") is not None:
            snap.gpu_util = float(tel["gpu"]["util"])
        return snap

    def latest_checkpoint(self) -> dict | None:
        info = read_json(self.file("checkpoints") / "latest.json")
        if info and (self.file("checkpoints") / info.get("file", "")).is_file():
            info["path"] = str(self.file("checkpoints") / info["file"])
            return info
        return None

    # writing (the engine, and the launcher for the first summary) ----------
    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.file("summary.json"), summary)

    def write_steps_header(self) -> None:
        write_json_atomic(
            self.file("steps.json"),
            {
                "format": "little-endian float64 records, one per optimizer step",
                "record_bytes": RECORD_SIZE,
                "columns": list(STEP_COLUMNS),
            },
        )


def iter_runs(workspace: Path) -> Iterator[RunFolder]:
    """Run folders of a workspace, oldest first."""
    try:
        entries = list(os.scandir(workspace))
    except FileNotFoundError:
        return
    found = []
    for e in entries:
        if e.is_dir() and os.path.exists(os.path.join(e.path, "summary.json")):
            found.append(e.path)
    found.sort(
        key=lambda p: (
            os.path.getmtime(os.path.join(p, "run.json"))
            if os.path.exists(os.path.join(p, "run.json"))
            else 0,
            p,
        )
    )
    for p in found:
        yield RunFolder(p)


def find_run(workspace: Path, ref: str) -> RunFolder:
    """A run by id, unique id prefix, or path; raises LookupError with a helpful message."""
    p = Path(ref)
    if (p / "summary.json").exists():
        return RunFolder(p)
    runs = [r for r in iter_runs(workspace)]
    exact = [r for r in runs if r.run_id == ref]
    if exact:
        return exact[0]
    prefix = [r for r in runs if r.run_id.startswith(ref)]
    if len(prefix) == 1:
        return prefix[0]
    if len(prefix) > 1:
        names = ", ".join(r.run_id for r in prefix[:5])
        raise LookupError(
            f"'{ref}' matches {len(prefix)} runs in {workspace} ({names}); give more of the id."
        )
    raise LookupError(
        f"no run '{ref}' in {workspace}"
        + (f"; the latest is {runs[-1].run_id}" if runs else " (the workspace has no runs)")
        + " — `cockpit ls` lists them."
    )
