"""Device slots: which GPUs (or CPU slots) a run may use, and the queue for them.

The engine process itself waits here, before importing torch, so a queued run costs almost
nothing and needs no scheduler daemon and no open terminal app. All state lives in
``<workspace>/.slots/<host>/`` (GPUs belong to a machine, even when the workspace is shared):

- A slot is a lock file (``gpu-3.lock``, ``cpu-0.lock``) that the engine holds with ``flock``
  for its whole life. The kernel drops the lock when the process dies (SIGKILL and the OOM
  killer included), so a lease is never stale. The holder writes who it is into the file.
- A queued run holds a ticket in ``queue/``, a locked file named by the run's creation time:
  the queue is FIFO by creation, and a ticket whose lock can be taken belongs to a dead engine
  and is swept away. The launcher puts an unlocked ``.new`` ticket there before it starts the
  engine, so a run started a moment later can never overtake it while its engine boots.
- A run of an ablation started with ``--parallel N`` first takes one of N group tokens
  (``groups/<group>/token-<i>.lock``); only then does it line up for a device.
- Decisions are made under ``mutex.lock``. Waiters poll every ``POLL_S`` seconds, so a queued
  run starts well within a second of a slot freeing up.

Which devices: ``$COCKPIT_FAKE_GPUS=N`` pretends the machine has N GPUs (tests); otherwise
NVML's count, narrowed to ``$CUDA_VISIBLE_DEVICES`` when that is a list of indices. CPU slots:
``$COCKPIT_CPU_SLOTS``, else ``cpu_slots:`` in ``<workspace>/cockpit.yaml``, else half the
physical cores (at least 1).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.torchfree.nvml import Nvml
from engine.torchfree.runfolder import RunFolder, process_alive, read_json

POLL_S = 0.25
BOOT_S = 30.0  # a .new ticket whose engine has not recorded its pid by then is dropped
FAKE_GPUS_ENV = "COCKPIT_FAKE_GPUS"
CPU_SLOTS_ENV = "COCKPIT_CPU_SLOTS"
CONFIG_NAME = "cockpit.yaml"


class SlotError(Exception):
    """The run can never be placed here; the message says why and what to change."""


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------- what the machine has

_nvml_count_cache: int | None = None


def _nvml_count() -> int:
    global _nvml_count_cache
    if _nvml_count_cache is None:
        with Nvml() as nvml:  # no library, no driver, no GPU: 0, a CPU machine
            _nvml_count_cache = nvml.count()
    return _nvml_count_cache


def gpu_indices(environ: dict | None = None) -> list[int]:
    """The GPUs runs may be placed on (NVML / PCI-bus order)."""
    env = os.environ if environ is None else environ
    fake = (env.get(FAKE_GPUS_ENV) or "").strip()
    if fake:
        try:
            indices = list(range(max(0, int(fake))))
        except ValueError:
            raise SlotError(
                f"{FAKE_GPUS_ENV}={fake}: expected a number of GPUs, e.g. {FAKE_GPUS_ENV}=4."
            ) from None
    else:
        indices = list(range(_nvml_count()))
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        items = [s.strip() for s in visible.split(",") if s.strip()]
        if all(s.isdigit() for s in items):  # UUIDs and MIG names are not mapped: all GPUs stay
            allowed = {int(s) for s in items}
            indices = [i for i in indices if i in allowed]
    return indices


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_slot_count(workspace: Path, environ: dict | None = None) -> int:
    """How many CPU runs may go at once: env var, else the workspace's cockpit.yaml, else cores/2."""
    env = os.environ if environ is None else environ
    raw = (env.get(CPU_SLOTS_ENV) or "").strip()
    where = f"${CPU_SLOTS_ENV}"
    if not raw:
        config = Path(workspace) / CONFIG_NAME
        try:
            data = yaml.safe_load(config.read_text())
        except FileNotFoundError:
            data = None
        except yaml.YAMLError as e:
            raise SlotError(
                f"{config}: not valid YAML ({e}); it holds e.g. cpu_slots: 2."
            ) from None
        if isinstance(data, dict) and data.get("cpu_slots") is not None:
            raw, where = str(data["cpu_slots"]), f"{config}: cpu_slots"
    if not raw:
        return max(1, physical_cores() // 2)
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise SlotError(f"{where} is {raw!r}: expected a whole number of runs ≥ 1, e.g. 2.")
    return n


def slots_root(workspace: Path) -> Path:
    return Path(workspace) / ".slots" / socket.gethostname()


# ---------------------------------------------------------------- what a run asks for


def demand(preset: dict, gpus: list[int], cpu_slots: int) -> tuple[str, int]:
    """What a (resolved) preset needs here: ("gpu", n GPUs) or ("cpu", n CPU slots)."""
    wanted = preset.get("gpus", 1)
    wanted = wanted if isinstance(wanted, int) and wanted >= 0 else 1
    device = str(preset.get("device") or "auto")
    if device.startswith("cuda"):
        wanted = max(wanted, 1)
    if wanted > 0 and device != "cpu" and gpus:
        return "gpu", wanted
    return "cpu", min(
        max(1, wanted), cpu_slots
    )  # a DDP run on CPUs: a slot per process, at most all


def check_fits(kind: str, need: int, gpus: list[int]) -> None:
    """SlotError when a run asks for more GPUs than this machine has (it would wait forever)."""
    if kind == "gpu" and need > len(gpus):
        raise SlotError(
            f"the preset asks for gpus: {need}, but this machine has {_plural(len(gpus), 'GPU')} "
            f"({', '.join(map(str, gpus))}); lower gpus, or set gpus: 0 to train on the CPU."
        )


@dataclass(frozen=True)
class Ask:
    """A run's request: ``need`` slots of ``kind``, in its place in the queue."""

    run_id: str
    created: float
    kind: str  # gpu | cpu
    need: int
    group: str | None = None
    parallel: int | None = None  # the group's --parallel

    @staticmethod
    def of(folder: RunFolder, request: dict, gpus: list[int], cpu_slots: int) -> Ask:
        kind, need = demand(yaml.safe_load(folder.preset_text() or "{}") or {}, gpus, cpu_slots)
        parallel = request.get("group_parallel")
        return Ask(
            run_id=folder.run_id,
            created=float(request.get("created") or time.time()),
            kind=kind,
            need=need,
            group=request.get("group"),
            parallel=int(parallel) if parallel else None,
        )

    def what(self) -> str:
        if self.kind == "gpu":
            return f"{self.need} GPU" + ("s" if self.need > 1 else "")
        return "a CPU slot" if self.need == 1 else f"{self.need} CPU slots"


# ---------------------------------------------------------------- locks


def _open(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    _share(fd)
    return fd


def _share(fd_or_path: int | Path, mode: int = 0o666) -> None:
    """Slot files and folders stay usable by everyone who can reach the workspace (whose own
    mode decides who that is: private by default, a group when shared), whatever the umask."""
    try:
        st = os.stat(fd_or_path)
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != mode:
            os.chmod(fd_or_path, mode)
    except OSError:
        pass


def _mkdirs(path: Path) -> None:
    """``path`` and the missing folders above it under the workspace, shared as ``_share``."""
    missing = []
    p = Path(path)
    while not p.exists() and p.name != ".slots" and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.exists():  # .slots itself
        missing.append(p)
    path.mkdir(parents=True, exist_ok=True)
    for d in missing:
        _share(d, 0o777)


def _try_lock(fd: int, shared: bool = False) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock_close(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_holder(fd: int, ask: Ask) -> None:
    import psutil

    info = {
        "run_id": ask.run_id,
        "pid": os.getpid(),
        "group": ask.group,
        "since": round(time.time(), 3),
        "create_time": psutil.Process().create_time(),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


@contextmanager
def _mutex(root: Path) -> Iterator[None]:
    fd = _open(root / "mutex.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _unlock_close(fd)


def _held(path: Path) -> bool:
    """Whether someone holds the lock file (probed with a shared lock, released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd, shared=True)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the lease


_current: Lease | None = None


@dataclass
class Lease:
    """What a run holds until it ends: its slots, and the environment that pins it to them."""

    kind: str = "cpu"
    slots: list[int] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""  # e.g. foreign processes found on the chosen GPUs
    fds: list[int] = field(default_factory=list)
    root: Path | None = None
    group_dir: Path | None = None

    @property
    def gpus(self) -> list[int]:
        return list(self.slots) if self.kind == "gpu" else []

    def describe(self) -> str:
        if self.kind == "gpu":
            return ("GPU " if len(self.slots) == 1 else "GPUs ") + ",".join(map(str, self.slots))
        return "CPU slot " + ",".join(map(str, self.slots))

    def release(self) -> None:
        global _current
        for fd in self.fds:
            try:
                _unlock_close(fd)
            except OSError:
                pass
        self.fds = []
        if _current is self:
            _current = None
        if self.group_dir is not None and self.root is not None:
            with _mutex(self.root):
                _sweep_group(self.group_dir)


def held_fds() -> list[int]:
    """This process's lease locks, to hand to a child that must keep the slots busy (torchrun)."""
    return list(_current.fds) if _current is not None else []


def _sweep_group(group_dir: Path) -> None:
    """Remove a group's token folder once no token is held (a later member recreates it)."""
    try:
        tokens = list(group_dir.glob("token-*.lock"))
    except OSError:
        return
    if not any(_held(t) for t in tokens):
        shutil.rmtree(group_dir, ignore_errors=True)


# ---------------------------------------------------------------- the queue


@dataclass
class Ticket:
    name: str
    phase: str  # new: engine booting · group: waiting for a group token · line: for a device
    info: dict

    def ahead_in_group(self, group: str | None) -> bool:
        return self.phase in ("new", "group") and self.info.get("group") == group

    def ahead_in_line(self, kind: str) -> bool:
        if self.phase == "new":  # its kind is not known yet: it holds every line for a moment
            return not self.info.get("parallel")
        return self.phase == "line" and self.info.get("kind") == kind


def announce(folder: RunFolder) -> None:
    """Called by the launcher right before it starts the engine: hold the run's place in line."""
    request = folder.request()
    root = slots_root(folder.path.parent)
    queue = root / "queue"
    _mkdirs(queue)
    stem = f"{float(request.get('created') or time.time()):017.6f}-{folder.run_id}"
    info = {
        "run_id": folder.run_id,
        "run_dir": str(folder.path.resolve()),
        "group": request.get("group"),
        "parallel": request.get("group_parallel"),
        "since": time.time(),
    }
    tmp = queue / f".{stem}.new.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, queue / f"{stem}.new")


class Waiter:
    """One queued run: its ticket, its group token, and its attempts at the slots."""

    def __init__(self, root: Path, ask: Ask, gpus: list[int], workspace: Path):
        self.root = root
        self.queue = root / "queue"
        self.ask = ask
        self.gpus = gpus
        self.workspace = workspace
        self.stem = f"{ask.created:017.6f}-{ask.run_id}"
        self.phase = "group" if ask.parallel else "line"
        self.ticket_fd: int | None = None
        self.token_fd: int | None = None
        self.group_dir = root / "groups" / ask.group if ask.group and ask.parallel else None
        self.infos: dict[str, dict] = {}

    @property
    def ticket(self) -> Path:
        return self.queue / f"{self.stem}.{self.phase}"

    def enqueue(self) -> None:
        _mkdirs(self.queue)
        tmp = self.queue / f".{self.stem}.tmp"
        fd = _open(tmp)
        _try_lock(fd)
        info = {
            "run_id": self.ask.run_id,
            "kind": self.ask.kind,
            "need": self.ask.need,
            "group": self.ask.group,
            "pid": os.getpid(),
        }
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.replace(tmp, self.ticket)  # visible only once locked: a reader never takes it for dead
        self.ticket_fd = fd
        _unlink(self.queue / f"{self.stem}.new")

    def close(self) -> None:
        """Leave the queue (lease taken, stopped, or failed)."""
        if self.ticket_fd is not None:
            _unlink(self.ticket)
            _unlock_close(self.ticket_fd)
            self.ticket_fd = None
        if self.token_fd is not None:
            _unlock_close(self.token_fd)
            self.token_fd = None

    def tickets(self) -> list[Ticket]:
        """Live tickets in queue order; dead engines' tickets are removed on the way."""
        out = []
        for name in sorted(os.listdir(self.queue)):
            if name.startswith("."):
                continue
            stem, _, phase = name.rpartition(".")
            if stem == self.stem:
                if phase == self.phase:
                    out.append(
                        Ticket(name, self.phase, {"kind": self.ask.kind, "group": self.ask.group})
                    )
                continue
            path = self.queue / name
            if not _ticket_alive(path):
                continue
            if name not in self.infos:
                self.infos[name] = _read_holder(path)
            out.append(Ticket(name, phase, self.infos[name]))
        return out

    def poll(self, cpu_slots: int) -> tuple[Lease | None, dict]:
        """One attempt (under the mutex): a lease, or where the run stands in the queue."""
        a = self.ask
        tickets = self.tickets()
        mine = next(i for i, t in enumerate(tickets) if t.name == self.ticket.name)
        ahead = tickets[:mine]
        if self.phase == "group":
            before = sum(1 for t in ahead if t.ahead_in_group(a.group))
            if before or not self._take_token():
                return None, {
                    "queue": f"{ordinal(before + 1)} in line in its ablation group: {a.parallel} of its "
                    f"runs at a time (--parallel {a.parallel})",
                    "queue_position": before + 1,
                }
            os.replace(self.ticket, self.queue / f"{self.stem}.line")
            self.phase = "line"
        before = sum(1 for t in ahead if t.ahead_in_line(a.kind))
        place = f"{ordinal(before + 1)} in line for {a.what()}"
        if not before:
            lease, busy = self._take_slots(cpu_slots)
            if lease is not None:
                self.close_into(lease)
                return lease, {}
            place += f", {busy} of {len(self.gpus) if a.kind == 'gpu' else cpu_slots} busy"
        return None, {"queue": place, "queue_position": before + 1}

    def close_into(self, lease: Lease) -> None:
        """The lease takes over the group token; the ticket goes."""
        if self.token_fd is not None:
            lease.fds.append(self.token_fd)
            lease.group_dir = self.group_dir
            self.token_fd = None
        self.close()

    def _take_token(self) -> bool:
        assert self.group_dir is not None and self.ask.parallel
        _mkdirs(self.group_dir)
        for i in range(self.ask.parallel):
            fd = _open(self.group_dir / f"token-{i}.lock")
            if _try_lock(fd):
                _write_holder(fd, self.ask)
                self.token_fd = fd
                return True
            os.close(fd)
        return False

    def _take_slots(self, cpu_slots: int) -> tuple[Lease | None, int]:
        """The slots, or None and how many are busy."""
        a = self.ask
        if a.kind == "gpu":
            candidates, capacity = list(self.gpus), len(self.gpus)
        else:
            existing = {int(p.stem.split("-")[1]) for p in self.root.glob("cpu-*.lock")}
            candidates, capacity = sorted(set(range(cpu_slots)) | existing), cpu_slots
        got: list[tuple[int, int]] = []
        busy = 0
        for i in candidates:
            fd = _open(self.root / f"{a.kind}-{i}.lock")
            if _try_lock(fd):
                got.append((i, fd))
            else:
                busy += 1
                os.close(fd)
        if min(len(got), capacity - busy) < a.need:
            for _, fd in got:
                _unlock_close(fd)
            return None, busy
        note = ""
        if a.kind == "gpu":
            foreign = foreign_processes(self.root, [i for i, _ in got])
            got.sort(
                key=lambda g: (
                    sum(p["mem_mb"] or 0 for p in foreign.get(g[0], [])),
                    len(foreign.get(g[0], [])),
                )
            )
            chosen = got[: a.need]
            note = _foreign_note({i: foreign[i] for i, _ in chosen if foreign.get(i)})
        else:
            chosen = got[: a.need]
        for _, fd in got[a.need :]:
            _unlock_close(fd)
        for _, fd in chosen:
            _write_holder(fd, a)
        slots = [i for i, _ in chosen]
        return Lease(
            a.kind, slots, self._env(slots, cpu_slots), note, [fd for _, fd in chosen], self.root
        ), busy

    def _env(self, slots: list[int], cpu_slots: int) -> dict[str, str]:
        if self.ask.kind == "gpu":
            # NVML numbers GPUs in PCI-bus order; make CUDA number them the same way
            return {
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, slots)),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            }
        env = {}
        if self.gpus:  # a CPU run on a GPU machine: `device: auto` must not wander onto a GPU
            env["CUDA_VISIBLE_DEVICES"] = ""
        if cpu_slots > 1 and "OMP_NUM_THREADS" not in os.environ:
            # a CPU slot is a share of the cores: runs side by side must not oversubscribe them
            env["OMP_NUM_THREADS"] = str(max(1, physical_cores() // cpu_slots) * len(slots))
        return env


def _ticket_alive(path: Path) -> bool:
    """Whether a ticket's run still waits; a dead engine's ticket is removed on the way."""
    if path.suffix == ".new":
        info = _read_holder(path)
        proc = (
            read_json(Path(info.get("run_dir", "")) / "proc.json") if info.get("run_dir") else None
        )
        alive = (
            process_alive(proc) is not False
            if proc
            else time.time() - info.get("since", 0) < BOOT_S
        )
        if not alive:
            _unlink(path)
        return alive
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if _try_lock(fd):
            _unlink(path)
            return False
        return True
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def acquire(
    folder: RunFolder,
    request: dict,
    should_stop: Callable[[], bool],
    on_wait: Callable[[dict], None],
    poll: float = POLL_S,
) -> Lease | None:
    """Wait for this run's slots; None when asked to stop first.

    ``on_wait`` gets ``{"queue": "2nd in line for 1 GPU", "queue_position": 2}`` whenever the
    run's place changes. Raises SlotError when the run can never fit on this machine."""
    global _current
    workspace = folder.path.parent
    gpus = gpu_indices()
    cpu_slots = cpu_slot_count(workspace)
    ask = Ask.of(folder, request, gpus, cpu_slots)
    check_fits(ask.kind, ask.need, gpus)
    root = slots_root(workspace)
    _mkdirs(root)
    waiter = Waiter(root, ask, gpus, workspace)
    shown: dict | None = None
    with _mutex(root):
        waiter.enqueue()
    try:
        while not should_stop():
            with _mutex(root):
                lease, place = waiter.poll(cpu_slot_count(workspace))
            if lease is not None:
                _current = lease
                return lease
            if place != shown:
                on_wait(place)
                shown = place
            time.sleep(poll)
        return None
    finally:
        waiter.close()


# ---------------------------------------------------------------- what is where (for display)


def _gpu_processes(indices: list[int]) -> dict[int, list[tuple[int, float | None]]]:
    """NVML: GPU index -> [(pid, used MB)] of every compute process on it; {} without NVML."""
    if not indices or (os.environ.get(FAKE_GPUS_ENV) or "").strip():
        return {}
    out: dict[int, list[tuple[int, float | None]]] = {}
    with Nvml() as nvml:
        if not nvml.ok:
            return {}
        for i in indices:
            try:
                procs = nvml.processes(nvml.handle(index=i))
            except Exception:
                continue
            if procs is not None:
                out[i] = procs
    return out


def _cockpit_pids(root: Path) -> set[int]:
    """Pids of every engine holding a slot here, and of everything they started."""
    import psutil

    pids: set[int] = set()
    for path in root.glob("*.lock"):
        holder = _read_holder(path)
        if not holder.get("pid") or not _held(path):
            continue
        try:
            p = psutil.Process(int(holder["pid"]))
            pids.add(p.pid)
            pids.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            continue
    return pids


def foreign_processes(root: Path, indices: list[int]) -> dict[int, list[dict]]:
    """GPU index -> processes on it that no cockpit run started: [{pid, name, mem_mb}]."""
    found = _gpu_processes(indices)
    if not any(found.values()):
        return {}
    import psutil

    ours = _cockpit_pids(root)
    out: dict[int, list[dict]] = {}
    for i, procs in found.items():
        for pid, mem in procs:
            if pid in ours:
                continue
            try:
                name = psutil.Process(pid).name()
            except psutil.Error:
                name = "?"  # another container's pid namespace, or just exited
            out.setdefault(i, []).append(
                {"pid": pid, "name": name, "mem_mb": round(mem) if mem else None}
            )
    return out


def _foreign_note(foreign: dict[int, list[dict]]) -> str:
    parts = []
    for i, procs in sorted(foreign.items()):
        what = ", ".join(
            f"{p['name']} pid {p['pid']}" + (f" {p['mem_mb'] / 1024:.1f} GB" if p["mem_mb"] else "")
            for p in procs[:3]
        )
        parts.append(
            f"GPU {i} also runs {_plural(len(procs), 'process')} cockpit did not start ({what})"
        )
    return "; ".join(parts)


@dataclass
class SlotView:
    """One device slot as a display shows it."""

    kind: str  # gpu | cpu
    index: int
    run_id: str | None = None  # the cockpit run holding it
    since: float | None = None
    foreign: list[dict] = field(default_factory=list)  # GPUs: processes cockpit did not start

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "run_id": self.run_id,
            "since": self.since,
            "foreign": self.foreign,
        }


def slot_views(workspace: Path) -> list[SlotView]:
    """Every GPU (or, on a CPU machine, every CPU slot) with its holder and foreign processes."""
    root = slots_root(workspace)
    gpus = gpu_indices()
    kind, indices = ("gpu", gpus) if gpus else ("cpu", list(range(cpu_slot_count(workspace))))
    foreign = foreign_processes(root, gpus) if gpus else {}
    out = []
    for i in indices:
        path = root / f"{kind}-{i}.lock"
        holder = _read_holder(path) if _held(path) else {}
        out.append(SlotView(kind, i, holder.get("run_id"), holder.get("since"), foreign.get(i, [])))
    return out


def queued_runs(workspace: Path) -> list[str]:
    """Run ids of live queue tickets, first in line first."""
    queue = slots_root(workspace) / "queue"
    try:
        names = sorted(n for n in os.listdir(queue) if not n.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if _ticket_alive(queue / name):
            out.append(_read_holder(queue / name).get("run_id") or name)
    return out


def describe_slots(workspace: Path) -> str:
    """One line for `cockpit ls`: 'GPUs: 0 quickstart-… · 1 free · 2 free, 1 foreign process …'."""
    views = slot_views(workspace)
    if not views:
        return ""
    if views[0].kind == "cpu":
        busy = sum(1 for v in views if v.run_id)
        queued = len(queued_runs(workspace))
        return (
            f"CPU slots: {busy} of {len(views)} busy"
            + (f", {queued} queued" if queued else "")
            + f"  (set with ${CPU_SLOTS_ENV} or cpu_slots: in {Path(workspace) / CONFIG_NAME})"
        )
    parts = []
    for v in views:
        text = f"{v.index} {v.run_id or 'free'}"
        if v.foreign:
            text += f" + {_plural(len(v.foreign), 'foreign process')}"
        parts.append(text)
    queued = len(queued_runs(workspace))
    return "GPUs: " + " · ".join(parts) + (f"  ({queued} queued)" if queued else "")
