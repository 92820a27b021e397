"""The run folder's small promises, at their edges (engine/torchfree/runfolder.py).

Written after the mutation benchmark (benchmarks/mutation.sh runfolder) showed each of these
could change without a test noticing: file modes, the sentences of read and write errors,
what "a number" is in summary.json, proc.json's sanity checks, the checkpoint confinement,
which temp files are swept, and the order runs are listed in.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time

import pytest

from engine.torchfree import runfolder as rf

UMASK = os.umask(0)
os.umask(UMASK)


def test_a_new_file_gets_the_folders_read_write_bits(tmp_path):
    for folder_mode, file_mode in ((0o700, 0o600), (0o750, 0o640), (0o777, 0o666)):
        d = tmp_path / f"d{folder_mode:o}"
        d.mkdir()
        os.chmod(d, folder_mode)
        assert rf.file_mode(d) == file_mode
        rf.write_json_atomic(d / "summary.json", {"a": 1})
        assert os.stat(d / "summary.json").st_mode & 0o777 == file_mode & ~UMASK
    assert rf.file_mode(tmp_path / "missing") == 0o600


def test_summary_json_is_indented_text_with_a_final_newline(tmp_path):
    rf.write_json_atomic(tmp_path / "s.json", {"a": [1, 2], "b": tmp_path})
    text = (tmp_path / "s.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": str(tmp_path)}, indent=1) + "\n"


def test_write_errors_name_the_file_not_the_temp_file(tmp_path):
    named = rf._named(OSError(errno.ENOSPC, "No space left", str(tmp_path / ".x.1.tmp")), tmp_path)
    assert (named.errno, named.strerror, named.filename) == (
        errno.ENOSPC,
        "No space left",
        str(tmp_path),
    )
    real = OSError(errno.EACCES, "Permission denied", "/etc/shadow")
    assert rf._named(real, tmp_path) is real
    bare = rf._named(OSError(errno.EIO, None), tmp_path / "f")
    assert bare.filename == str(tmp_path / "f") and bare.strerror


@pytest.mark.parametrize(
    ("e", "said"),
    [
        (
            OSError(errno.ENOSPC, "x"),
            "no space left on device on P; free some space (or point --workspace at another disk)",
        ),
        (
            OSError(errno.EDQUOT, "x"),
            "disk quota exceeded on P; free some space (or point --workspace at another disk)",
        ),
        (OSError(errno.EROFS, "x"), "P is on a read-only file system"),
        (OSError(errno.EACCES, "x"), "no permission to write P"),
        (OSError(errno.EPERM, "x"), "no permission to write P"),
        (OSError(errno.EIO, "Input/output error"), "writing P failed: Input/output error"),
    ],
)
def test_a_failed_write_in_one_sentence(e, said):
    assert rf.write_error(e, "P") == said
    assert rf.is_disk_error(e) == (e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))


def test_a_failed_write_names_the_file_it_knows():
    assert rf.write_error(OSError(errno.EROFS, "x", "/r/f")) == "/r/f is on a read-only file system"
    assert rf.write_error(OSError(errno.EROFS, "x")).startswith("the run folder is on")
    assert not rf.is_disk_error(ValueError("no"))


def test_json_numbers_are_finite_or_null():
    assert rf.clean_number(1.5) == 1.5 and rf.clean_number(3) == 3
    for bad in (math.nan, math.inf, -math.inf, "1", None):
        assert rf.clean_number(bad) is None


def test_a_fifo_or_a_folder_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "summary.json"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        rf.open_regular(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        rf.read_regular(fifo, 100)
    assert rf.read_json_checked(fifo)[1].startswith("summary.json cannot be read")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="a folder"):
        rf.read_regular(tmp_path / "dir", 100)
    assert time.monotonic() - t0 < 30  # never blocked on the FIFO (a generous bound)


def test_read_regular_reads_at_most_its_limit(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 3000)
    assert rf.read_regular(p, 10) == b"x" * 10
    assert rf.read_regular(p, 5000) == b"x" * 3000
    with rf.open_regular(p) as f:
        assert f.read(4) == b"xxxx"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "summary.json is empty"),
        (b"  \n", "summary.json is empty"),
        (b'{"a": 1,\n "b": }', "summary.json is not valid JSON (line 2, column 7)"),
        (b"\xff\xfe{}", "summary.json is not UTF-8 text (byte 0)"),
        (b"[1, 2]", "summary.json holds a list, not a JSON object"),
        (b"null", "summary.json holds null, not a JSON object"),
        (b"true", "summary.json holds a boolean, not a JSON object"),
        (b"3", "summary.json holds a number, not a JSON object"),
        (b'"x"', "summary.json holds a string, not a JSON object"),
    ],
)
def test_an_unreadable_summary_says_why(tmp_path, raw, problem):
    p = tmp_path / "summary.json"
    p.write_bytes(raw)
    assert rf.read_json_checked(p) == (None, problem)
    assert rf.read_json(p) is None


def test_a_missing_summary_is_not_a_problem(tmp_path):
    assert rf.read_json_checked(tmp_path / "summary.json") == (None, None)


def test_wrongly_typed_summary_fields_are_dropped_and_named():
    clean, problem = rf.check_summary(
        {"status": "running", "stages": [{"name": 3, "status": "pass", "reason": "ok"}]}
    )
    assert clean["status"] == "running" and clean["stages"] == [{"status": "pass", "reason": "ok"}]
    assert problem == "summary.json: a stage's 'name' is a number, expected text"
    clean, problem = rf.check_summary({"status": "exploded"})
    assert "status" not in clean and problem.startswith("summary.json: 'status' is 'exploded'")
    assert rf.check_summary({"status": "passed"}) == ({"status": "passed"}, None)


@pytest.mark.parametrize(
    ("proc", "ok"),
    [
        ({"pid": 1234, "create_time": 1.0}, True),
        ({"pid": 2, "create_time": 1}, True),
        ({"pid": 1, "create_time": 1.0}, False),  # init: never ours to signal
        ({"pid": 0, "create_time": 1.0}, False),
        ({"pid": -5, "create_time": 1.0}, False),
        ({"pid": 1 << 31, "create_time": 1.0}, False),
        ({"pid": (1 << 31) - 1, "create_time": 1.0}, True),
        ({"pid": True, "create_time": 1.0}, False),
        ({"pid": "1234", "create_time": 1.0}, False),
        ({"pid": 1234, "create_time": "soon"}, False),
        ({"pid": 1234, "create_time": 1.0, "pgid": 1}, False),
        ({"pid": 1234, "create_time": 1.0, "pgid": 99}, True),
        ({"pid": 1234, "create_time": 1.0, "pgid": False}, False),
        ({"pid": 1234, "create_time": 1.0, "host": 7}, False),
        ({"pid": 1234, "create_time": 1.0, "host": "gpu-1"}, True),
        ([1234], False),
    ],
)
def test_a_proc_record_must_name_a_pid_that_can_be_signalled(proc, ok):
    assert (rf.check_proc(proc) is not None) == ok


def test_a_checkpoint_must_be_a_step_file_right_inside_the_runs_checkpoints(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_000000010.pt").write_bytes(b"x")
    path, why = rf.confined_checkpoint(run, "step_000000010.pt")
    assert path == run / "checkpoints" / "step_000000010.pt" and why is None
    for bad in ("../x.pt", "step_1.pth", "step_.pt", "/etc/passwd", 7):
        path, why = rf.confined_checkpoint(run, bad)
        assert path is None and "not a step_<N>.pt file" in why and "refused" in why
    path, why = rf.confined_checkpoint(run, "step_5.pt")
    assert path is None and why.endswith("step_5.pt does not exist")
    os.symlink(run / "checkpoints" / "step_000000010.pt", run / "checkpoints" / "step_7.pt")
    path, why = rf.confined_checkpoint(run, "step_7.pt")
    assert path is None and "not a regular file" in why
    other = tmp_path / "elsewhere"
    other.mkdir()
    run2 = tmp_path / "run2"
    run2.mkdir()
    os.symlink(other, run2 / "checkpoints")
    path, why = rf.confined_checkpoint(run2, "step_1.pt")
    assert path is None and "outside the run folder" in why


def test_only_temp_files_are_swept_and_only_the_writers_own(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    names = [".summary.json.111.abc.tmp", ".run.json.222.def.tmp", "summary.json", "x.tmp"]
    for n in names:
        (tmp_path / n).write_text("x")
    (tmp_path / "checkpoints" / ".step_1.pt.111.aa.tmp").write_text("x")
    assert rf.remove_temp_files(tmp_path, pid=111) == 2
    assert sorted(os.listdir(tmp_path)) == [
        ".run.json.222.def.tmp",
        "checkpoints",
        "summary.json",
        "x.tmp",
    ]
    assert rf.remove_temp_files(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "summary.json", "x.tmp"]
    assert rf.remove_temp_files(tmp_path / "missing") == 0


def test_runs_are_listed_oldest_first_and_only_run_folders(tmp_path):
    for i, name in enumerate(["c", "a", "b"]):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text("{}")
        (d / "run.json").write_text("{}")
        os.utime(d / "run.json", (1000 + i, 1000 + i))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "file").write_text("x")
    assert [f.run_id for f in rf.iter_runs(tmp_path)] == ["c", "a", "b"]
    assert list(rf.iter_runs(tmp_path / "missing")) == []


def test_disk_full_below_the_margin(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert rf.disk_full(tmp_path, margin=free + (1 << 30))
    assert not rf.disk_full(tmp_path, margin=1)
    assert not rf.disk_full(tmp_path / "missing" / "x")


def test_a_jsonl_tail_reads_whole_lines_once_and_skips_garbage(tmp_path):
    p = tmp_path / "evals.jsonl"
    tail = rf.JsonlTail(p)
    assert tail.read_new() == []  # no file yet
    p.write_bytes(b'{"a": 1}\nnot json\n[1]\n{"b": 2}\n{"c": ')  # the last line is half-written
    assert tail.read_new() == [{"a": 1}, {"b": 2}]
    assert tail.read_new() == []  # nothing new: the half line waits
    with open(p, "ab") as f:
        f.write(b'3}\n\xff\xfe\n{"d": 4}\n')
    assert tail.read_new() == [{"c": 3}, {"d": 4}]
    assert tail.offset == p.stat().st_size


def test_steps_decode_whole_records_only(tmp_path):
    p = tmp_path / "steps.bin"
    out = rf.StepsAppender(p)
    out.append_many(
        [tuple(float(i * 10 + c) for c in range(len(rf.STEP_COLUMNS))) for i in range(3)]
    )
    out.close()
    raw = p.read_bytes()
    cols = rf.decode_steps(raw + b"\x00" * 17)  # a torn record at the end is left out
    assert list(cols["step"]) == [0.0, 10.0, 20.0] and list(cols["lr"]) == [8.0, 18.0, 28.0]
    tail = rf.StepsTail(p)
    with open(p, "ab") as f:
        f.write(raw[: rf.RECORD_SIZE // 2])  # half of a fourth record
    assert len(tail.read_new()) == 3
    with open(p, "ab") as f:
        f.write(raw[rf.RECORD_SIZE // 2 : rf.RECORD_SIZE])
    assert list(tail.read_new()["step"]) == [0.0]  # the fourth, now whole
    assert len(tail.read_new()) == 0


def test_an_older_steps_layout_is_read_by_its_own_header(tmp_path):
    p = tmp_path / "steps.bin"
    (tmp_path / "steps.json").write_text(json.dumps({"columns": ["step", "train_loss"]}))
    import struct

    p.write_bytes(struct.pack("<4d", 1.0, 0.5, 2.0, 0.25))
    cols = rf.StepsTail(p).read_new()
    assert list(cols["step"]) == [1.0, 2.0] and list(cols["train_loss"]) == [0.5, 0.25]
    assert len(cols["val_loss"]) == 2 and all(math.isnan(v) for v in cols["val_loss"])
    for bad in ({"columns": []}, {"columns": ["a", "a"]}, {"columns": [1]}, {"COLUMNS": ["x"]}):
        (tmp_path / "steps.json").write_text(json.dumps(bad))
        assert rf.StepsTail(p).columns == rf.STEP_COLUMNS


def test_a_failed_append_is_cut_back_to_the_last_whole_record(tmp_path, monkeypatch):
    p = tmp_path / "events.jsonl"
    out = rf.JsonlAppender(p)
    out.append({"event": "run_start"})
    good = p.read_bytes()
    real = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data)[:5])  # a short write...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(rf.os, "write", half_then_full)
    with pytest.raises(OSError) as e:
        out.append({"event": "stage_start", "stage": "init"})
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert p.read_bytes() == good  # the torn half is gone
    assert good == b'{"event":"run_start"}\n'  # compact lines, one per event
    out.close()
    assert out.fd == -1
    out.close()  # twice is harmless


def test_a_snapshot_as_json_has_the_path_the_verdicts_and_no_nan(tmp_path):
    snap = rf.RunSnapshot(
        run_id="r",
        path=tmp_path / "r",
        preset="p",
        status="passed",
        verdicts=[("init", "pass")],
        train_loss=math.nan,
        val_loss=0.5,
    )
    j = snap.to_json()
    assert j["path"] == str(tmp_path / "r") and j["verdicts"] == [["init", "pass"]]
    assert j["train_loss"] is None and j["val_loss"] == 0.5 and j["run_id"] == "r"
    json.dumps(j, allow_nan=False)


def test_process_alive_checks_the_start_time_and_the_host():
    import socket

    import psutil

    me = psutil.Process()
    proc = {"pid": me.pid, "create_time": me.create_time()}
    assert rf.process_alive(proc) is True
    assert rf.process_alive({**proc, "create_time": me.create_time() - 100}) is False  # reused
    assert rf.process_alive({**proc, "host": socket.gethostname()}) is True
    assert rf.process_alive({**proc, "host": "another-machine"}) is None
    assert rf.process_alive(None) is False and rf.process_alive({"pid": 1}) is False


def test_a_run_training_on_another_machine_says_where_in_its_device():
    # a workspace on a shared file system: the engine wrote its host into summary.json
    import socket
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        folder = rf.RunFolder(Path(tmp) / "r")
        folder.path.mkdir()
        base = {"run_id": "r", "preset": "p", "status": "passed", "device": "cuda:0"}
        folder.write_summary({**base, "host": "gpu-node-7"})
        assert folder.snapshot().device == "cuda:0 on gpu-node-7"
        folder.write_summary({**base, "host": socket.gethostname()})
        assert folder.snapshot().device == "cuda:0"  # here: nothing to add
        folder.write_summary(base)  # written before the field existed
        assert folder.snapshot().device == "cuda:0"
        folder.write_summary({**base, "host": 7})
        assert "'host' is a number, expected text or null" in folder.snapshot().reason
