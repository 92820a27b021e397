"""Device slots and the queue, in process and without waiting: the functions behind
``acquire`` called one step at a time (``Waiter.poll`` is one attempt under the mutex), a fake
clock for the boot grace of a half-created ticket, a stand-in ``pynvml`` for the GPU process
table, and the words ``cockpit ls`` and the app show. Nothing here polls with a timeout, so a
broken queue fails a test at once instead of hanging it (the mutation benchmark relies on
that: benchmarks/mutation.py, ``slots``). The end-to-end queue, with threads and real engine
processes, is in tests/test_slots.py."""

from __future__ import annotations

import json
import os
import stat
import sys
import types
from pathlib import Path

import psutil
import pytest

from engine.torchfree import slots
from engine.torchfree.runfolder import RunFolder, write_json_atomic
from engine.torchfree.slots import devices as slot_devices
from engine.torchfree.slots import leases as slot_leases
from engine.torchfree.slots import queue as slot_queue
from engine.torchfree.slots import words
from engine.torchfree.slots.leases import Ask, Lease
from engine.torchfree.slots.queue import Ticket, Waiter

# ---------------------------------------------------------------- helpers


@pytest.fixture
def machine(monkeypatch):
    """A clean slate of settings: no CPU slot setting, nothing visible narrowed, no current
    lease, and ``$COCKPIT_FAKE_GPUS=0`` so that no test reads the GPUs of the machine it runs
    on (the tests that mean NVML install a stand-in: the ``nvml`` fixture)."""
    for name in (slots.CPU_SLOTS_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(slot_leases, "current_holder", None)
    return monkeypatch


def root_of(ws: Path) -> Path:
    root = slots.slots_root(ws)
    slot_leases.mkdirs(root)
    return root


def ask(run_id: str, created: float, kind: str = "gpu", need: int = 1, **kw) -> Ask:
    return Ask(run_id, created, kind, need, **kw)


def queued(ws: Path, a: Ask, gpus: list[int]) -> Waiter:
    """A run in line: its ticket written and locked, as acquire() does first."""
    w = Waiter(root_of(ws), a, gpus)
    with slot_leases.mutex(w.root):
        w.enqueue()
    return w


def someone_holds(path: Path) -> int:
    """Another engine holding a lock file (a second open file: flock sees two holders)."""
    fd = slot_leases.open_lock(path)
    assert slot_leases.try_lock(fd)
    return fd


def run_folder(ws: Path, name: str, preset: str = "gpus: 1\n", **request) -> RunFolder:
    path = ws / name
    path.mkdir()
    (path / "preset.yaml").write_text(preset)
    write_json_atomic(path / "run.json", request)
    return RunFolder(path)


def queue_files(ws: Path) -> list[str]:
    return sorted(os.listdir(slots.slots_root(ws) / "queue"))


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
        return False
    except OSError:
        return True


class Clock:
    """Stands in for the queue module's ``time``: a clock that moves only when slept on."""

    def __init__(self, t: float = 10_000.0):
        self.t = t
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class FakePynvml(types.ModuleType):
    """Just enough of pynvml for the GPU count and each GPU's compute processes:
    ``procs`` maps a GPU index to [(pid, used MB or None)], or to an exception its query raises."""

    def __init__(self, procs: dict, count: int | None = None, fail_init: bool = False):
        super().__init__("pynvml")
        self.procs = procs
        self.count = len(procs) if count is None else count
        self.fail_init = fail_init
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.procs:
            raise RuntimeError(f"no GPU {i}")
        return ("gpu", i)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        procs = self.procs[handle[1]]
        if isinstance(procs, Exception):
            raise procs
        return [
            types.SimpleNamespace(pid=pid, usedGpuMemory=None if mb is None else int(mb * 2**20))
            for pid, mb in procs
        ]


@pytest.fixture
def nvml(machine):
    """Install a stand-in pynvml: ``nvml({0: [(pid, mb)], 1: []})``; the GPU count is its size."""

    def install(procs: dict, **kw) -> FakePynvml:
        fake = FakePynvml(procs, **kw)
        machine.delenv(slots.FAKE_GPUS_ENV, raising=False)
        machine.setitem(sys.modules, "pynvml", fake)
        machine.setattr(slot_devices, "_nvml_count_cache", None)
        return fake

    return install


def stranger_pid() -> int:
    """A process no cockpit run started and that is not ours: pid 1."""
    assert 1 not in {c.pid for c in psutil.Process().children(recursive=True)}
    return 1


def name_of(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


GONE = 2**31 - 1  # a pid no process has (another container's, or one that just exited)


# ---------------------------------------------------------------- words


def test_ordinals_read_as_english():
    got = {n: words.ordinal(n) for n in (1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 19, 20, 21, 22, 23)}
    assert got == {
        1: "1st",
        2: "2nd",
        3: "3rd",
        4: "4th",
        9: "9th",
        10: "10th",
        11: "11th",
        12: "12th",
        13: "13th",
        14: "14th",
        19: "19th",
        20: "20th",
        21: "21st",
        22: "22nd",
        23: "23rd",
    }
    assert [words.ordinal(n) for n in (101, 102, 111, 112, 113, 121, 1000)] == [
        "101st",
        "102nd",
        "111th",
        "112th",
        "113th",
        "121st",
        "1000th",
    ]


def test_plurals():
    assert [words.plural(n, "GPU") for n in (0, 1, 2)] == ["0 GPUs", "1 GPU", "2 GPUs"]


def test_the_foreign_process_note_names_at_most_three_per_gpu():
    procs = [
        {"name": "python", "pid": 11, "mem_mb": 1536},
        {"name": "jupyter", "pid": 12, "mem_mb": None},
        {"name": "ollama", "pid": 13, "mem_mb": 1076},  # 1.05 GB: GB of 1024 MB
        {"name": "hidden", "pid": 14, "mem_mb": 100},
    ]
    note = words.foreign_note({3: [procs[1]], 1: procs})
    assert note == (
        "GPU 1 also runs 4 processes cockpit did not start "
        "(python pid 11 1.5 GB, jupyter pid 12, ollama pid 13 1.1 GB); "
        "GPU 3 also runs 1 process cockpit did not start (jupyter pid 12)"
    )
    assert words.foreign_note({}) == ""


# ---------------------------------------------------------------- devices


def test_fake_gpus_and_visible_devices(machine):
    env = {slots.FAKE_GPUS_ENV: " 3 "}
    assert slots.gpu_indices(env) == [0, 1, 2]
    assert slots.gpu_indices({slots.FAKE_GPUS_ENV: "-2"}) == []
    assert slots.gpu_indices({**env, "CUDA_VISIBLE_DEVICES": " 2 , 0,,7"}) == [0, 2]
    # UUIDs and MIG names cannot be mapped to indices: every GPU stays a candidate
    assert slots.gpu_indices({**env, "CUDA_VISIBLE_DEVICES": "GPU-1f2e,0"}) == [0, 1, 2]
    assert slots.gpu_indices({**env, "CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(slots.SlotError) as e:
        slots.gpu_indices({slots.FAKE_GPUS_ENV: "two"})
    assert str(e.value) == (
        "COCKPIT_FAKE_GPUS=two: expected a number of GPUs, e.g. COCKPIT_FAKE_GPUS=4."
    )
    machine.setenv(slots.FAKE_GPUS_ENV, "2")
    assert slots.gpu_indices() == [0, 1]  # the process environment by default


def test_without_fake_gpus_the_count_comes_from_nvml_once(nvml):
    fake = nvml({0: [], 1: []})
    assert slots.gpu_indices({}) == [0, 1]
    assert slots.gpu_indices({"CUDA_VISIBLE_DEVICES": "1"}) == [1]
    assert fake.inits == 1  # counted once per process
    nvml({}, fail_init=True)  # no driver: a CPU machine
    assert slots.gpu_indices({}) == []


def test_physical_cores_fall_back_to_the_logical_count(machine):
    machine.setattr(psutil, "cpu_count", lambda logical=True: None if not logical else 99)
    machine.setattr(os, "cpu_count", lambda: 6)
    assert slots.physical_cores() == 6
    machine.setattr(os, "cpu_count", lambda: None)
    assert slots.physical_cores() == 1
    machine.setattr(psutil, "cpu_count", lambda logical=True: 8)
    assert slots.physical_cores() == 8


def test_by_default_half_the_physical_cores_go_to_cpu_runs(machine, tmp_path):
    for cores, expected in ((1, 1), (2, 1), (3, 1), (8, 4), (9, 4)):
        machine.setattr(slot_devices, "physical_cores", lambda cores=cores: cores)
        assert slots.cpu_slot_count(tmp_path, {}) == expected
    # an empty file, a file of something else, or cpu_slots: null: the default too
    for text in ("", "- 3\n", "cpu_slots:\n", "other: 1\n"):
        (tmp_path / "cockpit.yaml").write_text(text)
        assert slots.cpu_slot_count(tmp_path, {}) == 4, text
    (tmp_path / "cockpit.yaml").write_text("cpu_slots: 3\n")
    assert slots.cpu_slot_count(tmp_path, {slots.CPU_SLOTS_ENV: "  "}) == 3  # blank env: the file
    machine.setenv(slots.CPU_SLOTS_ENV, "5")
    assert slots.cpu_slot_count(tmp_path) == 5  # the process environment by default


def test_a_bad_cpu_slot_setting_says_where_it_is_and_what_to_write(tmp_path):
    with pytest.raises(slots.SlotError) as e:
        slots.cpu_slot_count(tmp_path, {slots.CPU_SLOTS_ENV: "0"})
    assert str(e.value) == "$COCKPIT_CPU_SLOTS is '0': expected a whole number of runs ≥ 1, e.g. 2."
    config = tmp_path / "cockpit.yaml"
    config.write_text("cpu_slots: lots\n")
    with pytest.raises(slots.SlotError) as e:
        slots.cpu_slot_count(tmp_path, {})
    assert str(e.value) == (
        f"{config}: cpu_slots is 'lots': expected a whole number of runs ≥ 1, e.g. 2."
    )
    config.write_text("cpu_slots: [\n")
    with pytest.raises(slots.SlotError) as e:
        slots.cpu_slot_count(tmp_path, {})
    text = str(e.value)
    assert text.startswith(f"{config}: not valid YAML (") and "line 2, column 1" in text
    assert text.endswith("); it holds e.g. cpu_slots: 2.")


def test_the_gpu_process_table_comes_from_nvml(nvml):
    fake = nvml(
        {
            0: [(111, 2048.0), (222, None)],
            1: RuntimeError("not supported"),  # NVML cannot say: the GPU is left out
            3: [],
        },
        count=4,  # GPU 2 has no handle: left out
    )
    got = slot_devices.gpu_processes([0, 1, 2, 3])
    assert got == {0: [(111, 2048.0), (222, None)], 3: []}
    assert slot_devices.gpu_processes([3]) == {3: []}
    inits = fake.inits
    assert slot_devices.gpu_processes([]) == {}  # nothing asked: NVML is not opened
    assert fake.inits == inits


def test_no_gpu_process_table_with_fake_gpus_or_without_nvml(nvml, machine):
    fake = nvml({0: [(111, 10.0)]})
    machine.setenv(slots.FAKE_GPUS_ENV, "1")
    assert slot_devices.gpu_processes([0]) == {}
    assert fake.inits == 0
    machine.setenv(slots.FAKE_GPUS_ENV, " ")
    assert slot_devices.gpu_processes([0]) == {0: [(111, 10.0)]}
    nvml({0: [(111, 10.0)]}, fail_init=True)
    assert slot_devices.gpu_processes([0]) == {}


# ---------------------------------------------------------------- leases


def test_slot_files_live_per_host(tmp_path):
    import socket

    assert slots.slots_root(tmp_path) == tmp_path / ".slots" / socket.gethostname()
    assert slots.slots_root(str(tmp_path)) == tmp_path / ".slots" / socket.gethostname()


def test_demand_without_a_device_key_is_auto():
    assert slots.demand({"gpus": 1, "device": None}, [0], 2) == ("gpu", 1)
    assert slots.demand({"gpus": 2, "device": "cuda"}, [], 4) == ("cpu", 2)
    assert slots.demand({"gpus": 0}, [], 2) == ("cpu", 1)


def test_asking_for_more_gpus_than_there_are_says_what_to_change():
    with pytest.raises(slots.SlotError) as e:
        slots.check_fits("gpu", 2, [3])
    assert str(e.value) == (
        "the preset asks for gpus: 2, but this machine has 1 GPU (3); "
        "lower gpus, or set gpus: 0 to train on the CPU."
    )
    slots.check_fits("gpu", 1, [3])


def test_a_request_is_read_from_the_run_folder(tmp_path):
    folder = run_folder(
        tmp_path, "r", "gpus: 2\n", created=5.5, group="lr-sweep", group_parallel="3"
    )
    assert Ask.of(folder, folder.request(), [0, 1], 4) == Ask("r", 5.5, "gpu", 2, "lr-sweep", 3)
    plain = run_folder(tmp_path, "plain", "")
    import time

    before = time.time()
    got = Ask.of(plain, {"group_parallel": 0}, [], 4)
    assert got.run_id == "plain" and (got.kind, got.need) == ("cpu", 1)
    assert got.group is None and got.parallel is None
    assert before <= got.created <= time.time()  # no creation time: now


def test_slot_files_and_folders_are_shared_whatever_the_umask(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir(mode=0o700)
    old = os.umask(0o077)
    try:
        queue = slots.slots_root(ws) / "queue"
        slot_leases.mkdirs(queue)
        slot_leases.mkdirs(queue)  # again: nothing to do
        fd = slot_leases.open_lock(queue.parent / "gpu-0.lock")
        os.close(fd)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert [mode(p) for p in (ws / ".slots", queue.parent, queue)] == [0o777] * 3
    assert mode(ws) == 0o700  # the workspace's own mode decides who may reach it
    assert mode(queue.parent / "gpu-0.lock") == 0o666
    # a workspace that is not there yet is made, but not opened up
    new = tmp_path / "new-ws"
    old = os.umask(0o077)
    try:
        slot_leases.mkdirs(slots.slots_root(new))
    finally:
        os.umask(old)
    assert mode(new) == 0o700 and mode(new / ".slots") == 0o777
    # a folder that exists already is not touched
    other = slots.slots_root(ws) / "groups"
    other.mkdir(mode=0o700)
    slot_leases.mkdirs(other / "g")
    assert mode(other) == 0o700 and mode(other / "g") == 0o777


def test_share_leaves_files_of_the_right_mode_and_missing_ones_alone(tmp_path):
    path = tmp_path / "f"
    path.write_text("")
    path.chmod(0o640)
    slot_leases.share(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    slot_leases.share(path, 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    slot_leases.share(tmp_path / "missing")  # no error


def test_a_lock_is_held_until_its_holder_lets_go(tmp_path):
    path = tmp_path / "gpu-0.lock"
    assert not slot_leases.held(path)  # no file: nobody
    fd = slot_leases.open_lock(path)
    assert not slot_leases.held(path)  # a file nobody locks: nobody
    assert slot_leases.try_lock(fd)
    assert slot_leases.held(path)
    other = slot_leases.open_lock(path)
    assert not slot_leases.try_lock(other)  # exclusive
    assert not slot_leases.try_lock(other, shared=True)
    slot_leases.unlock_close(fd)
    assert closed(fd) and not slot_leases.held(path)
    assert slot_leases.try_lock(other, shared=True)
    third = slot_leases.open_lock(path)
    assert slot_leases.try_lock(third, shared=True)  # shared locks do not exclude each other
    fourth = slot_leases.open_lock(path)
    assert not slot_leases.try_lock(fourth)
    for fd in (other, third, fourth):
        slot_leases.unlock_close(fd)
    # a display probing at the same moment (held() takes a shared lock) is not a holder
    prober = slot_leases.open_lock(path)
    assert slot_leases.try_lock(prober, shared=True)
    assert not slot_leases.held(path)
    slot_leases.unlock_close(prober)


def test_the_mutex_excludes_others_while_held(tmp_path):
    probe = slot_leases.open_lock(tmp_path / "mutex.lock")
    with slot_leases.mutex(tmp_path):
        assert not slot_leases.try_lock(probe)
    assert slot_leases.try_lock(probe)
    slot_leases.unlock_close(probe)


def test_a_holder_writes_who_it_is(tmp_path):
    import time

    fd = slot_leases.open_lock(tmp_path / "gpu-0.lock")
    os.write(fd, b"x" * 500)  # a longer, older holder's record is replaced, not overwritten
    before = time.time()
    slot_leases.write_holder(fd, ask("run-a", 1.0, group="g"))
    info = slot_leases.read_holder(tmp_path / "gpu-0.lock")
    assert set(info) == {"run_id", "pid", "group", "since", "create_time"}
    assert info["run_id"] == "run-a" and info["pid"] == os.getpid() and info["group"] == "g"
    assert before - 0.001 <= info["since"] <= time.time() + 0.001
    assert info["since"] == round(info["since"], 3)
    assert info["create_time"] == psutil.Process().create_time()
    os.close(fd)
    for text in ("", "{not json", "[1"):
        (tmp_path / "bad").write_text(text)
        assert slot_leases.read_holder(tmp_path / "bad") == {}, text
    assert slot_leases.read_holder(tmp_path / "missing") == {}


def test_what_a_lease_is_called():
    assert Lease("gpu", [2]).describe() == "GPU 2"
    assert Lease("gpu", [1, 3]).describe() == "GPUs 1,3"
    assert Lease("cpu", [0]).describe() == "CPU slot 0"
    assert Lease("cpu", [0, 1]).describe() == "CPU slot 0,1"
    assert Lease("gpu", [1, 3]).gpus == [1, 3] and Lease("cpu", [0]).gpus == []
    lease = Lease()
    assert (lease.kind, lease.slots, lease.env, lease.note, lease.fds) == ("cpu", [], {}, "", [])
    assert lease.root is None and lease.group_dir is None


def test_inside_a_slurm_job_the_lease_is_slurms():
    job = slots.slurm_job_lease(
        {"SLURM_JOB_ID": "77", "SLURMD_NODENAME": "gpu07", "CUDA_VISIBLE_DEVICES": " 2, 3 "}
    )
    assert (job.kind, job.slots, job.env, job.fds) == ("gpu", [2, 3], {}, [])
    assert job.describe() == "Slurm job 77 on gpu07 (GPUs 2,3)"
    one = slots.slurm_job_lease({"SLURM_JOB_ID": "8", "CUDA_VISIBLE_DEVICES": "1"})
    assert one.describe() == "Slurm job 8 (GPU 1)"
    cpu = slots.slurm_job_lease({"CUDA_VISIBLE_DEVICES": "GPU-1f2e"})  # not indices: no GPUs
    assert cpu.kind == "cpu" and cpu.slots == [] and cpu.describe() == "Slurm job ?"
    assert slots.slurm_job_lease({"SLURM_JOB_ID": "9", "SLURMD_NODENAME": ""}).describe() == (
        "Slurm job 9"
    )
    cpu.release()  # holds nothing


def test_slurm_job_lease_reads_the_process_environment(machine):
    machine.setenv("SLURM_JOB_ID", "41")
    machine.setenv("CUDA_VISIBLE_DEVICES", "0")
    machine.delenv("SLURMD_NODENAME", raising=False)
    assert slots.slurm_job_lease().describe() == "Slurm job 41 (GPU 0)"


def test_releasing_a_lease_frees_its_slots_once(tmp_path, machine):
    root = root_of(tmp_path)
    fds = [someone_holds(root / f"cpu-{i}.lock") for i in (0, 1)]
    lease = Lease("cpu", [0, 1], fds=list(fds), root=root)
    slot_leases.current_holder = lease
    assert slots.held_fds() == fds
    assert slots.held_fds() is not lease.fds  # a copy
    lease.release()
    assert all(closed(fd) for fd in fds) and lease.fds == []
    assert slot_leases.current_holder is None and slots.held_fds() == []
    assert not slot_leases.held(root / "cpu-0.lock") and not slot_leases.held(root / "cpu-1.lock")
    lease.release()  # again: nothing left to free


def test_releasing_another_lease_keeps_the_current_holder(tmp_path, machine):
    mine = Lease("cpu", [0])
    slot_leases.current_holder = mine
    gone = slot_leases.open_lock(tmp_path / "x.lock")
    os.close(gone)
    other = Lease("cpu", [1], fds=[gone])  # an fd closed already: no error
    other.release()
    assert slot_leases.current_holder is mine


def test_a_group_folder_goes_with_its_last_token(tmp_path):
    root = root_of(tmp_path)
    group = root / "groups" / "g"
    slot_leases.mkdirs(group)
    a, b = someone_holds(group / "token-0.lock"), someone_holds(group / "token-1.lock")
    (group / "notes").write_text("")  # anything else in it goes too
    first = Lease("cpu", [0], fds=[a], root=root, group_dir=group)
    first.release()
    assert group.exists()  # token-1 is still held
    Lease("cpu", [1], fds=[b], root=root, group_dir=group).release()
    assert not group.exists()
    slot_leases._sweep_group(group)  # gone already: nothing to do
    slot_leases.mkdirs(group)
    Lease("cpu", [1], fds=[], root=None, group_dir=group).release()  # no root: nothing swept
    Lease("cpu", [1], fds=[], root=root, group_dir=None).release()
    assert group.exists()


def test_a_process_started_by_a_slot_holder_is_not_foreign(tmp_path, nvml):
    import subprocess

    root = root_of(tmp_path)
    fd = someone_holds(root / "gpu-0.lock")
    slot_leases.write_holder(fd, ask("mine", 1.0))
    child = subprocess.Popen(["sleep", "30"])
    stale = slot_leases.open_lock(root / "gpu-1.lock")  # a record of an engine long gone
    os.pwrite(stale, json.dumps({"run_id": "old", "pid": stranger_pid()}).encode(), 0)
    dead = someone_holds(root / "cpu-0.lock")
    os.pwrite(dead, json.dumps({"run_id": "dead", "pid": GONE}).encode(), 0)
    someone_holds(root / "cpu-1.lock")  # a holder that wrote nothing yet
    try:
        ours = slot_leases._cockpit_pids(root)
        assert {os.getpid(), child.pid} <= ours and not {stranger_pid(), GONE} & ours
        nvml(
            {
                0: [(os.getpid(), 900.0), (child.pid, 100.0)],
                1: [(stranger_pid(), 2047.6), (GONE, 0.0)],
            }
        )
        assert slots.foreign_processes(root, [0, 1]) == {
            1: [
                {"pid": stranger_pid(), "name": name_of(stranger_pid()), "mem_mb": 2048},
                {"pid": GONE, "name": "?", "mem_mb": None},
            ]
        }
        nvml({0: [], 1: []})
        assert slots.foreign_processes(root, [0, 1]) == {}
    finally:
        child.kill()
        child.wait()
        os.close(stale)


def test_every_process_a_slot_holder_started_is_cockpits(tmp_path, nvml):
    import signal
    import subprocess

    root = root_of(tmp_path)
    tree = subprocess.Popen(
        ["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True
    )
    grandchild = int(tree.stdout.readline())
    fd = someone_holds(root / "gpu-0.lock")
    try:
        # the holder is another engine (the shell): it and what it started are cockpit's
        os.pwrite(fd, json.dumps({"run_id": "sh", "pid": tree.pid}).encode(), 0)
        assert slot_leases._cockpit_pids(root) == {tree.pid, grandchild}
        # this process holds the slot: its child's child (a torchrun rank) is cockpit's too
        slot_leases.write_holder(fd, ask("me", 1.0))
        assert {os.getpid(), tree.pid, grandchild} <= slot_leases._cockpit_pids(root)
        nvml({0: [(grandchild, 100.0), (stranger_pid(), 50.0)]})
        assert slots.foreign_processes(root, [0]) == {
            0: [{"pid": stranger_pid(), "name": name_of(stranger_pid()), "mem_mb": 50}]
        }
    finally:
        os.close(fd)
        os.kill(grandchild, signal.SIGKILL)
        tree.kill()
        tree.wait()
        tree.stdout.close()


# ---------------------------------------------------------------- tickets


def test_who_a_ticket_waits_behind():
    new = Ticket("1.new", "new", {"group": "g", "parallel": None})
    assert new.ahead_in_line("gpu") and new.ahead_in_line("cpu")  # its kind is not known yet
    assert new.ahead_in_group("g") and not new.ahead_in_group("h")
    grouped_new = Ticket("1.new", "new", {"group": "g", "parallel": 2})
    assert not grouped_new.ahead_in_line("gpu")  # it takes a group token first
    in_group = Ticket("1.group", "group", {"group": "g", "kind": "gpu"})
    assert in_group.ahead_in_group("g") and not in_group.ahead_in_line("gpu")
    line = Ticket("1.line", "line", {"group": "g", "kind": "gpu"})
    assert line.ahead_in_line("gpu") and not line.ahead_in_line("cpu")
    assert not line.ahead_in_group("g")  # it holds a token already
    assert Ticket("1.new", "new", {}).ahead_in_group(None)


def test_the_launcher_holds_the_runs_place_while_its_engine_boots(tmp_path, machine):
    clock = Clock()
    machine.setattr(slot_queue, "time", clock)
    folder = run_folder(tmp_path, "r1", created=9.5, group="g", group_parallel=2)
    slots.announce(folder)
    name = "0000000009.500000-r1.new"
    assert queue_files(tmp_path) == [name]
    info = json.loads((slots.slots_root(tmp_path) / "queue" / name).read_text())
    assert info == {
        "run_id": "r1",
        "run_dir": str(folder.path.resolve()),
        "group": "g",
        "parallel": 2,
        "since": clock.t,
    }
    # the queue is in creation order, whatever the number of digits
    slots.announce(run_folder(tmp_path, "r0", created=10.25))
    slots.announce(run_folder(tmp_path, "now"))  # no creation time recorded: now
    assert queue_files(tmp_path) == [
        name,
        "0000000010.250000-r0.new",
        f"{clock.t:017.6f}-now.new",
    ]
    assert slots.queued_runs(tmp_path) == ["r1", "r0", "now"]


def test_a_ticket_is_visible_only_locked_and_says_who_waits(tmp_path, machine):
    folder = run_folder(tmp_path, "r", created=3.0)
    slots.announce(folder)
    w = queued(tmp_path, ask("r", 3.0, "gpu", 2, group="g"), [0, 1])
    assert queue_files(tmp_path) == ["0000000003.000000-r.line"]  # the launcher's ticket went
    assert w.ticket == slots.slots_root(tmp_path) / "queue" / "0000000003.000000-r.line"
    assert slot_leases.held(w.ticket)
    assert json.loads(w.ticket.read_text()) == {
        "run_id": "r",
        "kind": "gpu",
        "need": 2,
        "group": "g",
        "pid": os.getpid(),
    }
    fd = w.ticket_fd
    w.close()
    assert queue_files(tmp_path) == [] and closed(fd) and w.ticket_fd is None
    w.close()  # twice: nothing left
    Waiter(w.root, ask("never", 4.0), [0]).close()  # stopped before it lined up


def test_a_dead_engines_ticket_is_skipped_and_swept(tmp_path, machine):
    dead = queued(tmp_path, ask("dead", 1.0), [0])
    dead_ticket = dead.ticket
    os.close(dead.ticket_fd)  # the engine was SIGKILLed: the kernel dropped its lock
    dead.ticket_fd = None
    w = queued(tmp_path, ask("next", 2.0), [0])
    lease, place = w.poll(1)
    assert lease is not None and lease.gpus == [0] and place == {}
    assert not dead_ticket.exists()
    lease.release()
    assert not slot_queue.ticket_alive(dead_ticket)  # gone: not alive, no error


def test_a_ticket_being_written_is_neither_counted_nor_swept(tmp_path, machine):
    root = root_of(tmp_path)
    holder = someone_holds(root / "gpu-0.lock")
    slot_leases.mkdirs(root / "queue")
    writing = root / "queue" / ".0000000001.000000-booting.new.tmp"  # announce(), mid-write
    writing.write_text('{"run_id": "booting"}')
    w = queued(tmp_path, ask("r", 2.0), [0])
    assert w.poll(1) == (
        None,
        {"queue": "1st in line for 1 GPU, 1 of 1 busy", "queue_position": 1},
    )
    assert slots.queued_runs(tmp_path) == ["r"]
    assert writing.exists()  # the launcher renames it into place next
    w.close()
    slot_leases.unlock_close(holder)


def test_a_half_created_ticket_waits_for_its_engine_to_boot(tmp_path, machine):
    clock = Clock()
    machine.setattr(slot_queue, "time", clock)
    folder = run_folder(tmp_path, "booting", created=1.0)
    slots.announce(folder)
    path = slots.slots_root(tmp_path) / "queue" / "0000000001.000000-booting.new"
    clock.t += slot_leases.BOOT_S - 0.5
    assert slot_queue.ticket_alive(path)  # its engine may still be importing
    clock.t += 1.0
    assert not slot_queue.ticket_alive(path) and not path.exists()  # it never came


def test_a_half_created_ticket_lives_and_dies_with_its_engine(tmp_path, machine):
    import subprocess

    clock = Clock()
    machine.setattr(slot_queue, "time", clock)
    folder = run_folder(tmp_path, "booting", created=1.0)
    slots.announce(folder)
    path = slots.slots_root(tmp_path) / "queue" / "0000000001.000000-booting.new"
    me = psutil.Process()
    write_json_atomic(folder.file("proc.json"), {"pid": me.pid, "create_time": me.create_time()})
    clock.t += 10 * slot_leases.BOOT_S  # booting for long, but the engine lives: it waits
    assert slot_queue.ticket_alive(path)
    write_json_atomic(
        folder.file("proc.json"), {"pid": me.pid, "create_time": 1.0, "host": "elsewhere"}
    )
    assert slot_queue.ticket_alive(path)  # another host's engine: cannot tell, so it waits
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_json_atomic(folder.file("proc.json"), {"pid": gone.pid, "create_time": 1.0})
    assert not slot_queue.ticket_alive(path) and not path.exists()


def test_a_half_created_ticket_without_a_run_folder_gets_the_boot_grace(tmp_path, machine):
    clock = Clock()
    machine.setattr(slot_queue, "time", clock)
    queue = root_of(tmp_path) / "queue"
    slot_leases.mkdirs(queue)
    fresh, old, bare = queue / "1-a.new", queue / "2-b.new", queue / "3-c.new"
    fresh.write_text(json.dumps({"run_id": "a", "since": clock.t - 1}))
    old.write_text(json.dumps({"run_id": "b", "run_dir": "", "since": clock.t - 31}))
    bare.write_text("")  # cut short: no since at all
    assert slot_queue.ticket_alive(fresh)
    assert not slot_queue.ticket_alive(old) and not slot_queue.ticket_alive(bare)
    assert os.listdir(queue) == ["1-a.new"]


# ---------------------------------------------------------------- the queue, one poll at a time


def test_the_freed_gpu_goes_to_the_run_created_first(tmp_path, machine):
    root = root_of(tmp_path)
    holder = someone_holds(root / "gpu-0.lock")
    late = queued(tmp_path, ask("late", 3.0), [0])  # lined up first, created later
    early = queued(tmp_path, ask("early", 2.0), [0])
    assert late.poll(1) == (None, {"queue": "2nd in line for 1 GPU", "queue_position": 2})
    assert early.poll(1) == (
        None,
        {"queue": "1st in line for 1 GPU, 1 of 1 busy", "queue_position": 1},
    )
    assert slots.queued_runs(tmp_path) == ["early", "late"]
    slot_leases.unlock_close(holder)
    assert late.poll(1)[0] is None  # free, but not its turn
    lease, place = early.poll(1)
    assert place == {} and lease.kind == "gpu" and lease.gpus == [0] and lease.root == root
    assert lease.env == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert early.ticket_fd is None and slots.queued_runs(tmp_path) == ["late"]
    assert slot_leases.read_holder(root / "gpu-0.lock")["run_id"] == "early"
    assert late.poll(1) == (
        None,
        {"queue": "1st in line for 1 GPU, 1 of 1 busy", "queue_position": 1},
    )
    lease.release()
    lease, _ = late.poll(1)
    assert lease.gpus == [0]
    lease.release()
    assert queue_files(tmp_path) == []


def test_a_run_needing_two_gpus_is_not_overtaken_and_holds_none_while_it_waits(tmp_path, machine):
    root = root_of(tmp_path)
    holder = someone_holds(root / "gpu-0.lock")
    pair = queued(tmp_path, ask("pair", 1.0, need=2), [0, 1])
    single = queued(tmp_path, ask("single", 2.0), [0, 1])
    assert pair.poll(1) == (
        None,
        {"queue": "1st in line for 2 GPUs, 1 of 2 busy", "queue_position": 1},
    )
    assert not slot_leases.held(root / "gpu-1.lock")  # the free one is not kept from others
    assert single.poll(1) == (None, {"queue": "2nd in line for 1 GPU", "queue_position": 2})
    slot_leases.unlock_close(holder)
    lease, _ = pair.poll(1)
    assert lease.gpus == [0, 1] and lease.describe() == "GPUs 0,1"
    assert lease.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert single.poll(1) == (
        None,
        {"queue": "1st in line for 1 GPU, 2 of 2 busy", "queue_position": 1},
    )
    lease.release()
    single.close()


def test_gpu_and_cpu_runs_wait_in_separate_lines(tmp_path, machine):
    root = root_of(tmp_path)
    holder = someone_holds(root / "gpu-0.lock")
    gpu = queued(tmp_path, ask("gpu", 1.0), [0])
    cpu = queued(tmp_path, ask("cpu", 2.0, "cpu"), [0])
    assert gpu.poll(2)[1]["queue_position"] == 1
    lease, _ = cpu.poll(2)  # not held up by the GPU run ahead of it
    assert lease.kind == "cpu" and lease.slots == [0] and lease.note == ""
    # a CPU run on a GPU machine must not wander onto a GPU (`device: auto`)
    assert lease.env == {"CUDA_VISIBLE_DEVICES": ""}
    lease.release()
    gpu.close()
    slot_leases.unlock_close(holder)


def test_a_booting_run_holds_every_line_unless_it_belongs_to_a_parallel_group(tmp_path, machine):
    slots.announce(run_folder(tmp_path, "booting", created=1.0))
    cpu = queued(tmp_path, ask("cpu", 2.0, "cpu"), [])
    assert cpu.poll(2) == (None, {"queue": "2nd in line for a CPU slot", "queue_position": 2})
    gpu = queued(tmp_path, ask("gpu", 3.0), [0])
    assert gpu.poll(2) == (None, {"queue": "2nd in line for 1 GPU", "queue_position": 2})
    slots.announce(run_folder(tmp_path, "member", created=0.5, group="g", group_parallel=2))
    assert cpu.poll(2)[1]["queue_position"] == 2  # the group's member lines up in its group first
    cpu.close()
    gpu.close()


def test_how_many_cpu_runs_go_at_once(tmp_path, machine):
    machine.setattr(slot_queue, "physical_cores", lambda: 8)
    machine.delenv("OMP_NUM_THREADS")
    runs = [queued(tmp_path, ask(f"r{i}", float(i), "cpu"), []) for i in range(3)]
    first, _ = runs[0].poll(2)
    second, _ = runs[1].poll(2)
    assert (first.slots, second.slots) == ([0], [1])
    assert first.env == {"OMP_NUM_THREADS": "4"}  # each its share of the cores
    assert runs[2].poll(2) == (
        None,
        {"queue": "1st in line for a CPU slot, 2 of 2 busy", "queue_position": 1},
    )
    third, _ = runs[2].poll(3)  # the setting raised while it waits: a third slot
    assert third.slots == [2] and third.env == {"OMP_NUM_THREADS": "2"}
    assert third.describe() == "CPU slot 2"
    for lease in (first, second, third):
        lease.release()


def test_lowering_the_cpu_slot_count_counts_the_runs_still_holding_higher_slots(tmp_path, machine):
    root = root_of(tmp_path)
    holders = [someone_holds(root / f"cpu-{i}.lock") for i in (1, 2)]  # from when it was 3
    w = queued(tmp_path, ask("r", 1.0, "cpu"), [])
    lease, place = w.poll(2)  # cpu-0 is free, but 2 runs already go: it waits
    assert lease is None and place["queue"].startswith("1st in line for a CPU slot, 2 of 2 busy")
    slot_leases.unlock_close(holders[0])
    lease, _ = w.poll(2)
    assert lease.slots == [0]
    lease.release()
    slot_leases.unlock_close(holders[1])


def test_a_ddp_run_on_cpus_takes_a_slot_per_process(tmp_path, machine):
    machine.setattr(slot_queue, "physical_cores", lambda: 6)
    machine.delenv("OMP_NUM_THREADS")
    root = root_of(tmp_path)
    holder = someone_holds(root / "cpu-1.lock")
    w = queued(tmp_path, ask("ddp", 1.0, "cpu", 2), [])
    lease, _ = w.poll(3)
    assert lease.slots == [0, 2] and lease.env == {"OMP_NUM_THREADS": "4"}
    assert lease.describe() == "CPU slot 0,2"
    assert all(slot_leases.read_holder(root / f"cpu-{i}.lock")["run_id"] == "ddp" for i in (0, 2))
    lease.release()
    slot_leases.unlock_close(holder)


def test_cpu_threads_per_run(tmp_path, machine):
    def env_of(gpus, cpu_slots, n=1, cores=8):
        machine.setattr(slot_queue, "physical_cores", lambda: cores)
        w = Waiter(root_of(tmp_path), ask("r", 1.0, "cpu", n), gpus)
        return w._env(list(range(n)), cpu_slots)

    machine.delenv("OMP_NUM_THREADS")
    assert env_of([], 4) == {"OMP_NUM_THREADS": "2"}
    assert env_of([], 4, n=2) == {"OMP_NUM_THREADS": "4"}
    assert env_of([], 4, cores=2) == {"OMP_NUM_THREADS": "1"}  # at least one thread
    assert env_of([], 3, cores=8) == {"OMP_NUM_THREADS": "2"}
    assert env_of([], 1) == {}  # the only CPU run: all the cores
    assert env_of([0], 2) == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}
    machine.setenv("OMP_NUM_THREADS", "3")
    assert env_of([], 4) == {}  # the user's own setting stands


def test_gpus_with_foreign_processes_are_taken_last(tmp_path, nvml):
    other = stranger_pid()
    nvml(
        {
            0: [(other, 100.0), (GONE, 100.0)],
            1: [(other, 1000.0)],
            2: [(other, None)],
            3: [],
        }
    )
    gpus = slots.gpu_indices()
    assert gpus == [0, 1, 2, 3]
    name = name_of(other)
    w = queued(tmp_path, ask("a", 1.0, need=2), gpus)
    a, _ = w.poll(1)
    assert a.gpus == [3, 2]  # none, then one using no memory
    assert a.note == f"GPU 2 also runs 1 process cockpit did not start ({name} pid {other})"
    b, _ = queued(tmp_path, ask("b", 2.0), gpus).poll(1)
    assert b.gpus == [0]  # less memory used than GPU 1, though more processes
    assert b.note == (
        f"GPU 0 also runs 2 processes cockpit did not start "
        f"({name} pid {other} 0.1 GB, ? pid {GONE} 0.1 GB)"
    )
    assert not slot_leases.held(slots.slots_root(tmp_path) / "gpu-1.lock")  # not kept
    c, _ = queued(tmp_path, ask("c", 3.0), gpus).poll(1)
    assert c.gpus == [1]
    for lease in (a, b, c):
        lease.release()


def test_a_process_whose_memory_nvml_cannot_tell_counts_as_using_none(tmp_path, nvml):
    other = stranger_pid()
    nvml({0: [(other, 1.0)], 1: [(other, None)]})
    lease, _ = queued(tmp_path, ask("a", 1.0), [0, 1]).poll(1)
    assert lease.gpus == [1]
    lease.release()


def test_an_ablation_group_runs_at_most_parallel_at_once(tmp_path, machine):
    root = root_of(tmp_path)

    def member(i):
        return queued(tmp_path, ask(f"g{i}", float(i), "cpu", group="grp", parallel=2), [])

    runs = [member(i) for i in range(4)]
    assert runs[0].ticket.suffix == ".group"
    a, _ = runs[0].poll(4)
    b, _ = runs[1].poll(4)
    assert a.slots == [0] and b.slots == [1]
    group = root / "groups" / "grp"
    assert a.group_dir == group and len(a.fds) == 2  # its CPU slot and its group token
    assert slot_leases.read_holder(group / "token-0.lock")["run_id"] == "g0"
    assert slot_leases.read_holder(group / "token-1.lock")["run_id"] == "g1"
    said = "in line in its ablation group: 2 of its runs at a time (--parallel 2)"
    assert runs[2].poll(4) == (None, {"queue": f"1st {said}", "queue_position": 1})
    assert runs[3].poll(4) == (None, {"queue": f"2nd {said}", "queue_position": 2})
    outsider = queued(tmp_path, ask("outsider", 9.0, "cpu"), [])
    c, _ = outsider.poll(4)
    assert c is not None and c.slots == [2]  # not held up by the group
    a.release()
    assert group.exists()  # b still holds a token
    got, _ = runs[2].poll(4)
    assert got.slots == [0] and got.group_dir == group
    for lease in (b, got, c):
        lease.release()
    assert not group.exists()  # no token held: swept (the next member makes it again)
    d, _ = runs[3].poll(4)
    assert d.group_dir == group and slot_leases.held(group / "token-0.lock")
    d.release()
    assert not group.exists()


def test_a_group_member_with_its_token_waits_in_the_device_line(tmp_path, machine):
    root = root_of(tmp_path)
    holder = someone_holds(root / "cpu-0.lock")
    w = queued(tmp_path, ask("g0", 1.0, "cpu", group="grp", parallel=1), [])
    lease, place = w.poll(1)
    assert lease is None
    assert place == {"queue": "1st in line for a CPU slot, 1 of 1 busy", "queue_position": 1}
    assert w.phase == "line" and w.ticket.suffix == ".line" and w.ticket.exists()
    assert slot_leases.held(root / "groups" / "grp" / "token-0.lock")  # kept while it waits
    later = queued(tmp_path, ask("g1", 2.0, "cpu", group="grp", parallel=1), [])
    assert later.poll(1)[1]["queue"].startswith("1st in line in its ablation group")
    slot_leases.unlock_close(holder)
    lease, _ = w.poll(1)
    assert (
        lease.slots == [0] and w.token_fd is None and queue_files(tmp_path) == [later.ticket.name]
    )
    later.close()
    assert slot_leases.held(root / "groups" / "grp" / "token-0.lock")  # now the lease's
    lease.release()
    assert not (root / "groups" / "grp").exists()


def test_a_waiter_that_leaves_gives_back_its_group_token(tmp_path, machine):
    root = root_of(tmp_path)
    holder = someone_holds(root / "cpu-0.lock")
    w = queued(tmp_path, ask("g0", 1.0, "cpu", group="grp", parallel=1), [])
    assert w.poll(1)[0] is None and w.token_fd is not None
    w.close()
    assert w.token_fd is None and not slot_leases.held(root / "groups" / "grp" / "token-0.lock")
    assert queue_files(tmp_path) == []
    slot_leases.unlock_close(holder)


# ---------------------------------------------------------------- acquire


def stop_after(n: int, then=None):
    """A should_stop that says stop on its n-th call (running ``then`` at its 2nd)."""
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        if len(calls) == 2 and then is not None:
            then()
        return len(calls) >= n

    return should_stop


def test_acquire_takes_a_free_slot_at_once(tmp_path, machine):
    machine.setenv(slots.FAKE_GPUS_ENV, "2")
    clock = Clock()
    machine.setattr(slot_queue, "time", clock)
    folder = run_folder(tmp_path, "r", created=1.0)
    told = []
    lease = slots.acquire(folder, folder.request(), lambda: False, told.append)
    assert lease.gpus == [0] and told == [] and clock.sleeps == []
    assert slot_leases.current_holder is lease and slots.held_fds() == lease.fds
    assert queue_files(tmp_path) == []
    lease.release()


def test_acquire_says_where_the_run_stands_once_per_change_and_leaves_when_stopped(
    tmp_path, machine
):
    machine.setenv(slots.FAKE_GPUS_ENV, "1")
    clock = Clock()
    machine.setattr(slot_queue, "time", clock)
    holder = someone_holds(root_of(tmp_path) / "gpu-0.lock")
    folder = run_folder(tmp_path, "r", created=1.0)
    told = []
    lease = slots.acquire(folder, folder.request(), stop_after(4), told.append, poll=0.5)
    assert lease is None
    assert told == [{"queue": "1st in line for 1 GPU, 1 of 1 busy", "queue_position": 1}]
    assert clock.sleeps == [0.5, 0.5, 0.5]
    assert queue_files(tmp_path) == [] and slot_leases.current_holder is None
    slot_leases.unlock_close(holder)


def test_acquire_takes_the_slot_once_it_frees(tmp_path, machine):
    machine.setenv(slots.FAKE_GPUS_ENV, "1")
    clock = Clock()
    machine.setattr(slot_queue, "time", clock)
    holder = someone_holds(root_of(tmp_path) / "gpu-0.lock")
    folder = run_folder(tmp_path, "r", created=1.0)
    told = []
    should_stop = stop_after(50, then=lambda: slot_leases.unlock_close(holder))
    lease = slots.acquire(folder, folder.request(), should_stop, told.append)
    assert lease is not None and lease.gpus == [0] and len(told) == 1
    assert clock.sleeps == [slots.POLL_S] and slots.POLL_S < 1  # starts well within a second
    lease.release()


def test_acquire_reads_the_cpu_slot_setting_while_it_waits(tmp_path, machine):
    machine.setenv(slots.FAKE_GPUS_ENV, "0")
    machine.setenv(slots.CPU_SLOTS_ENV, "1")
    machine.setattr(slot_queue, "time", Clock())
    holder = someone_holds(root_of(tmp_path) / "cpu-0.lock")
    folder = run_folder(tmp_path, "r", "gpus: 0\n", created=1.0)
    told = []
    should_stop = stop_after(50, then=lambda: machine.setenv(slots.CPU_SLOTS_ENV, "2"))
    lease = slots.acquire(folder, folder.request(), should_stop, told.append, poll=0)
    assert lease.slots == [1]
    assert told == [{"queue": "1st in line for a CPU slot, 1 of 1 busy", "queue_position": 1}]
    lease.release()
    slot_leases.unlock_close(holder)


def test_acquire_refuses_a_run_that_can_never_fit_before_lining_it_up(tmp_path, machine):
    machine.setenv(slots.FAKE_GPUS_ENV, "1")
    folder = run_folder(tmp_path, "big", "gpus: 2\n", created=1.0)
    with pytest.raises(
        slots.SlotError, match=r"asks for gpus: 2, but this machine has 1 GPU \(0\)"
    ):
        slots.acquire(folder, folder.request(), stop_after(3), lambda place: None, poll=0)
    assert not (tmp_path / ".slots").exists()


def test_acquire_stopped_before_its_first_attempt(tmp_path, machine):
    machine.setenv(slots.FAKE_GPUS_ENV, "1")
    folder = run_folder(tmp_path, "r", created=1.0)
    assert slots.acquire(folder, folder.request(), lambda: True, lambda place: None) is None
    assert queue_files(tmp_path) == []
    assert not slot_leases.held(slots.slots_root(tmp_path) / "gpu-0.lock")


# ---------------------------------------------------------------- what ls and the app show


def test_what_ls_says_about_cpu_slots(tmp_path, machine):
    machine.setenv(slots.FAKE_GPUS_ENV, "0")
    machine.setenv(slots.CPU_SLOTS_ENV, "2")
    where = f"(set with $COCKPIT_CPU_SLOTS or cpu_slots: in {tmp_path / 'cockpit.yaml'})"
    assert slots.describe_slots(tmp_path) == f"CPU slots: 0 of 2 busy  {where}"
    lease, _ = queued(tmp_path, ask("one", 1.0, "cpu"), []).poll(2)
    views = slots.slot_views(tmp_path)
    assert [v.to_json() for v in views] == [
        {"kind": "cpu", "index": 0, "run_id": "one", "since": views[0].since, "foreign": []},
        {"kind": "cpu", "index": 1, "run_id": None, "since": None, "foreign": []},
    ]
    assert views[0].since == slot_leases.read_holder(lease.root / "cpu-0.lock")["since"]
    assert slots.describe_slots(tmp_path) == f"CPU slots: 1 of 2 busy  {where}"
    queued(tmp_path, ask("two", 2.0, "cpu", 2), [])
    assert slots.describe_slots(tmp_path) == f"CPU slots: 1 of 2 busy, 1 queued  {where}"
    lease.release()  # its record stays in the file, but nobody holds the slot now
    assert [v.run_id for v in slots.slot_views(tmp_path)] == [None, None]
    assert slots.describe_slots(tmp_path) == f"CPU slots: 0 of 2 busy, 1 queued  {where}"
    machine.delenv(slots.CPU_SLOTS_ENV)
    (tmp_path / "cockpit.yaml").write_text("cpu_slots: 1\n")  # the workspace's own setting
    assert slots.describe_slots(tmp_path) == f"CPU slots: 0 of 1 busy, 1 queued  {where}"


def test_what_ls_says_about_gpus(tmp_path, nvml):
    other = stranger_pid()
    nvml({0: [], 1: [(other, 512.0), (GONE, None)], 2: []})
    a, _ = queued(tmp_path, ask("a", 1.0), [0, 1, 2]).poll(1)
    assert slots.describe_slots(tmp_path) == "GPUs: 0 a · 1 free + 2 foreign processes · 2 free"
    views = slots.slot_views(tmp_path)
    assert [(v.kind, v.index, v.run_id) for v in views] == [
        ("gpu", 0, "a"),
        ("gpu", 1, None),
        ("gpu", 2, None),
    ]
    assert views[1].foreign == [
        {"pid": other, "name": name_of(other), "mem_mb": 512},
        {"pid": GONE, "name": "?", "mem_mb": None},
    ]
    nvml({0: [], 1: [(other, 512.0)], 2: []})
    queued(tmp_path, ask("b", 2.0, need=3), [0, 1, 2])
    assert slots.describe_slots(tmp_path) == (
        "GPUs: 0 a · 1 free + 1 foreign process · 2 free  (1 queued)"
    )
    a.release()
    assert slots.describe_slots(tmp_path) == (
        "GPUs: 0 free · 1 free + 1 foreign process · 2 free  (1 queued)"
    )


def test_the_queue_as_listed(tmp_path, machine):
    assert slots.queued_runs(tmp_path) == []  # no queue yet
    queue = root_of(tmp_path) / "queue"
    slot_leases.mkdirs(queue)
    w = queued(tmp_path, ask("second", 2.0), [0])
    anonymous = someone_holds(queue / "0000000001.000000-anon.line")  # nothing written yet
    (queue / ".0000000000.500000-tmp.tmp").write_text("{}")  # being written: not a ticket
    dead = queue / "0000000000.100000-dead.line"
    dead.write_text(json.dumps({"run_id": "dead"}))  # nobody holds it
    assert slots.queued_runs(tmp_path) == ["0000000001.000000-anon.line", "second"]
    assert not dead.exists()
    w.close()
    slot_leases.unlock_close(anonymous)
