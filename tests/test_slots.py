"""Device slots and the queue (engine/torchfree/slots/), end to end with threads and engine
processes: placement, FIFO order with places, group caps, CPU slot settings, foreign GPU
processes, no stale leases — and a queued run that starts once a slot frees although the
command that launched it has long exited. The same logic one poll at a time, without waiting,
is in tests/test_slots_units.py (what the mutation benchmark judges slots by)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine.torchfree import slots
from engine.torchfree.runfolder import RunFolder, iter_runs, write_json_atomic
from engine.torchfree.slots import devices as slot_devices
from engine.torchfree.slots import leases as slot_leases
from tests.conftest import ROOT, ZOO, cockpit, wait_for

BLOBS = ZOO / "blobs.yaml"


def fake_run(
    ws: Path,
    name: str,
    *,
    gpus: int = 1,
    device: str = "auto",
    group: str | None = None,
    parallel: int | None = None,
    created: float | None = None,
) -> RunFolder:
    """A run folder with just what the scheduler reads (no engine)."""
    path = ws / name
    path.mkdir()
    (path / "preset.yaml").write_text(f"gpus: {gpus}\ndevice: {device}\n")
    write_json_atomic(
        path / "run.json",
        {"created": created or time.time(), "group": group, "group_parallel": parallel},
    )
    return RunFolder(path)


def take(folder: RunFolder) -> slots.Lease:
    lease = slots.acquire(folder, folder.request(), lambda: False, lambda place: None, poll=0.02)
    assert lease is not None
    return lease


class Waiter(threading.Thread):
    """acquire() on a thread, recording the places it is told about."""

    def __init__(self, folder: RunFolder):
        super().__init__(daemon=True)
        self.folder = folder
        self.places: list[dict] = []
        self.lease: slots.Lease | None = None
        self.halt = False

    def run(self) -> None:
        self.lease = slots.acquire(
            self.folder, self.folder.request(), lambda: self.halt, self.places.append, poll=0.02
        )

    def place(self) -> str:
        return self.places[-1]["queue"] if self.places else ""


@pytest.fixture
def gpus4(monkeypatch):
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "4")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(slots.CPU_SLOTS_ENV, raising=False)


def test_runs_get_their_own_gpus_and_cuda_visible_devices(workspace, gpus4):
    a = take(fake_run(workspace, "a"))
    b = take(fake_run(workspace, "b"))
    pair = take(fake_run(workspace, "pair", gpus=2))
    assert (a.gpus, b.gpus, pair.gpus) == ([0], [1], [2, 3])
    assert pair.env == {"CUDA_VISIBLE_DEVICES": "2,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    views = {v.index: v.run_id for v in slots.slot_views(workspace)}
    assert views == {0: "a", 1: "b", 2: "pair", 3: "pair"}
    assert slots.describe_slots(workspace) == "GPUs: 0 a · 1 b · 2 pair · 3 pair"
    for lease in (a, b, pair):
        lease.release()
    assert all(v.run_id is None for v in slots.slot_views(workspace))


def test_cpu_run_on_a_gpu_machine_hides_the_gpus(workspace, gpus4):
    lease = take(fake_run(workspace, "cpu", gpus=0))
    assert lease.kind == "cpu" and lease.gpus == [] and lease.env["CUDA_VISIBLE_DEVICES"] == ""
    lease.release()


def test_queue_is_fifo_says_each_place_and_moves_up_when_a_slot_frees(workspace, monkeypatch):
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "1")
    holder = take(fake_run(workspace, "holder", created=1.0))
    first = Waiter(fake_run(workspace, "first", created=2.0))
    second = Waiter(fake_run(workspace, "second", created=3.0))
    second.start()  # started first, created later: it must still wait behind `first`
    wait_for(second.place)
    first.start()
    wait_for(lambda: first.place() == "1st in line for 1 GPU, 1 of 1 busy")
    wait_for(lambda: second.place() == "2nd in line for 1 GPU")
    assert second.places[-1]["queue_position"] == 2
    assert slots.queued_runs(workspace) == ["first", "second"]
    holder.release()
    first.join(timeout=10)
    assert first.lease is not None and first.lease.gpus == [0]
    wait_for(lambda: second.place().startswith("1st in line"))
    first.lease.release()
    second.join(timeout=10)
    assert second.lease is not None
    second.lease.release()


def test_a_waiter_told_to_stop_leaves_the_queue(workspace, monkeypatch):
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "1")
    holder = take(fake_run(workspace, "holder"))
    waiter = Waiter(fake_run(workspace, "waiter"))
    waiter.start()
    wait_for(waiter.place)
    waiter.halt = True
    waiter.join(timeout=10)
    assert waiter.lease is None and slots.queued_runs(workspace) == []
    holder.release()


HOLD = """
import sys, time
from engine.torchfree import slots
from engine.torchfree.runfolder import RunFolder
f = RunFolder(sys.argv[1])
lease = slots.acquire(f, f.request(), lambda: False, lambda place: print(place["queue"], flush=True), poll=0.02)
print("holding", flush=True)
time.sleep(600)
"""


def hold_in_subprocess(folder: RunFolder, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder.path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )


def test_no_stale_lease_or_ticket_after_an_engine_dies_hard(workspace, monkeypatch):
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "1")
    env = {slots.FAKE_GPUS_ENV: "1", "PATH": "/usr/bin:/bin"}
    holder = hold_in_subprocess(fake_run(workspace, "holder", created=1.0), env)
    assert holder.stdout.readline().strip() == "holding"
    doomed = hold_in_subprocess(fake_run(workspace, "doomed", created=2.0), env)
    assert doomed.stdout.readline().startswith("1st in line")
    doomed.kill()  # SIGKILL while queued: its ticket must not keep anyone waiting
    doomed.wait()
    survivor = Waiter(fake_run(workspace, "survivor", created=3.0))
    survivor.start()
    wait_for(lambda: survivor.place().startswith("1st in line"))
    holder.kill()  # SIGKILL while holding the GPU: the kernel drops its lock
    holder.wait()
    survivor.join(timeout=10)
    assert survivor.lease is not None and survivor.lease.gpus == [0]
    survivor.lease.release()


def test_an_ablation_group_runs_at_most_parallel_at_once(workspace, monkeypatch):
    monkeypatch.delenv(slots.FAKE_GPUS_ENV, raising=False)
    monkeypatch.setenv(slots.CPU_SLOTS_ENV, "3")
    monkeypatch.setattr(slot_devices, "_nvml_count", lambda: 0)
    runs = [
        fake_run(workspace, f"g{i}", group="grp", parallel=2, created=float(i)) for i in range(3)
    ]
    a, b = take(runs[0]), take(runs[1])
    third = Waiter(runs[2])
    third.start()
    wait_for(
        lambda: (
            third.place()
            == "1st in line in its ablation group: 2 of its runs at a time (--parallel 2)"
        )
    )
    outsider = take(
        fake_run(workspace, "outsider", gpus=0, created=9.0)
    )  # not held up by the group
    assert outsider.kind == "cpu"
    a.release()
    third.join(timeout=10)
    assert third.lease is not None
    for lease in (b, third.lease, outsider):
        lease.release()
    assert not (slots.slots_root(workspace) / "groups" / "grp").exists()


def test_a_launched_run_keeps_its_place_while_its_engine_boots(workspace, monkeypatch):
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "1")
    booting = fake_run(workspace, "booting", created=1.0)
    slots.announce(booting)
    later = Waiter(fake_run(workspace, "later", created=2.0))
    later.start()
    wait_for(lambda: later.place() == "2nd in line for 1 GPU")
    # the engine died before taking its place: the ticket goes, the next run starts
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_json_atomic(booting.file("proc.json"), {"pid": dead.pid, "create_time": 1.0})
    later.join(timeout=10)
    assert later.lease is not None
    later.lease.release()


def test_cpu_slots_come_from_the_env_then_the_workspace_file(workspace, monkeypatch):
    monkeypatch.delenv(slots.CPU_SLOTS_ENV, raising=False)
    default = max(1, slots.physical_cores() // 2)
    assert slots.cpu_slot_count(workspace) == default
    (workspace / "cockpit.yaml").write_text("cpu_slots: 5\n")
    assert slots.cpu_slot_count(workspace) == 5
    monkeypatch.setenv(slots.CPU_SLOTS_ENV, "3")
    assert slots.cpu_slot_count(workspace) == 3
    monkeypatch.setenv(slots.CPU_SLOTS_ENV, "many")
    with pytest.raises(
        slots.SlotError, match=r"\$COCKPIT_CPU_SLOTS is 'many': expected a whole number"
    ):
        slots.cpu_slot_count(workspace)
    monkeypatch.delenv(slots.CPU_SLOTS_ENV)
    (workspace / "cockpit.yaml").write_text("cpu_slots: 0\n")
    with pytest.raises(slots.SlotError, match=r"cockpit.yaml: cpu_slots is '0'"):
        slots.cpu_slot_count(workspace)


def test_cpu_slots_split_the_cores_between_runs(workspace, monkeypatch):
    monkeypatch.setenv(slots.CPU_SLOTS_ENV, "2")
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "0")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    lease = take(fake_run(workspace, "cpu", gpus=0))
    assert lease.env == {"OMP_NUM_THREADS": str(max(1, slots.physical_cores() // 2))}
    lease.release()


def test_a_run_asking_for_more_gpus_than_the_machine_has_is_refused(workspace, monkeypatch):
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "2")
    big = fake_run(workspace, "big", gpus=4)
    with pytest.raises(slots.SlotError, match="asks for gpus: 4, but this machine has 2 GPUs"):
        slots.acquire(big, big.request(), lambda: False, lambda place: None)


def test_visible_devices_narrow_the_gpus(monkeypatch):
    env = {slots.FAKE_GPUS_ENV: "4", "CUDA_VISIBLE_DEVICES": "1,3"}
    assert slots.gpu_indices(env) == [1, 3]
    assert slots.gpu_indices({slots.FAKE_GPUS_ENV: "4", "CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(slots.SlotError, match="expected a number of GPUs"):
        slots.gpu_indices({slots.FAKE_GPUS_ENV: "four"})


def test_foreign_gpu_processes_are_shown_and_avoided(workspace, monkeypatch):
    monkeypatch.setenv(slots.FAKE_GPUS_ENV, "2")
    # not our child: a descendant of a slot holder would count as the holder's own process
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
    )
    stranger = psutil.Process(int(out.stdout))
    try:
        monkeypatch.setattr(
            slot_leases, "gpu_processes", lambda indices: {0: [(stranger.pid, 2048.0)], 1: []}
        )
        lease = take(fake_run(workspace, "mine"))
        assert lease.gpus == [1] and lease.note == ""  # the GPU nobody else uses
        crowded = take(fake_run(workspace, "crowded"))
        assert crowded.gpus == [0]
        name = psutil.Process(stranger.pid).name()
        assert (
            crowded.note
            == f"GPU 0 also runs 1 process cockpit did not start ({name} pid {stranger.pid} 2.0 GB)"
        )
        views = slots.slot_views(workspace)
        assert views[0].foreign == [{"pid": stranger.pid, "name": name, "mem_mb": 2048}]
        assert views[1].foreign == []
        assert slots.describe_slots(workspace) == "GPUs: 0 crowded + 1 foreign process · 1 mine"
        # a process of a cockpit run is not foreign
        monkeypatch.setattr(
            slot_leases, "gpu_processes", lambda indices: {1: [(psutil.Process().pid, 10.0)]}
        )
        assert slots.foreign_processes(slots.slots_root(workspace), [0, 1]) == {}
        lease.release()
        crowded.release()
    finally:
        stranger.kill()


@pytest.mark.slow
def test_a_queued_run_starts_when_the_slot_frees_with_no_launcher_left(workspace):
    env = {slots.CPU_SLOTS_ENV: "1"}
    long = cockpit(
        "run",
        str(BLOBS),
        "--stages",
        "train",
        "--set",
        "train.steps=100000",
        "--detach",
        workspace=workspace,
        env=env,
    )
    short = cockpit(
        "run",
        str(BLOBS),
        "--stages",
        "train",
        "--set",
        "train.steps=20",
        "--detach",
        workspace=workspace,
        env=env,
    )
    assert long.returncode == 0 and short.returncode == 0  # both launchers are gone now
    first, second = list(iter_runs(workspace))
    wait_for(lambda: first.summary().get("status") == "running", timeout=60)
    wait_for(lambda: second.summary().get("queue"), timeout=30)
    assert second.summary()["status"] == "queued"
    assert second.summary()["queue"] == "1st in line for a CPU slot, 1 of 1 busy"
    ls = cockpit("ls", workspace=workspace, env=env)
    assert (
        "queued (1st in line for a CPU slot" in ls.stdout
        and "CPU slots: 1 of 1 busy, 1 queued" in ls.stdout
    )
    assert cockpit("kill", first.run_id, workspace=workspace).returncode == 0
    wait_for(lambda: second.summary().get("status") == "passed", timeout=60)
    s = second.summary()
    assert (
        s["started"] >= first.summary()["ended"]
        and s["queue"] is None
        and s["slots"] == "CPU slot 0"
    )
    assert len(second.steps()) == 20


def test_cockpit_run_asking_for_too_many_gpus_exits_2(workspace):
    r = cockpit(
        "run", str(BLOBS), "--set", "gpus=2", workspace=workspace, env={slots.FAKE_GPUS_ENV: "1"}
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "cockpit: the preset asks for gpus: 2, but this machine has 1 GPU (0); "
        "lower gpus, or set gpus: 0 to train on the CPU."
    )
