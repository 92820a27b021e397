"""The FIFO queue for slots: tickets, the waiter, and ``acquire`` (what the engine calls).

See ``engine.torchfree.slots.leases`` for the layout of ``<workspace>/.slots/<host>/``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.torchfree.runfolder import RunFolder, process_alive, read_json
from engine.torchfree.slots import leases
from engine.torchfree.slots.devices import cpu_slot_count, gpu_indices, physical_cores
from engine.torchfree.slots.leases import (
    BOOT_S,
    POLL_S,
    Ask,
    Lease,
    check_fits,
    foreign_processes,
    mkdirs,
    mutex,
    open_lock,
    read_holder,
    slots_root,
    try_lock,
    unlock_close,
    write_holder,
)
from engine.torchfree.slots.words import foreign_note, ordinal


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
    mkdirs(queue)
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

    def __init__(self, root: Path, ask: Ask, gpus: list[int]):
        self.root = root
        self.queue = root / "queue"
        self.ask = ask
        self.gpus = gpus
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
        mkdirs(self.queue)
        tmp = self.queue / f".{self.stem}.tmp"
        fd = open_lock(tmp)
        try_lock(fd)
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
        unlink_quiet(self.queue / f"{self.stem}.new")

    def close(self) -> None:
        """Leave the queue (lease taken, stopped, or failed)."""
        if self.ticket_fd is not None:
            unlink_quiet(self.ticket)
            unlock_close(self.ticket_fd)
            self.ticket_fd = None
        if self.token_fd is not None:
            unlock_close(self.token_fd)
            self.token_fd = None

    def tickets(self) -> list[Ticket]:
        """Live tickets in queue order; dead engines' tickets are removed on the way."""
        out = []
        for name in sorted(os.listdir(self.queue)):
            if name.startswith("."):
                continue
            stem, _, phase = name.rpartition(".")
            if stem == self.stem:
                if phase == self.phase:  # its own: only its place is read, not its info
                    out.append(Ticket(name, self.phase, {}))
                continue
            path = self.queue / name
            if not ticket_alive(path):
                continue
            if name not in self.infos:
                self.infos[name] = read_holder(path)
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
        mkdirs(self.group_dir)
        for i in range(self.ask.parallel):
            fd = open_lock(self.group_dir / f"token-{i}.lock")
            if try_lock(fd):
                write_holder(fd, self.ask)
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
            fd = open_lock(self.root / f"{a.kind}-{i}.lock")
            if try_lock(fd):
                got.append((i, fd))
            else:
                busy += 1
                os.close(fd)
        if min(len(got), capacity - busy) < a.need:
            for _, fd in got:
                unlock_close(fd)
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
            note = foreign_note({i: foreign[i] for i, _ in chosen if foreign.get(i)})
        else:
            chosen = got[: a.need]
        for _, fd in got[a.need :]:
            unlock_close(fd)
        for _, fd in chosen:
            write_holder(fd, a)
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


def ticket_alive(path: Path) -> bool:
    """Whether a ticket's run still waits; a dead engine's ticket is removed on the way."""
    if path.suffix == ".new":
        info = read_holder(path)
        run_dir = info.get("run_dir")
        proc = read_json(Path(run_dir) / "proc.json") if run_dir else None
        alive = (
            process_alive(proc) is not False
            if proc
            else time.time() - info.get("since", 0) < BOOT_S
        )
        if not alive:
            unlink_quiet(path)
        return alive
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if try_lock(fd):
            unlink_quiet(path)
            return False
        return True
    finally:
        os.close(fd)


def unlink_quiet(path: Path) -> None:
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
    workspace = folder.path.parent
    gpus = gpu_indices()
    cpu_slots = cpu_slot_count(workspace)
    ask = Ask.of(folder, request, gpus, cpu_slots)
    check_fits(ask.kind, ask.need, gpus)
    root = slots_root(workspace)
    mkdirs(root)
    waiter = Waiter(root, ask, gpus)
    shown: dict = {}  # what on_wait was last told (a place is never empty)
    with mutex(root):
        waiter.enqueue()
    try:
        while not should_stop():
            with mutex(root):
                lease, place = waiter.poll(cpu_slot_count(workspace))
            if lease is not None:
                leases.current_holder = lease  # held_fds() hands its locks to torchrun
                return lease
            if place != shown:
                on_wait(place)
                shown = place
            time.sleep(poll)
        return None
    finally:
        waiter.close()
