"""Faults, and nothing lost: corrupted run folders (every file of the folder, every way a file
goes bad) never hide the other runs from `cockpit ls`, `ls --json`, the app's watcher, fork,
kill or pruning; kill -9 at random points during writes leaves only whole records; a real full
file system (a small tmpfs) gives 'no space left on device' in one sentence, a verdict on
disk and no temp files; planted checkpoints and forged proc/worker records run and signal
nothing; user-code failures keep their cause; new run folders are private.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cockpit import cli, launch
from cockpit.fork import fork_run
from engine.torchfree import pruning, slots
from engine.torchfree.runfolder import (
    RECORD_SIZE,
    JsonlAppender,
    RunFolder,
    StepsAppender,
    read_json,
    remove_temp_files,
    write_json_atomic,
)
from tests.app.workspaces import RunSpec, loss_rows, write_run
from tests.conftest import ROOT, ZOO

GOOD = "good-20260101-000000-aaaa"
BAD = "bad-20260101-000001-bbbb"


def healthy(ws: Path, run_id: str, **kw) -> RunFolder:
    spec = RunSpec(
        run_id,
        verdicts=[("init", "pass", "fine")],
        steps=loss_rows(range(1, 11), 0),
        evals=[{"step": 10, "time": 1.0, "stage": "init", "val_loss": 0.5, "accuracy": 0.9}],
        telemetry=[{"t": 1.0, "gpu": {"index": 0, "util": 50.0}, "data_wait": 0.1}],
        checkpoint_step=10,
        group="g",
        **kw,
    )
    folder = write_run(ws, spec)
    JsonlAppender(folder.file("events.jsonl")).append({"event": "run_end", "status": "passed"})
    JsonlAppender(folder.file("workers.jsonl")).append({"pid": 4_000_000, "create_time": 1.0})
    write_json_atomic(folder.file("proc.json"), {"pid": 4_000_000, "create_time": 1.0})
    return folder


def _replace(path: Path, data: bytes | str) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _fifo(path: Path) -> None:
    _replace(path, b"")
    path.unlink()
    os.mkfifo(path)


def _folder(path: Path) -> None:
    _replace(path, b"")
    path.unlink()
    path.mkdir()


DEEP = "[" * 100_000 + "]" * 100_000
NOT_UTF8 = b'{"status": "passed", "preset": "\xff\xfe"}'
SUMMARY = {"run_id": BAD, "preset": "blobs", "status": "passed", "stages": [], "created": 1.0}

# one corruption of one file each: (file, how) -> (write it, words the run shows, or None
# when the run still reads normally)
CORRUPTIONS = {
    ("summary.json", "a-list"): (lambda p: _replace(p, "[1, 2]"), "holds a list"),
    ("summary.json", "a-string"): (lambda p: _replace(p, '"passed"'), "holds a string"),
    ("summary.json", "a-number"): (lambda p: _replace(p, "42"), "holds a number"),
    ("summary.json", "null"): (lambda p: _replace(p, "null"), "holds null"),
    ("summary.json", "truncated"): (lambda p: _replace(p, '{"status": "pas'), "not valid JSON"),
    ("summary.json", "empty"): (lambda p: _replace(p, ""), "is empty"),
    ("summary.json", "not-utf8"): (lambda p: _replace(p, NOT_UTF8), "not UTF-8"),
    ("summary.json", "deep"): (lambda p: _replace(p, DEEP), "not valid JSON"),
    ("summary.json", "fifo"): (_fifo, "cannot be read"),
    ("summary.json", "folder"): (_folder, "cannot be read"),
    ("summary.json", "stages-text"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "stages": "init"})),
        "'stages' is a string",
    ),
    ("summary.json", "stages-numbers"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "stages": [1, 2]})),
        "'stages' is a list",
    ),
    ("summary.json", "stage-name-number"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "stages": [{"name": 3}]})),
        "a stage's 'name'",
    ),
    ("summary.json", "created-text"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "created": "yesterday"})),
        "'created' is a string",
    ),
    ("summary.json", "status-number"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "status": 42})),
        "'status' is a number",
    ),
    ("summary.json", "status-unknown"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "status": "exploded"})),
        "'status' is 'exploded'",
    ),
    ("summary.json", "names-text"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "stage_names": "init"})),
        "'stage_names'",
    ),
    ("summary.json", "overrides-list"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "overrides": [1]})),
        "'overrides'",
    ),
    ("summary.json", "fork-step-text"): (
        lambda p: _replace(p, json.dumps({**SUMMARY, "fork_step": "x"})),
        "'fork_step'",
    ),
    ("run.json", "a-list"): (lambda p: _replace(p, "[]"), None),
    ("run.json", "garbage"): (lambda p: _replace(p, b"\x00\xff garbage"), None),
    ("run.json", "fifo"): (_fifo, None),
    ("preset.yaml", "garbage"): (lambda p: _replace(p, b"\xff\xfe{[: :"), None),
    ("preset.yaml", "fifo"): (_fifo, None),
    ("steps.bin", "odd-length"): (lambda p: _replace(p, b"\x01" * (RECORD_SIZE * 3 + 5)), None),
    ("steps.bin", "random"): (lambda p: _replace(p, random.Random(0).randbytes(720)), None),
    ("steps.bin", "nan-inf"): (
        lambda p: _replace(p, (b"\xff" * 8 + b"\x00\x00\x00\x00\x00\x00\xf0\x7f") * 45),
        None,
    ),
    ("steps.bin", "fifo"): (_fifo, None),
    ("steps.bin", "folder"): (_folder, None),
    ("steps.json", "no-columns"): (lambda p: _replace(p, '{"columns": []}'), None),
    ("steps.json", "number-columns"): (lambda p: _replace(p, '{"columns": [1, 2]}'), None),
    ("steps.json", "text-columns"): (lambda p: _replace(p, '{"columns": "step"}'), None),
    ("steps.json", "duplicate-columns"): (lambda p: _replace(p, '{"columns": ["a", "a"]}'), None),
    ("steps.json", "many-columns"): (
        lambda p: _replace(p, json.dumps({"columns": [f"c{i}" for i in range(5000)]})),
        None,
    ),
    ("evals.jsonl", "bad-line"): (lambda p: _replace(p, '{"step": 1\nnot json\n'), None),
    ("evals.jsonl", "list-line"): (lambda p: _replace(p, "[1, 2]\n3\n"), None),
    ("evals.jsonl", "not-utf8"): (lambda p: _replace(p, b'{"accuracy": "\xff"}\n'), None),
    ("evals.jsonl", "accuracy-text"): (lambda p: _replace(p, '{"accuracy": "high"}\n'), None),
    ("evals.jsonl", "deep-line"): (lambda p: _replace(p, DEEP + "\n"), None),
    ("evals.jsonl", "fifo"): (_fifo, None),
    ("telemetry.jsonl", "util-text"): (lambda p: _replace(p, '{"gpu": {"util": "x"}}\n'), None),
    ("telemetry.jsonl", "gpu-list"): (lambda p: _replace(p, '{"gpu": [1]}\n'), None),
    ("telemetry.jsonl", "garbage"): (lambda p: _replace(p, b"\x00" * 100 + b"\n"), None),
    ("telemetry.jsonl", "fifo"): (_fifo, None),
    ("events.jsonl", "garbage"): (lambda p: _replace(p, b"\xff\n[]\n"), None),
    ("events.jsonl", "fifo"): (_fifo, None),
    ("engine.log", "not-utf8"): (lambda p: _replace(p, b"\xff\xfe\x00 log"), None),
    ("engine.log", "fifo"): (_fifo, None),
    ("proc.json", "pid-text"): (lambda p: _replace(p, '{"pid": "1234"}'), None),
    ("proc.json", "pid-list"): (lambda p: _replace(p, '{"pid": [1]}'), None),
    ("proc.json", "pid-negative"): (lambda p: _replace(p, '{"pid": -1, "create_time": 1}'), None),
    ("proc.json", "pid-one"): (lambda p: _replace(p, '{"pid": 1, "pgid": 1}'), None),
    ("proc.json", "pid-huge"): (lambda p: _replace(p, '{"pid": 99999999999999999999}'), None),
    ("proc.json", "time-text"): (
        lambda p: _replace(p, '{"pid": 4000000, "create_time": "x"}'),
        None,
    ),
    ("proc.json", "garbage"): (lambda p: _replace(p, b"\x00\x01"), None),
    ("checkpoints/latest.json", "garbage"): (lambda p: _replace(p, b"\xff{"), None),
    ("checkpoints/latest.json", "a-list"): (lambda p: _replace(p, "[]"), None),
    ("checkpoints", "a-file"): (lambda p: _replace(p, "not a folder"), None),
    ("workers.jsonl", "garbage"): (lambda p: _replace(p, b'{"pid": "x"}\n\xff\n[1]\n'), None),
    ("workers.jsonl", "pid-one"): (lambda p: _replace(p, '{"pid": 1, "create_time": 0}\n'), None),
}


def _ls_json(capsys, ws: Path) -> dict:
    assert cli.main(["ls", "--json", "--workspace", str(ws)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return {row["run_id"]: row for row in json.loads(out.out)}


@pytest.mark.parametrize(
    "name, how", sorted(CORRUPTIONS), ids=[f"{n}-{h}" for n, h in sorted(CORRUPTIONS)]
)
def test_one_corrupted_run_never_hides_another(capsys, tmp_path, monkeypatch, name, how):
    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "0")
    ws = tmp_path / "ws"
    good = healthy(ws, GOOD)
    bad = healthy(ws, BAD)
    good_summary = good.file("summary.json").read_bytes()
    corrupt, words = CORRUPTIONS[(name, how)]
    corrupt(bad.path / name)

    rows = _ls_json(capsys, ws)  # ls --json: both runs, the good one whole
    assert set(rows) == {GOOD, BAD}
    assert rows[GOOD]["status"] == "passed" and rows[GOOD]["step"] == 10
    assert rows[GOOD]["metric"] == 0.9
    if words:
        assert rows[BAD]["status"] == "unreadable" and words in rows[BAD]["reason"]
    else:
        assert rows[BAD]["status"] != "unreadable", rows[BAD]["reason"]

    assert cli.main(["ls", "--workspace", str(ws)]) == 0  # the table too
    out = capsys.readouterr()
    assert GOOD in out.out and BAD in out.out and "Traceback" not in out.err

    from cockpit.app.messages import RunsUpdated
    from cockpit.app.watcher import WorkspaceWatcher

    posted = []
    WorkspaceWatcher(ws, posted.append).scan()  # what the app's runs list gets
    runs = [m for m in posted if isinstance(m, RunsUpdated)][-1].runs
    assert {r.snapshot.run_id for r in runs} == {GOOD, BAD}

    rc = cli.main(["kill", BAD, "--workspace", str(ws)])  # kill signals nothing, says so
    out = capsys.readouterr()
    assert rc == 0 and "not running" in out.out and "Traceback" not in out.err
    assert good.file("summary.json").read_bytes() == good_summary

    child, proc = fork_run(ws, good, {"seed": 1}, start=False)  # fork the good one beside it
    assert proc is None and child.summary()["parent"] == GOOD

    peers = pruning.GroupPeers(ws, "g", child.run_id)  # pruning reads the group's runs
    peers.refresh()
    assert GOOD in peers.rows


# ---- kill -9 at random points during writes ------------------------------------------------

WRITER = """
import math, sys
from pathlib import Path
from engine.torchfree.runfolder import JsonlAppender, StepsAppender, write_json_atomic
run = Path(sys.argv[1])
steps = StepsAppender(run / "steps.bin")
evals = JsonlAppender(run / "evals.jsonl")
for i in range(1, 10**9):
    steps.append(i, 0.0, 0, 1.0 / i, math.nan, 0.0, 0.0, math.nan, 1e-3)
    evals.append({"step": i, "accuracy": 0.5, "pad": "x" * (i % 97)})
    write_json_atomic(run / "summary.json", {"status": "running", "step": i, "stages": []})
    print(i, flush=True)
"""


@pytest.mark.parametrize("seed", range(8))
def test_kill_9_at_a_random_point_loses_nothing_written(tmp_path, seed):
    run = tmp_path / "ws" / "run"
    run.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(run)], stdout=subprocess.PIPE, env=env, text=True
    )
    first = writer.stdout.readline()  # it is writing
    assert first.strip() == "1"
    time.sleep(random.Random(seed).uniform(0.0, 0.25))
    writer.send_signal(signal.SIGKILL)
    reported = [first, *writer.stdout.read().split()]
    writer.wait()
    done = int(reported[-1])  # everything it said it wrote must be there, whole
    folder = RunFolder(run)
    size = folder.file("steps.bin").stat().st_size
    assert size % RECORD_SIZE == 0
    steps = folder.steps()
    assert len(steps) >= done
    assert list(steps["step"]) == [float(i) for i in range(1, len(steps) + 1)]
    rows = folder.evals()
    assert len(rows) >= done and [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert folder.summary()["step"] >= done  # atomic: the old one or the new one, never half
    remove_temp_files(run)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    snap = folder.snapshot()  # read back as what it is: a run whose writer died
    assert snap.status == "error" and "gone without a word" in snap.reason


# ---- a real full file system -------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs of our own (skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the file system holding ``path`` until only ``leave`` bytes are free."""
    filler = path / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            st = os.statvfs(path)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                os.write(fd, bytes(min(free, 1 << 20)))
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler


def test_appends_on_a_full_disk_never_leave_a_torn_record(small_fs):
    fill(small_fs, leave=8192 + 100)
    steps = StepsAppender(small_fs / "steps.bin")
    lines = JsonlAppender(small_fs / "evals.jsonl")
    with pytest.raises(OSError) as e:
        for i in range(100_000):
            steps.append_many([(float(i),) * 9] * 7)  # 504 bytes: never a multiple of a page
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(small_fs / "steps.bin")
    assert (small_fs / "steps.bin").stat().st_size % RECORD_SIZE == 0
    with pytest.raises(OSError):
        for i in range(100_000):
            lines.append({"step": i, "pad": "y" * 333})
    raw = (small_fs / "evals.jsonl").read_bytes()
    assert raw == b"" or raw.endswith(b"\n")
    assert all(json.loads(line)["step"] >= 0 for line in raw.splitlines())


def test_a_summary_on_a_full_disk_stays_the_old_one_and_leaves_no_temp_file(small_fs):
    path = small_fs / "summary.json"
    write_json_atomic(path, {"status": "running"})
    fill(small_fs)
    with pytest.raises(OSError) as e:
        write_json_atomic(path, {"status": "passed", "pad": "z" * 100_000})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert read_json(path) == {"status": "running"}
    assert not list(small_fs.glob(".*.tmp"))


def test_a_checkpoint_on_a_full_disk_says_no_space_not_a_torch_internal_error(small_fs):
    import torch

    from engine import checkpoint

    folder = RunFolder(small_fs / "run")
    folder.path.mkdir()
    (folder.path / "checkpoints").mkdir()
    fill(small_fs, leave=20_000)
    model = torch.nn.Linear(256, 256)  # 257 kB of weights
    with pytest.raises(OSError) as e:
        checkpoint.save(folder, model, None, 5, "train")
    assert e.value.errno == errno.ENOSPC and "step_000000005.pt" in e.value.filename
    assert not list((folder.path / "checkpoints").iterdir())  # the partial temp file is gone


def test_creating_a_run_on_a_full_disk_is_one_sentence_and_leaves_nothing(small_fs, capsys):
    ws = small_fs / "ws"
    ws.mkdir()
    fill(small_fs, leave=64 << 10)  # less than a run's reserve
    rc = cli.main(["run", str(ZOO / "blobs.yaml"), "--workspace", str(ws)])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no space left on device" in err
    assert [p.name for p in ws.iterdir()] == []


@pytest.mark.slow
def test_the_engine_on_a_full_disk_records_why_and_cleans_up(small_fs, capsys, monkeypatch):
    from cockpit.launch import create_run
    from engine.runner import Runner
    from engine.torchfree import preset as presets

    monkeypatch.setenv("COCKPIT_CPU_SLOTS", "1")
    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "0")
    ws = small_fs / "ws"
    overrides = {"train": {"steps": 2000, "eval_every": 0, "checkpoint_every": 0}}
    preset = presets.load(ZOO / "blobs.yaml", overrides)
    folder = create_run(ws, preset, overrides=overrides, stages=["train"])
    fill(small_fs, leave=40_000)  # 2000 steps need 144 kB; the run's 256 kB reserve is apart
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = Runner(folder).run()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    s = folder.summary()
    assert code == 1 and s["status"] == "error"
    assert "no space left on device on" in s["reason"], s["reason"]
    assert not [p for p in folder.path.rglob("*") if p.name.endswith(".tmp")]
    assert folder.file("steps.bin").stat().st_size % RECORD_SIZE == 0  # whole records only
    capsys.readouterr()  # the engine's own log lines
    rows = _ls_json(capsys, ws)
    assert rows[folder.run_id]["status"] == "error"
    assert "no space left on device" in rows[folder.run_id]["reason"]
    rc = cli.main(["run", str(ZOO / "blobs.yaml"), "--workspace", str(ws)])  # the next run
    err = capsys.readouterr().err
    assert rc == 1 and "no space left on device" in err and len(err.strip().splitlines()) == 1


# ---- planted checkpoints ------------------------------------------------------------------


class Payload:
    """What a planted checkpoint smuggles in: code that runs when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def planted(run: Path, marker: Path) -> Path:
    import torch

    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    path = run / "checkpoints" / "step_000000001.pt"
    torch.save({"model": {}, "step": 1, "x": Payload(marker)}, path)
    write_json_atomic(run / "checkpoints" / "latest.json", {"file": path.name, "step": 1})
    return path


def test_a_planted_checkpoint_runs_no_code(tmp_path):
    import torch

    from engine import checkpoint

    marker = tmp_path / "pwned"
    path = planted(tmp_path / "run", marker)
    with pytest.raises(checkpoint.CheckpointError, match="holds more than tensors"):
        checkpoint.load(path, torch.device("cpu"))
    assert not marker.exists()


@pytest.mark.parametrize("where", ["outside", "symlink", "other-name", "folder-link"])
def test_checkpoints_load_only_from_the_runs_own_checkpoints(tmp_path, where):
    import torch

    from engine import checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    good = run / "checkpoints" / "step_000000001.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 1}, good)
    path = {
        "outside": tmp_path / "step_000000001.pt",
        "symlink": run / "checkpoints" / "step_000000002.pt",
        "other-name": run / "checkpoints" / "evil.pt",
        "folder-link": tmp_path / "run2" / "checkpoints" / "step_000000001.pt",
    }[where]
    if where == "symlink":
        path.symlink_to(good)
    elif where == "folder-link":
        path.parent.parent.mkdir()
        path.parent.symlink_to(run / "checkpoints")
    else:
        path.write_bytes(good.read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load(path, torch.device("cpu"))
    assert checkpoint.load(good, torch.device("cpu"))["step"] == 1


def test_a_weights_only_checkpoint_keeps_the_optimizer_state(tmp_path):
    import torch

    from engine import checkpoint

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    path = checkpoint.save(folder, model, opt, 7, "train")
    state = checkpoint.load(path, torch.device("cpu"))
    child = torch.nn.Linear(4, 2)
    child_opt = torch.optim.AdamW(child.parameters(), lr=3e-3)
    step, note = checkpoint.warm_start(state, child, child_opt)
    assert (step, note) == (7, "model weights and optimizer state")
    assert child_opt.param_groups[0]["lr"] == 3e-3  # the fork's new setting wins
    assert torch.equal(
        child_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )


def test_the_engine_refuses_a_forged_warm_start(tmp_path, monkeypatch, capsys):
    from cockpit.launch import create_run
    from engine.runner import Runner
    from engine.torchfree import preset as presets

    monkeypatch.setenv("COCKPIT_CPU_SLOTS", "1")
    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "0")
    marker = tmp_path / "pwned"
    evil = planted(tmp_path / "elsewhere", marker)
    folder = create_run(
        tmp_path / "ws",
        presets.load(ZOO / "blobs.yaml"),
        stages=["train"],
        warm_from=str(evil),  # what a hand-edited run.json could say
    )
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = Runner(folder).run()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert code == 2 and not marker.exists()
    assert "holds more than tensors" in folder.summary()["reason"]


# ---- forged proc.json / workers.jsonl ------------------------------------------------------


def _engine_like() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_kill_never_signals_a_recorded_group_that_is_not_the_engines(tmp_path):
    """A proc.json whose pid and start time are right, with the pgid of an unrelated group
    whose leader has exited (so no leader check can catch it): the group is left alone."""
    victim_group = subprocess.run(
        ["setsid", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
    )
    victim = psutil.Process(int(victim_group.stdout))
    engine = _engine_like()
    try:
        folder = RunFolder(tmp_path / "run")
        folder.path.mkdir()
        write_json_atomic(folder.file("summary.json"), {"status": "running"})
        write_json_atomic(
            folder.file("proc.json"),
            {
                "pid": engine.pid,
                "pgid": os.getpgid(victim.pid),
                "create_time": psutil.Process(engine.pid).create_time(),
                "host": socket.gethostname(),
            },
        )
        assert launch.stop(folder, grace=0.2) is True
        engine.wait(timeout=10)
        assert launch._running(victim)
    finally:
        victim.kill()
        engine.kill()


def test_kill_never_signals_cockpit_itself_its_parent_or_its_job(tmp_path):
    """Records naming this very process (or the shell above it), with the right start times:
    nothing is signalled — the test would not survive otherwise."""
    for pid in (os.getpid(), os.getppid(), os.getpgrp(), 1):
        assert not launch._may_signal(pid)
    me = {"pid": os.getpid(), "pgid": os.getpid(), "create_time": psutil.Process().create_time()}
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    write_json_atomic(folder.file("summary.json"), {"status": "running"})
    write_json_atomic(folder.file("proc.json"), me)
    JsonlAppender(folder.file("workers.jsonl")).append({**me, "role": "rank 0"})
    assert launch.engine_process(folder) is None and launch.recorded_processes(folder) == []
    assert launch.stop(folder, grace=0.1) is False


@pytest.mark.parametrize(
    "proc",
    [
        {"pid": "123"},
        {"pid": [1]},
        {"pid": True, "create_time": 0},
        {"pid": 2**62},
        {"pid": 5, "create_time": "now"},
        {"pid": 5, "pgid": "all"},
        {"pid": 5, "host": ["x"]},
    ],
)
def test_forged_proc_records_signal_nothing(tmp_path, proc):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    write_json_atomic(folder.file("summary.json"), {"status": "running"})
    write_json_atomic(folder.file("proc.json"), proc)
    JsonlAppender(folder.file("workers.jsonl")).append(proc)
    assert launch.engine_process(folder) is None
    assert launch.recorded_processes(folder) == []
    assert launch.stop(folder, grace=0.1) is False


# ---- user-code failures keep their cause ---------------------------------------------------


class LabelTable:
    """A map-style dataset whose labels come from a lookup table missing some ids, the shape
    of the pandas ``.loc`` bugs behind "Caught KeyError in DataLoader worker process 0"
    (https://github.com/milesial/Pytorch-UNet/issues/250,
    https://github.com/bioinsilico/rcsb-embedding-search/issues/3)."""

    def __init__(self):
        self.labels = {i: i % 2 for i in range(6)}

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import torch

        return torch.zeros(2), self.labels[i]


def test_a_dataloader_worker_exception_keeps_its_message_and_the_users_line():
    import torch

    from engine.runner import _first_line, _user_frame

    loader = torch.utils.data.DataLoader(LabelTable(), batch_size=8, num_workers=1)
    with pytest.raises(KeyError) as info:
        next(iter(loader))
    e = info.value
    assert str(e).startswith("Caught KeyError in DataLoader worker process 0")
    assert _first_line(e) == "6"  # the original KeyError: 6, not "Caught KeyError in ..."
    line = LabelTable.__getitem__.__code__.co_firstlineno + 3
    assert _user_frame(e) == (
        f" (in test_faults.py:{line}, __getitem__; in DataLoader worker process 0)"
    )


def test_a_full_disk_crash_reason_says_no_space():
    from engine.runner import _first_line

    e = OSError(errno.ENOSPC, "No space left on device", "/ws/run/steps.bin")
    assert _first_line(e).startswith("no space left on device on /ws/run/steps.bin")


def test_a_warm_fork_with_changed_shapes_lists_the_parameters():
    import torch

    from engine import checkpoint
    from engine.context import UserCodeError

    parent = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    child = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    state = {"model": parent.state_dict(), "step": 3}
    with pytest.raises(UserCodeError) as e:
        checkpoint.warm_start(state, child, torch.optim.SGD(child.parameters(), lr=0.1))
    message = str(e.value)
    assert "0.weight is 8×4 in the checkpoint but 16×4 in the model" in message
    assert "2.weight is 2×8 in the checkpoint but 2×16 in the model" in message
    assert "\n" not in message and "fork without --warm" in message


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda nn: nn.Linear(4, 2), "a layer, not a loss"),
        (lambda nn: nn.ReLU(), "a layer, not a loss"),
        (lambda nn: lambda a, b: a, "built a function, not a loss"),
        (lambda nn: (1, 2), "built a tuple, not a loss"),
        (lambda nn: nn.CrossEntropyLoss(), ""),
        (lambda nn: _PairLoss(), ""),
    ],
)
def test_a_loss_target_that_is_not_a_loss_says_so(build, words):
    from torch import nn

    from engine.targets import not_a_loss

    problem = not_a_loss(build(nn))
    assert (words in problem) if words else problem == ""


class _PairLoss:
    """A user's own loss: a module called with output and target."""

    def __new__(cls):
        from torch import nn

        class PairLoss(nn.Module):
            def forward(self, output, target):
                return (output - target).abs().mean()

        return PairLoss()


def test_the_engine_reports_a_layer_given_as_the_loss(tmp_path, monkeypatch):
    from tests.conftest import run_inprocess

    monkeypatch.setenv("COCKPIT_CPU_SLOTS", "1")
    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "0")
    code, summary, _ = run_inprocess(
        ZOO / "blobs.yaml",
        tmp_path / "ws",
        overrides={"loss": {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 4}},
        stages=["init"],
    )
    assert code == 2
    assert "torch.nn.Linear built a Linear" in summary["reason"]
    assert "not a loss" in summary["reason"] and "building the data" not in summary["reason"]


# ---- privacy ------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("share", [None, "env", "file"])
def test_new_workspaces_and_runs_are_private_unless_shared(tmp_path, monkeypatch, umask_022, share):
    from cockpit.launch import create_run
    from engine.torchfree import preset as presets

    monkeypatch.delenv("COCKPIT_SHARE", raising=False)
    ws = tmp_path / "ws"
    if share == "env":
        monkeypatch.setenv("COCKPIT_SHARE", "group")
    elif share == "file":
        ws.mkdir(mode=0o755)
        (ws / "cockpit.yaml").write_text("share: group\n")
    folder = create_run(ws, presets.load(ZOO / "blobs.yaml"))
    JsonlAppender(folder.file("events.jsonl")).append({"event": "x"})
    files = ["summary.json", "run.json", "preset.yaml", "events.jsonl"]
    if share is None:
        assert _mode(ws) == 0o700 and _mode(folder.path) == 0o700
        assert {name: _mode(folder.file(name)) for name in files} == dict.fromkeys(files, 0o600)
    else:
        assert _mode(ws) == (0o2770 if share == "env" else 0o755)  # an existing one is kept
        assert _mode(folder.path) == 0o2750
        assert {name: _mode(folder.file(name)) for name in files} == dict.fromkeys(files, 0o640)


def test_slot_lock_files_stay_usable_by_everyone_who_shares_the_gpus(tmp_path, umask_022):
    from engine.torchfree.slots import leases

    root = slots.slots_root(tmp_path / "ws")
    leases.mkdirs(root / "queue")
    fd = leases.open_lock(root / "gpu-0.lock")
    os.close(fd)
    assert _mode(root / "gpu-0.lock") == 0o666
    assert _mode(root) == 0o777 and _mode(root / "queue") == 0o777
    assert _mode(tmp_path / "ws" / ".slots") == 0o777


def test_a_checkpoint_is_as_private_as_its_run(tmp_path, umask_022):
    import torch

    from engine import checkpoint

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir(mode=0o700)
    path = checkpoint.save(folder, torch.nn.Linear(2, 2), None, 1, "train")
    assert _mode(folder.path) == 0o700 and _mode(path.parent / "latest.json") & 0o077 == 0


def test_a_run_folder_named_in_other_bytes_lists_escaped(tmp_path):
    """Folder names are bytes on Linux; one that is not UTF-8 prints escaped, never as a
    UnicodeEncodeError traceback that hides every run after it."""
    from tests.conftest import cockpit

    ws = tmp_path / "ws"
    healthy(ws, GOOD)
    healthy(ws, os.fsdecode(b"bad-\xff\xfe-run"))
    for args in (["ls"], ["ls", "--json"]):
        r = cockpit(*args, workspace=ws)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert GOOD in r.stdout and "bad-" in r.stdout
