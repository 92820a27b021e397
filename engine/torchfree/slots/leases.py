"""Device slots (leases) and the queue: which GPUs (or CPU slots) a run may use, and the queue for them.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.torchfree.runfolder import RunFolder
from engine.torchfree.slots.devices import (
    SlotError,
    gpu_processes,
)
from engine.torchfree.slots.words import plural

POLL_S = 0.25
BOOT_S = 30.0  # a .new ticket whose engine has not recorded its pid by then is dropped


def slots_root(workspace: Path) -> Path:
    return Path(workspace) / ".slots" / socket.gethostname()


def demand(preset: dict, gpus: list[int], cpu_slots: int) -> tuple[str, int]:
    """What a (resolved) preset needs here: ("gpu", n GPUs) or ("cpu", n CPU slots)."""
    wanted = preset.get("gpus")
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
            f"the preset asks for gpus: {need}, but this machine has {plural(len(gpus), 'GPU')} "
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


def open_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    share(fd)
    return fd


def share(fd_or_path: int | Path, mode: int = 0o666) -> None:
    """Slot files and folders stay usable by everyone who can reach the workspace (whose own
    mode decides who that is: private by default, a group when shared), whatever the umask."""
    try:
        st = os.stat(fd_or_path)
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != mode:
            os.chmod(fd_or_path, mode)
    except OSError:
        pass


def mkdirs(path: Path) -> None:
    """``path`` and the missing folders above it under the workspace, shared as ``share``."""
    missing = []
    p = Path(path)
    while not p.exists() and p.name != ".slots" and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.exists():  # .slots itself
        missing.append(p)
    path.mkdir(parents=True, exist_ok=True)
    for d in missing:
        share(d, 0o777)


def try_lock(fd: int, shared: bool = False) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def unlock_close(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_holder(fd: int, ask: Ask) -> None:
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


def read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())  # an empty file (nothing written yet) too
    except (OSError, json.JSONDecodeError):
        return {}


@contextmanager
def mutex(root: Path) -> Iterator[None]:
    fd = open_lock(root / "mutex.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        unlock_close(fd)


def held(path: Path) -> bool:
    """Whether someone holds the lock file (probed with a shared lock, released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not try_lock(fd, shared=True)
    finally:
        os.close(fd)


current_holder: Lease | None = None


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
        global current_holder
        for fd in self.fds:
            try:
                unlock_close(fd)
            except OSError:
                pass
        self.fds = []
        if current_holder is self:
            current_holder = None
        if self.group_dir is not None and self.root is not None:
            with mutex(self.root):
                _sweep_group(self.group_dir)


def held_fds() -> list[int]:
    """This process's lease locks, to hand to a child that must keep the slots busy (torchrun)."""
    return list(current_holder.fds) if current_holder is not None else []


def _sweep_group(group_dir: Path) -> None:
    """Remove a group's token folder once no token is held (a later member recreates it)."""
    try:
        tokens = list(group_dir.glob("token-*.lock"))
    except OSError:
        return
    if not any(held(t) for t in tokens):
        shutil.rmtree(group_dir, ignore_errors=True)


def _cockpit_pids(root: Path) -> set[int]:
    """Pids of every engine holding a slot here, and of everything they started."""
    import psutil

    pids: set[int] = set()
    for path in root.glob("*.lock"):
        holder = read_holder(path)
        if not holder.get("pid") or not held(path):
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
    found = gpu_processes(indices)
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


def slurm_job_lease(environ: dict | None = None) -> Lease:
    """The slots of a run inside its Slurm job: what Slurm allocated, no local queue.

    Slurm has already given the job its devices (``--gres=gpu:N`` sets CUDA_VISIBLE_DEVICES
    in the job), so the engine does not line up in the host's slot queue — that would make
    jobs of one node wait for each other twice, and cockpit's lock files are per host anyway.
    The lease changes no environment variable and holds no lock."""
    env = os.environ if environ is None else environ
    visible = [v.strip() for v in (env.get("CUDA_VISIBLE_DEVICES") or "").split(",") if v.strip()]
    gpus = [int(v) for v in visible if v.isdigit()]
    job, node = env.get("SLURM_JOB_ID", "?"), env.get("SLURMD_NODENAME") or ""

    class JobLease(Lease):
        def describe(self) -> str:
            where = f"Slurm job {job}" + (f" on {node}" if node else "")
            if self.kind == "gpu":
                return (
                    where
                    + (" (GPU " if len(self.slots) == 1 else " (GPUs ")
                    + (",".join(map(str, self.slots)) + ")")
                )
            return where

    return JobLease(kind="gpu" if gpus else "cpu", slots=gpus)
