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

import contextlib
import errno
import json
import math
import os
import re
import secrets
import socket
import stat
import struct
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.torchfree.regular import open_regular, read_regular
from engine.torchfree.status import Run as RunStatus
from engine.torchfree.tasks import MAIN_METRIC

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

LIVE = RunStatus.LIVE
FINAL = RunStatus.FINAL
WORKSPACE_ENV = "COCKPIT_WORKSPACE"


def resolve_workspace(arg: str | os.PathLike | None = None) -> Path:
    """``--workspace DIR``, else ``$COCKPIT_WORKSPACE``, else ``./runs``."""
    return Path(arg or os.environ.get(WORKSPACE_ENV) or "runs")


class WorkspaceError(Exception):
    """The workspace cannot hold runs; the message says why and what to do. ``code`` is the
    exit code: 2 for a wrong --workspace, 1 for a full disk or a failed write."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _source(workspace: Path) -> str:
    return f"the workspace {workspace}"


def check_workspace(workspace: Path) -> Path:
    """For readers: a workspace that exists must be a folder we can list."""
    workspace = Path(workspace)
    try:
        if workspace.exists() and not workspace.is_dir():
            raise WorkspaceError(
                f"{_source(workspace)} is a file, not a folder; give --workspace a folder."
            )
        if workspace.is_dir() and not os.access(workspace, os.R_OK | os.X_OK):
            raise WorkspaceError(f"{_source(workspace)} cannot be read (no permission).")
    except (OSError, ValueError) as e:
        raise WorkspaceError(f"{_source(workspace)} cannot be used: {e}.") from None
    return workspace


def prepare_workspace(workspace: Path) -> Path:
    """For writers: the workspace as a folder we can write, created if need be — private to
    its owner (0700) unless sharing says 'group' (02770, see ``sharing``)."""
    workspace = check_workspace(workspace)
    try:
        mode = SHARE_MODES[sharing(workspace)][0]
    except ValueError as e:
        raise WorkspaceError(str(e)) from None
    if not workspace.exists():
        try:
            workspace.mkdir(parents=True, mode=0o700)
            os.chmod(workspace, mode)
        except FileExistsError:
            pass
        except OSError as e:
            code = 1 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 2
            raise WorkspaceError(
                f"cannot create {_source(workspace)}: {write_error(e, workspace)}.", code
            ) from None
    probe = workspace / f".probe.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        code = 1 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 2
        raise WorkspaceError(
            f"cannot write into {_source(workspace)}: {write_error(e, workspace)}.", code
        ) from None
    return workspace


RESERVE = ".reserve.tmp"
RESERVE_BYTES = 256 << 10
"""Room a run keeps for its last words: on a full disk the engine frees it, then writes its
final summary (status error, 'no space left on device on ...')."""


def release_reserve(folder: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(Path(folder) / RESERVE)


SHARE_ENV = "COCKPIT_SHARE"
SHARE_MODES = {"private": (0o700, 0o600), "group": (0o2770, 0o640)}
"""Workspace folder and file modes per sharing setting (run folders: the workspace's, group
read-only). Files are as private as the folder they are written into (see file_mode)."""
RUN_DIR_MODES = {"private": 0o700, "group": 0o2750}


def sharing(workspace: Path) -> str:
    """'private' (the default) or 'group': ``$COCKPIT_SHARE``, else ``share:`` in the
    workspace's cockpit.yaml. ValueError with a sentence on anything else."""
    raw = (os.environ.get(SHARE_ENV) or "").strip()
    where = f"${SHARE_ENV}"
    if not raw:
        config = Path(workspace) / "cockpit.yaml"
        try:
            import yaml

            data = yaml.safe_load(config.read_bytes()[:65536].decode())
        except Exception:  # missing or broken (the slot settings report a broken file): private
            data = None
        if isinstance(data, dict) and data.get("share") is not None:
            raw, where = str(data["share"]), f"{config}: share"
    if not raw:
        return "private"
    if raw not in SHARE_MODES:
        raise ValueError(
            f"{where} is {raw!r}: expected private (only you can read your runs) or group "
            "(your group can read them)."
        )
    return raw


def file_mode(folder: Path) -> int:
    """A new file's mode: the read/write bits of the folder it goes into (0700 -> 0600)."""
    try:
        return os.stat(folder).st_mode & 0o666
    except OSError:
        return 0o600


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a full disk raises OSError instead of a short write)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than returning 0 on a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def write_bytes_private(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with the folder's file mode (not the umask's 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode(path.parent))
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Temp file in the same folder, fsync, rename over, fsync the folder. On a write error
    (a full disk) the temp file is removed and the old file stays as it was."""
    data = (json.dumps(obj, indent=1, default=_json_default) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode(path.parent))
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _named(e, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)  # so that the rename itself survives a power cut


def _named(e: OSError, path: Path) -> OSError:
    """The same error with the file it was about (os.write's errors name none)."""
    if e.filename is not None and not str(e.filename).endswith(".tmp"):
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))


def _fsync_folder(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
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


MAX_JSON_BYTES = 16 << 20  # a summary of a long ladder is tens of kB; more is not ours


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when the file is missing or is not one."""
    value, _problem = read_json_checked(path)
    return value


def read_json_checked(path: Path) -> tuple[dict | None, str | None]:
    """(the JSON object, None), or (None, why not) — never an exception. A missing file is
    (None, None): it may simply not be written yet."""
    name = path.name
    try:
        raw = read_regular(path, MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{name} cannot be read ({e.strerror or e})"
    if len(raw) > MAX_JSON_BYTES:
        return None, f"{name} is larger than {MAX_JSON_BYTES >> 20} MB"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"{name} is not UTF-8 text (byte {e.start})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        what = (
            "is empty"
            if not text.strip()
            else f"is not valid JSON (line {e.lineno}, column {e.colno})"
        )
        return None, f"{name} {what}"
    except (ValueError, RecursionError):
        return None, f"{name} is not valid JSON"
    if not isinstance(value, dict):
        return None, f"{name} holds {_json_kind(value)}, not a JSON object"
    return value, None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The summary's fields and what each must be; a field of the wrong type is dropped (readers
# fall back to its default) and the run shows as unreadable, with the field named.
_SUMMARY_FIELDS: dict[str, tuple[str, Any]] = {
    "run_id": ("text", lambda v: isinstance(v, str)),
    "preset": ("text", lambda v: isinstance(v, str)),
    "status": ("text", lambda v: isinstance(v, str)),
    "reason": ("text or null", lambda v: v is None or isinstance(v, str)),
    "parent": ("text or null", lambda v: v is None or isinstance(v, str)),
    "fork_step": ("an integer or null", lambda v: v is None or (_is_number(v) and v == int(v))),
    "overrides": ("an object", lambda v: isinstance(v, dict)),
    "stages": (
        "a list of objects",
        lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    ),
    "stage_names": (
        "a list of names",
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    ),
    "created": ("a number", _is_number),
    "started": ("a number or null", lambda v: v is None or _is_number(v)),
    "ended": ("a number or null", lambda v: v is None or _is_number(v)),
    "current_stage": ("text or null", lambda v: v is None or isinstance(v, str)),
    "group": ("text or null", lambda v: v is None or isinstance(v, str)),
    "queue": ("text or null", lambda v: v is None or isinstance(v, str)),
    "queue_position": ("a number or null", lambda v: v is None or _is_number(v)),
    "device": ("text or null", lambda v: v is None or isinstance(v, str)),
    "host": ("text or null", lambda v: v is None or isinstance(v, str)),
}
STATUSES = RunStatus.ALL


def check_summary(raw: dict) -> tuple[dict, str | None]:
    """(the summary without its wrongly typed fields, what was wrong or None)."""
    clean, problems = {}, []
    for key, value in raw.items():
        spec = _SUMMARY_FIELDS.get(key)
        if spec is not None and not spec[1](value):
            problems.append(f"'{key}' is {_json_kind(value)}, expected {spec[0]}")
            continue
        clean[key] = value
    if "stages" in clean:
        for st in clean["stages"]:
            for key in ("name", "status", "reason"):
                if key in st and not isinstance(st[key], str):
                    problems.append(f"a stage's '{key}' is {_json_kind(st[key])}, expected text")
                    st.pop(key)
    status = clean.get("status")
    if status is not None and status not in STATUSES:
        problems.append(f"'status' is '{status[:40]}', expected one of {', '.join(STATUSES)}")
        clean.pop("status")
    if not problems:
        return clean, None
    return clean, "summary.json: " + "; ".join(problems[:3])


def new_run_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"{slug[:40]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Appender:
    """Append-only file written with one ``os.write`` per record (never a torn line).

    A write that fails half-way (a full disk) is cut back to the last whole record before the
    error goes up, so readers never see a torn line or a misaligned steps.bin."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, file_mode(path.parent))

    def write(self, data: bytes) -> None:
        view, written = memoryview(data), 0
        try:
            while view:
                n = os.write(self.fd, view)
                written += n
                view = view[n:]
        except OSError as e:
            if written:  # take the torn part back out
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
            raise _named(e, self.path) from None

    def close(self) -> None:
        if self.fd != -1:  # closed already: nothing to do
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
            with open_regular(self.path) as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:  # missing, a folder, no permission: nothing to read (yet)
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return _json_lines(chunk[: end + 1].splitlines())


def _json_lines(lines: list[bytes]) -> list[dict]:
    """The lines that are JSON objects; garbage, other JSON types and non-UTF-8 are skipped."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError alike
            continue
        if isinstance(row, dict):
            out.append(row)
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
        cols = header.get("columns") if header else None
        if (
            isinstance(cols, list)
            and 0 < len(cols) <= 256
            and all(isinstance(c, str) for c in cols)
            and len(set(cols)) == len(cols)
        ):
            self.columns = tuple(cols)
        self.record = 8 * len(self.columns)

    def read_new(self) -> StepColumns:
        try:
            with open_regular(self.path) as f:
                f.seek(self.offset)
                raw = f.read()
        except OSError:
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
    slurm_job: str | None = None  # a Slurm run's job id, its last known state and node
    slurm_state: str | None = None
    node: str | None = None
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


def is_pruned(status: str, reason: str | None) -> bool:
    """Killed by a pruning rule: the engine records the rule's reason, starting with 'pruned'
    (engine/torchfree/pruning.py). One rule for the app, `cockpit ls` and `cockpit show`."""
    return status == "killed" and isinstance(reason, str) and reason.lower().startswith("pruned")


def display_status(status: str, reason: str | None) -> str:
    """The status a person reads: 'pruned' for a run a pruning rule killed, else ``status``."""
    return "pruned" if is_pruned(status, reason) else status


# ---------------------------------------------------------------- the folder


def process_alive(proc: dict | None) -> bool | None:
    """True/False for a recorded engine process; None when it runs on another host."""
    proc = check_proc(proc)
    if not proc:
        return False
    if proc.get("host") and proc["host"] != socket.gethostname():
        return None
    import psutil

    try:
        p = psutil.Process(proc["pid"])
        if abs(p.create_time() - float(proc.get("create_time", 0))) > 1.0:
            return False  # the pid was reused by another process
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError, OverflowError):
        return False


def check_proc(proc: Any) -> dict | None:
    """A proc.json / workers.jsonl record with a usable pid, or None: pid an integer > 1,
    create_time a number, pgid (when given) an integer > 1, host (when given) text."""
    if not isinstance(proc, dict):
        return None
    pid, created = proc.get("pid"), proc.get("create_time", 0)
    pgid, host = proc.get("pgid"), proc.get("host")
    ok = (
        isinstance(pid, int)
        and not isinstance(pid, bool)
        and 1 < pid < 1 << 31
        and _is_number(created)
        and (
            pgid is None
            or (isinstance(pgid, int) and not isinstance(pgid, bool) and 1 < pgid < 1 << 31)
        )
        and (host is None or isinstance(host, str))
    )
    return proc if ok else None


CHECKPOINT_NAME = re.compile(r"^step_[0-9]{1,12}\.pt$")


def confined_checkpoint(run_dir: Path, name: Any) -> tuple[Path | None, str | None]:
    """(the checkpoint's path, None) when ``name`` is a ``step_<N>.pt`` regular file right
    inside ``run_dir/checkpoints`` (no symlink, no other folder); else (None, why not)."""
    where = Path(run_dir) / "checkpoints"
    if not isinstance(name, str) or not CHECKPOINT_NAME.match(name):
        shown = name if isinstance(name, str) else _json_kind(name)
        return None, (
            f"{where / 'latest.json'} names {str(shown)[:80]!r}, not a step_<N>.pt file in the "
            "run's own checkpoints folder; refused"
        )
    real_dir = os.path.realpath(where)
    if real_dir != os.path.join(os.path.realpath(run_dir), "checkpoints"):
        return None, f"{where} is a link to {real_dir}, outside the run folder; refused"
    path = where / name
    try:
        st = os.lstat(path)
    except OSError:
        return None, f"{path} does not exist"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{path} is not a regular file (a link or a device); refused"
    return path, None


UNREAD = object()
"""``RunFolder.snapshot``'s "not read yet" for what a caller may hand it (None is a real
answer: no such row)."""


class RunFolder:
    """One run's folder; reading needs nothing but the standard library and psutil."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._files: dict[str, Path] = {}

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        # joined once: the app's watcher asks for the same few paths of every run every tick
        path = self._files.get(name)
        if path is None:
            path = self._files[name] = self.path / name
        return path

    # reading -------------------------------------------------------------
    def summary(self) -> dict:
        """summary.json; what is missing or of the wrong type is left out (never raises)."""
        return self.summary_checked()[0]

    def summary_checked(self) -> tuple[dict, str | None]:
        """(the summary, as far as it is readable; why it is unreadable, or None)."""
        raw, problem = read_json_checked(self.file("summary.json"))
        if raw is None:
            return {}, problem
        return check_summary(raw)

    def request(self) -> dict:
        return read_json(self.file("run.json")) or {}

    def proc(self) -> dict | None:
        return check_proc(read_json(self.file("proc.json")))

    def preset_text(self) -> str:
        """preset.yaml as text; "" when it is missing or unreadable."""
        try:
            return read_regular(self.file("preset.yaml"), MAX_JSON_BYTES).decode(errors="replace")
        except OSError:
            return ""

    def state(self, assume_alive: bool = False) -> dict:
        """The summary, with a dead engine's 'running' turned into 'error', and a summary that
        cannot be read as status 'unreadable' with the reason.

        ``assume_alive``: skip asking the OS whether the engine lives (a caller that watched
        its files move a moment ago, and checks again every few seconds)."""
        s, problem = self.summary_checked()
        if problem:
            return {**s, "status": "unreadable", "reason": problem}
        if self.file("slurm.json").exists():  # a Slurm job: squeue knows, not a local pid
            from engine.torchfree.slurm import job_state

            return job_state(self, s)
        # no proc.json yet: the launcher is between creating the folder and starting the engine
        started = self.file("proc.json").exists() or time.time() - s.get("created", 0) > 30
        if (
            s.get("status") in LIVE
            and started
            and not assume_alive
            and process_alive(self.proc()) is False
        ):
            s = dict(s)
            s["status"] = "error"
            s["reason"] = (
                "the engine process is gone without a word (killed -9, or out of memory?); see engine.log"
            )
            if disk_full(self.path):
                s["reason"] = (
                    f"the engine stopped while the disk was full: no space left on device on "
                    f"{self.path}; free some space and start it again"
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
            with open_regular(self.file("engine.log")) as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def last_steps(self, n: int = 64) -> StepColumns:
        """The last n step records, reading only the end of the file."""
        path = self.file("steps.bin")
        try:
            with open_regular(path) as f:
                size = f.seek(0, os.SEEK_END)
                whole = size - size % RECORD_SIZE
                start = max(0, whole - n * RECORD_SIZE)
                f.seek(start)
                raw = f.read(whole - start)
        except OSError:
            raw = b""
        return decode_steps(raw)

    def _last_jsonl(self, name: str, max_bytes: int = 8192) -> dict | None:
        try:
            with open_regular(self.file(name)) as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_bytes))
                chunk = f.read()
        except OSError:
            return None
        for line in reversed(chunk.splitlines()):
            rows = _json_lines([line])
            if rows:
                return rows[0]
        return None

    def last_eval(self) -> dict | None:
        return self._last_jsonl("evals.jsonl")

    def last_telemetry(self) -> dict | None:
        row = self._last_jsonl("telemetry.jsonl")
        return row if row and row.get("kind") != "header" else None

    def snapshot(
        self, assume_alive: bool = False, last_eval: Any = UNREAD, last_telemetry: Any = UNREAD
    ) -> RunSnapshot:
        """Everything a runs table shows, read from the ends of the files only. Never raises:
        a run whose files cannot be read shows as 'unreadable' with the reason, so one broken
        folder never hides the others. ``assume_alive``: see ``state``; ``last_eval`` and
        ``last_telemetry``: those rows (or None) when the caller has read them already."""
        try:
            return self._snapshot(assume_alive, last_eval, last_telemetry)
        except Exception as e:  # a case the checks below did not foresee: still one row
            return RunSnapshot(
                run_id=self.run_id,
                path=self.path,
                preset="?",
                status="unreadable",
                reason=f"the run folder cannot be read: {type(e).__name__}: {e}"[:300],
            )

    def _snapshot(self, assume_alive: bool, last_eval: Any, last_telemetry: Any) -> RunSnapshot:
        s = self.state(assume_alive)
        req_stages = s.get("stage_names") or []
        tail = self.last_steps(64)
        last_stage = s["stages"][-1].get("name", "") if s.get("stages") else ""
        snap = RunSnapshot(
            run_id=self.run_id,
            path=self.path,
            preset=s.get("preset", "?"),
            status=s.get("status", "?"),
            reason=s.get("reason") or "",
            stage=s.get("current_stage") or last_stage,
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
            slurm_job=s.get("slurm_job"),
            slurm_state=s.get("slurm_state"),
            node=s.get("node") or s.get("slurm_node"),
        )
        if snap.slurm_job:  # the app shows `device`: say where the job runs
            where = f" on {snap.node}" if snap.node else ""
            snap.device = f"{snap.device or 'Slurm'}{where} · job {snap.slurm_job}"
        elif s.get("host") and s["host"] != socket.gethostname():  # a shared workspace
            snap.device = f"{snap.device or '?'} on {s['host']}"
        if len(tail):
            step = tail["step"][-1]
            snap.step = int(step) if math.isfinite(step) and 0 <= step < 2**53 else 0
            snap.train_loss = tail["train_loss"][-1]
            vals = [v for v in tail["val_loss"] if not math.isnan(v)]
            snap.val_loss = vals[-1] if vals else math.nan
            total = sum(tail["step_s"])
            snap.data_wait = sum(tail["data_s"]) / total if total > 0 else math.nan
            last_time = tail["time"][-1]
            snap.last_time = last_time if math.isfinite(last_time) else None
        ev = self.last_eval() if last_eval is UNREAD else last_eval
        if ev:
            for key in MAIN_METRIC.values():
                if _is_number(ev.get(key)):
                    snap.metric_name, snap.metric = key, float(ev[key])
                    break
        tel = self.last_telemetry() if last_telemetry is UNREAD else last_telemetry
        if tel and isinstance(tel.get("gpu"), dict) and _is_number(tel["gpu"].get("util")):
            snap.gpu_util = float(tel["gpu"]["util"])
        return snap

    def latest_checkpoint(self) -> dict | None:
        """latest.json with the checkpoint's ``path``; None when there is none, or when it
        points anywhere but a file of this run's own checkpoints/ (see checked_checkpoint)."""
        return self.checked_checkpoint()[0]

    def checked_checkpoint(self) -> tuple[dict | None, str | None]:
        """(latest.json with ``path``, None), or (None, why there is none or it is refused)."""
        latest = self.file("checkpoints") / "latest.json"
        info, problem = read_json_checked(latest)
        if info is None:
            return None, problem or f"{latest} does not exist"
        path, problem = confined_checkpoint(self.path, info.get("file"))
        if path is None:
            return None, problem
        step = info.get("step")
        if "step" in info and not (_is_int(step) and 0 <= step < 2**53):
            return None, f"{latest}: 'step' is {_json_kind(step)}, expected a whole number ≥ 0"
        return {**info, "path": str(path)}, None

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
    """Run folders of a workspace, oldest first; an unreadable workspace has none."""
    try:
        entries = list(os.scandir(workspace))
    except (OSError, ValueError):
        return
    found = []
    for e in entries:
        try:
            if e.is_dir() and os.path.exists(os.path.join(e.path, "summary.json")):
                found.append(e.path)
        except OSError:
            continue
    found.sort(key=lambda p: (_mtime(os.path.join(p, "run.json")), p))
    for p in found:
        yield RunFolder(p)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def disk_full(path: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system holding ``path`` has less than ``margin`` bytes left."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def is_disk_error(e: BaseException) -> bool:
    """A full disk, an exceeded quota or a read-only file system: the machine's fault."""
    return isinstance(e, OSError) and e.errno in DISK_ERRNOS


def write_error(e: OSError, path: Any = None) -> str:
    """One sentence for a failed write: 'no space left on device on <path>' and the like."""
    where = path or e.filename or "the run folder"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} on {where}; free some space (or point --workspace at another disk)"
    if e.errno == errno.EROFS:
        return f"{where} is on a read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write {where}"
    return f"writing {where} failed: {e.strerror or e}"


def remove_temp_files(folder: Path, pid: int | None = None) -> int:
    """Delete the half-written temp files (``.*.tmp``) a dead or failed writer left in a run
    folder and its checkpoints, and the run's reserve; returns how many. With ``pid``, only
    that process's temp files. Readers never look at them."""
    removed = 0
    for d in (Path(folder), Path(folder) / "checkpoints"):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            ours = pid is None or f".{pid}." in name or name == RESERVE
            if ours and name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(d / name)
                    removed += 1
    return removed


def find_run(workspace: Path, ref: str) -> RunFolder:
    """A run by id, unique id prefix, or path; raises LookupError with a helpful message.

    An empty or blank reference (an unset shell variable) is refused: as a prefix it would
    match every run."""
    if not isinstance(ref, str) or not ref.strip():
        raise LookupError(
            "an empty run reference matches nothing (an unset shell variable?); give a run id "
            "or a unique prefix — `cockpit ls` lists them."
        )
    if any(ord(c) < 32 or c == "\x7f" for c in ref):
        raise LookupError(
            f"{ref!r} is not a run id (it holds control characters); `cockpit ls` lists them."
        )
    if ref != ref.strip():
        raise LookupError(f"'{ref}' has spaces around it; no run id does — give it without them.")
    p = Path(ref)
    try:
        if (p / "summary.json").is_file():  # a run folder's path
            return RunFolder(p)
    except (OSError, ValueError):  # a name too long to be a path: an id, or nothing
        pass
    runs = [r for r in iter_runs(workspace)]
    exact = [r for r in runs if r.run_id == ref]
    if exact:
        return exact[0]
    prefix = [r for r in runs if r.run_id.startswith(ref)]
    if len(prefix) == 1:
        return prefix[0]
    if prefix:  # more than one
        names = ", ".join(r.run_id for r in prefix[:5])
        raise LookupError(
            f"'{ref}' matches {len(prefix)} runs in {workspace} ({names}); give more of the id."
        )
    raise LookupError(
        f"no run '{ref}' in {workspace}"
        + (f"; the latest is {runs[-1].run_id}" if runs else " (the workspace has no runs)")
        + " — `cockpit ls` lists them."
    )
