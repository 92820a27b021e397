"""The run folder, sentence by sentence and limit by limit (engine/torchfree/runfolder.py).

What a user reads when a workspace, a run folder or one of its files is wrong (the exact
sentence), each limit just inside and just outside, and what the writers put on disk read
back by the real readers. Written from the survivors of ``benchmarks/mutation.sh runfolder``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import time
from pathlib import Path

import psutil
import pytest

from engine.torchfree import runfolder as rf
from engine.torchfree.runfolder import RECORD_SIZE, STEP_COLUMNS, RunFolder, WorkspaceError

UMASK = os.umask(0)
os.umask(UMASK)


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


# ---------------------------------------------------------------- the workspace


def test_the_workspace_is_the_flag_then_the_environment_then_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("COCKPIT_WORKSPACE", str(tmp_path / "env"))
    assert rf.resolve_workspace(tmp_path / "flag") == tmp_path / "flag"
    assert rf.resolve_workspace() == tmp_path / "env"
    assert rf.resolve_workspace("") == tmp_path / "env"
    monkeypatch.setenv("COCKPIT_WORKSPACE", "")
    assert rf.resolve_workspace() == Path("runs")
    monkeypatch.delenv("COCKPIT_WORKSPACE")
    assert rf.resolve_workspace(None) == Path("runs")


def test_a_workspace_error_carries_its_exit_code():
    e = WorkspaceError("the workspace x is a file")
    assert str(e) == "the workspace x is a file" and e.code == 2
    assert WorkspaceError("full", 1).code == 1


def test_a_workspace_that_is_a_file_or_unreadable_is_refused_in_a_sentence(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WorkspaceError) as e:
        rf.check_workspace(f)
    assert str(e.value) == f"the workspace {f} is a file, not a folder; give --workspace a folder."
    assert e.value.code == 2
    long = tmp_path / ("x" * 300)  # a name no file system takes: stat itself fails
    with pytest.raises(WorkspaceError) as e:
        rf.check_workspace(long)
    assert str(e.value).startswith(f"the workspace {long} cannot be used: [Errno 36] File name")
    assert str(e.value).endswith(".") and e.value.code == 2
    assert rf.check_workspace(tmp_path / "missing") == tmp_path / "missing"  # made later
    assert rf.check_workspace(str(tmp_path)) == tmp_path
    asked = []

    def no_access(path, how):
        asked.append(how)
        return False

    monkeypatch.setattr(rf.os, "access", no_access)
    with pytest.raises(WorkspaceError) as e:
        rf.check_workspace(tmp_path)
    assert str(e.value) == f"the workspace {tmp_path} cannot be read (no permission)."
    assert asked == [os.R_OK | os.X_OK]


def test_a_new_workspace_is_private_or_shared_with_the_group(tmp_path, monkeypatch):
    monkeypatch.delenv("COCKPIT_SHARE", raising=False)
    ws = rf.prepare_workspace(tmp_path / "a" / "runs")  # parents too
    assert ws == tmp_path / "a" / "runs" and mode(ws) == 0o700
    assert os.listdir(ws) == []  # the write probe is gone
    monkeypatch.setenv("COCKPIT_SHARE", "group")
    ws = rf.prepare_workspace(tmp_path / "shared")
    assert mode(ws) == 0o2770
    os.chmod(tmp_path / "a" / "runs", 0o755)  # an existing workspace keeps its mode
    rf.prepare_workspace(tmp_path / "a" / "runs")
    assert mode(tmp_path / "a" / "runs") == 0o755


def test_a_bad_sharing_setting_stops_the_writer_with_the_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("COCKPIT_SHARE", "public")
    with pytest.raises(WorkspaceError) as e:
        rf.prepare_workspace(tmp_path / "runs")
    assert str(e.value) == (
        "$COCKPIT_SHARE is 'public': expected private (only you can read your runs) or group "
        "(your group can read them)."
    )
    assert e.value.code == 2 and not (tmp_path / "runs").exists()


def test_a_workspace_that_cannot_be_created_says_why_and_which_code(tmp_path, monkeypatch):
    monkeypatch.delenv("COCKPIT_SHARE", raising=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(WorkspaceError) as e:
        rf.prepare_workspace(tmp_path / "f" / "runs")
    assert str(e.value) == (
        f"cannot create the workspace {tmp_path / 'f' / 'runs'}: writing "
        f"{tmp_path / 'f' / 'runs'} failed: Not a directory."
    )
    assert e.value.code == 2
    for err, code, said in (
        (errno.ENOSPC, 1, "no space left on device on"),
        (errno.EDQUOT, 1, "disk quota exceeded on"),
        (errno.EROFS, 2, "is on a read-only file system"),
    ):

        def fail(self, *a, err=err, **k):
            raise OSError(err, os.strerror(err))

        monkeypatch.setattr(Path, "mkdir", fail)
        with pytest.raises(WorkspaceError) as e:
            rf.prepare_workspace(tmp_path / "new")
        new = tmp_path / "new"
        assert str(e.value) == (
            f"cannot create the workspace {new}: {rf.write_error(OSError(err, 'x'), new)}."
        )
        assert said in str(e.value) and e.value.code == code
    monkeypatch.undo()

    def raced(self, *a, **k):  # another writer made it first
        os.makedirs(self)
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(Path, "mkdir", raced)
    assert rf.prepare_workspace(tmp_path / "raced") == tmp_path / "raced"


def test_a_workspace_that_cannot_be_written_says_why_and_which_code(tmp_path, monkeypatch):
    monkeypatch.delenv("COCKPIT_SHARE", raising=False)
    real = os.open
    for err, code, said in (
        (errno.ENOSPC, 1, "no space left on device on"),
        (errno.EDQUOT, 1, "disk quota exceeded on"),
        (errno.EACCES, 2, "no permission to write"),
    ):

        def probe_fails(path, flags, *a, err=err):
            if ".probe." in str(path):
                raise OSError(err, os.strerror(err))
            return real(path, flags, *a)

        monkeypatch.setattr(rf.os, "open", probe_fails)
        with pytest.raises(WorkspaceError) as e:
            rf.prepare_workspace(tmp_path)
        monkeypatch.undo()
        assert str(e.value) == (
            f"cannot write into the workspace {tmp_path}: "
            f"{rf.write_error(OSError(err, 'x'), tmp_path)}."
        )
        assert said in str(e.value) and e.value.code == code


@pytest.mark.parametrize(
    ("env", "config", "share"),
    [
        (None, None, "private"),
        ("group", None, "group"),
        ("  group ", None, "group"),
        ("private", "share: group\n", "private"),  # the environment wins
        ("", "share: group\n", "group"),
        (None, "share: private\n", "private"),
        (None, "share: null\n", "private"),
        (None, "other: 1\n", "private"),
        (None, "[not, a, mapping]\n", "private"),
        (None, "share: [\n", "private"),  # broken: the slot settings say so, sharing stays private
    ],
)
def test_sharing_comes_from_the_environment_then_cockpit_yaml(
    tmp_path, monkeypatch, env, config, share
):
    monkeypatch.delenv("COCKPIT_SHARE", raising=False)
    if env is not None:
        monkeypatch.setenv("COCKPIT_SHARE", env)
    if config is not None:
        (tmp_path / "cockpit.yaml").write_text(config)
    assert rf.sharing(tmp_path) == share


def test_a_bad_share_in_cockpit_yaml_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("COCKPIT_SHARE", raising=False)
    (tmp_path / "cockpit.yaml").write_text("share: 3\n")
    with pytest.raises(ValueError) as e:
        rf.sharing(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'cockpit.yaml'}: share is '3': expected private (only you can read your "
        "runs) or group (your group can read them)."
    )


def test_only_the_first_64_kib_of_cockpit_yaml_are_read(tmp_path, monkeypatch):
    monkeypatch.delenv("COCKPIT_SHARE", raising=False)
    (tmp_path / "cockpit.yaml").write_text("#" * 65535 + "\nshare: group\n")
    assert rf.sharing(tmp_path) == "private"
    (tmp_path / "cockpit.yaml").write_text("#" * 65000 + "\nshare: group\n")
    assert rf.sharing(tmp_path) == "group"
    line = "\nshare: group"  # the 64 KiB end right after it: the 's' that follows is not read
    (tmp_path / "cockpit.yaml").write_text("#" * (65536 - len(line)) + line + "s\n")
    assert rf.sharing(tmp_path) == "group"


def test_the_reserve_is_released_once(tmp_path):
    (tmp_path / rf.RESERVE).write_bytes(b"\0" * 10)
    rf.release_reserve(tmp_path)
    assert not (tmp_path / rf.RESERVE).exists()
    rf.release_reserve(tmp_path)  # twice, or never made: harmless


# ---------------------------------------------------------------- writing


def test_a_private_write_replaces_the_file_with_the_folders_mode(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(d, 0o750)
    rf.write_bytes_private(d / "preset.yaml", b"a long first version\n")
    rf.write_bytes_private(d / "preset.yaml", b"short\n")
    assert (d / "preset.yaml").read_bytes() == b"short\n"
    assert mode(d / "preset.yaml") == 0o640 & ~UMASK


def test_every_byte_is_written_through_short_writes(tmp_path, monkeypatch):
    real = os.write

    def one_byte(fd, data):
        return real(fd, bytes(data[:1]))

    monkeypatch.setattr(rf.os, "write", one_byte)
    rf.write_bytes_private(tmp_path / "f", b"abc")
    rf.write_json_atomic(tmp_path / "s.json", {"a": 1})
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"abc"
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1}


def test_a_write_that_makes_no_progress_is_a_full_disk_not_a_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(rf.os, "write", lambda fd, data: 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as e:
            rf.write_all(fd, b"abc")
    finally:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC and e.value.strerror == os.strerror(errno.ENOSPC)


def test_a_write_into_a_missing_folder_names_the_file(tmp_path):
    target = tmp_path / "gone" / "summary.json"
    with pytest.raises(OSError) as e:
        rf.write_json_atomic(target, {"a": 1})
    assert e.value.errno == errno.ENOENT and e.value.filename == str(target)


def test_an_interrupted_write_leaves_no_temp_file_and_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    rf.write_json_atomic(target, {"old": 1})

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(rf.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rf.write_json_atomic(target, {"new": 1})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["summary.json"]
    assert json.loads(target.read_text()) == {"old": 1}

    def interrupted_open(*a, **k):  # before the temp file exists: the interrupt still goes up
        raise KeyboardInterrupt

    monkeypatch.setattr(rf.os, "open", interrupted_open)
    with pytest.raises(KeyboardInterrupt):
        rf.write_json_atomic(target, {"new": 1})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_bare_os_error_is_named_with_its_text(tmp_path):
    e = OSError("something odd")
    named = rf._named(e, tmp_path / "f")
    assert named.strerror == "something odd" and named.filename == str(tmp_path / "f")


def test_numbers_from_tensors_and_paths_are_written_as_json(tmp_path):
    class Scalar:  # a numpy or torch scalar
        def item(self):
            return 2.5

    class Other:
        def __str__(self):
            return "other"

    rf.write_json_atomic(tmp_path / "s.json", {"a": Scalar(), "p": tmp_path, "o": Other()})
    assert json.loads((tmp_path / "s.json").read_text()) == {
        "a": 2.5,
        "p": str(tmp_path),
        "o": "other",
    }
    out = rf.JsonlAppender(tmp_path / "evals.jsonl")
    out.append({"step": 1, "accuracy": Scalar(), "p": tmp_path})
    out.close()
    assert rf.RunFolder(tmp_path).evals() == [{"step": 1, "accuracy": 2.5, "p": str(tmp_path)}]


def test_an_appended_file_gets_the_folders_mode(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, 0o700)
    out = rf.StepsAppender(d / "steps.bin")
    out.close()
    assert mode(d / "steps.bin") == 0o600


def test_a_failed_append_after_two_short_writes_cuts_back_both(tmp_path, monkeypatch):
    p = tmp_path / "events.jsonl"
    out = rf.JsonlAppender(p)
    out.append({"event": "run_start"})
    good = p.read_bytes()
    real = os.write
    calls = []

    def short_then_full(fd, data):
        calls.append(1)
        if len(calls) <= 2:
            return real(fd, bytes(data)[:4])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rf.os, "write", short_then_full)
    with pytest.raises(OSError):
        out.append({"event": "stage_start", "stage": "init"})
    monkeypatch.undo()
    assert p.read_bytes() == good
    out.close()


def test_a_cut_back_that_fails_still_reports_the_write_error(tmp_path, monkeypatch):
    p = tmp_path / "events.jsonl"
    out = rf.JsonlAppender(p)
    real = os.write
    calls = []

    def short_then_full(fd, data):
        calls.append(1)
        if len(calls) == 1:
            return real(fd, bytes(data)[:4])
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_truncate(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(rf.os, "write", short_then_full)
    monkeypatch.setattr(rf.os, "ftruncate", no_truncate)
    with pytest.raises(OSError) as e:
        out.append({"event": "x"})
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    out.close()


def test_closing_an_appender_closes_its_file_once(tmp_path):
    out = rf.StepsAppender(tmp_path / "steps.bin")
    fd = out.fd
    out.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # really closed
    out.close()
    assert out.fd == -1


def test_the_steps_header_says_what_the_records_are(tmp_path):
    RunFolder(tmp_path).write_steps_header()
    assert json.loads((tmp_path / "steps.json").read_text()) == {
        "format": "little-endian float64 records, one per optimizer step",
        "record_bytes": 8 * len(STEP_COLUMNS),
        "columns": list(STEP_COLUMNS),
    }


def test_a_run_id_is_a_slug_a_time_and_a_random_tail(monkeypatch):
    formats = []

    def fixed(fmt, *a):
        formats.append(fmt)
        return "20260102-030405"

    monkeypatch.setattr(rf.time, "strftime", fixed)
    rid = rf.new_run_id("my preset (v2)!")
    assert rid.startswith("my-preset-v2-20260102-030405-") and formats == ["%Y%m%d-%H%M%S"]
    tail = rid.rsplit("-", 1)[1]
    assert len(tail) == 4 and int(tail, 16) >= 0
    assert rf.new_run_id("a.b_c-d").startswith("a.b_c-d-20260102")
    assert rf.new_run_id("XRay Z9").startswith("XRay-Z9-20260102")
    assert rf.new_run_id("..//--").startswith("run-20260102")
    assert rf.new_run_id("").startswith("run-20260102")
    assert rf.new_run_id("-.x.-").startswith("x-20260102")
    assert rf.new_run_id("x" * 50).startswith("x" * 40 + "-20260102")
    assert rf.new_run_id("x") != rf.new_run_id("x")  # the random tail tells them apart


# ---------------------------------------------------------------- reading files


def test_a_fifo_or_a_folder_is_refused_with_errno_and_path(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for call in (lambda: rf.open_regular(fifo), lambda: rf.read_regular(fifo, 10)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EINVAL and e.value.filename == str(fifo)
    with pytest.raises(OSError) as e:
        rf.open_regular(fifo)
    assert e.value.strerror == "not a regular file"
    with pytest.raises(OSError) as e:
        rf.read_regular(fifo, 10)
    assert e.value.strerror == "not a regular file (a FIFO, a device or a socket?)"
    with pytest.raises(OSError) as e:
        rf.read_regular(tmp_path, 10)
    assert e.value.strerror == "a folder (a FIFO, a device or a socket?)"
    assert rf.read_json_checked(fifo) == (
        None,
        "fifo cannot be read (not a regular file (a FIFO, a device or a socket?))",
    )


def test_read_regular_stops_at_its_limit_and_reads_long_files_whole(tmp_path):
    p = tmp_path / "f"
    data = bytes(range(256)) * 6000  # 1.5 MB: more than one read
    p.write_bytes(data)
    assert rf.read_regular(p, 1) == data[:1]
    assert rf.read_regular(p, 0) == b""
    assert rf.read_regular(p, len(data)) == data
    assert rf.read_regular(p, len(data) + 100) == data
    assert rf.read_regular(p, (1 << 20) + 1) == data[: (1 << 20) + 1]


def test_a_summary_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not(tmp_path):
    p = tmp_path / "summary.json"
    head = b'{"a": "'
    tail = b'"}'
    p.write_bytes(head + b"x" * (rf.MAX_JSON_BYTES - len(head) - len(tail)) + tail)
    value, problem = rf.read_json_checked(p)
    assert problem is None and len(value["a"]) == rf.MAX_JSON_BYTES - len(head) - len(tail)
    p.write_bytes(head + b"x" * (rf.MAX_JSON_BYTES + 1 - len(head) - len(tail)) + tail)
    assert rf.read_json_checked(p) == (None, "summary.json is larger than 16 MB")


def test_wrongly_typed_summary_fields_are_each_named_and_dropped():
    raw = {
        "run_id": 3,
        "preset": "p",
        "status": "running",
        "stage_names": {"a": 1},
        "created": "yesterday",
        "custom": {"kept": True},  # not ours to judge
        "fork_step": 2.5,
    }
    clean, problem = rf.check_summary(raw)
    assert clean == {"preset": "p", "status": "running", "custom": {"kept": True}}
    assert problem == (
        "summary.json: 'run_id' is a number, expected text; 'stage_names' is an object, "
        "expected a list of names; 'created' is a string, expected a number"
    )  # the first three only
    assert rf.check_summary({"fork_step": 3.0, "queue_position": 2}) == (
        {"fork_step": 3.0, "queue_position": 2},
        None,
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("run_id", None, "text"),
        ("reason", 3, "text or null"),
        ("parent", [], "text or null"),
        ("fork_step", 1.5, "an integer or null"),
        ("fork_step", math.inf, "an integer or null"),
        ("overrides", [], "an object"),
        ("stages", [1], "a list of objects"),
        ("stage_names", ["a", 1], "a list of names"),
        ("created", None, "a number"),
        ("created", True, "a number"),
        ("started", "x", "a number or null"),
        ("ended", math.nan, "a number or null"),
        ("current_stage", 1, "text or null"),
        ("group", 1, "text or null"),
        ("queue", 1, "text or null"),
        ("queue_position", "1", "a number or null"),
        ("device", 0, "text or null"),
    ],
)
def test_each_summary_field_has_its_type(field, value, expected):
    clean, problem = rf.check_summary({field: value})
    assert field not in clean
    assert problem == f"summary.json: '{field}' is {rf._json_kind(value)}, expected {expected}"


def test_a_stages_wrong_fields_are_named_and_dropped():
    clean, problem = rf.check_summary(
        {"stages": [{"name": "init", "status": 1, "reason": None, "extra": 2}]}
    )
    assert clean["stages"] == [{"name": "init", "extra": 2}]
    assert problem == (
        "summary.json: a stage's 'status' is a number, expected text; a stage's 'reason' is "
        "null, expected text"
    )


def test_an_unknown_status_is_named_with_the_known_ones():
    clean, problem = rf.check_summary({"status": "x" * 50})
    assert "status" not in clean
    assert problem == (
        f"summary.json: 'status' is '{'x' * 40}', expected one of queued, running, passed, "
        "failed, error, killed"
    )


def test_json_kinds_in_words():
    assert [rf._json_kind(v) for v in (None, True, 1, 1.5, "s", [], {})] == [
        "null",
        "a boolean",
        "a number",
        "a number",
        "a string",
        "a list",
        "an object",
    ]


# ---------------------------------------------------------------- tails


def test_a_jsonl_tail_skips_blank_lines_and_keeps_its_offset(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_bytes(b'\n\n{"a": 1}\n')
    tail = rf.JsonlTail(p)
    assert tail.read_new() == [{"a": 1}] and tail.offset == p.stat().st_size
    p.write_bytes(b'\n{"b"')
    tail = rf.JsonlTail(p)
    assert tail.read_new() == [] and tail.offset == 1  # the blank line is behind it
    with open(p, "ab") as f:
        f.write(b": 2}\n")
    assert tail.read_new() == [{"b": 2}]


def test_a_missing_steps_file_reads_as_no_steps(tmp_path):
    tail = rf.StepsTail(tmp_path / "steps.bin")
    cols = tail.read_new()
    assert len(cols) == 0 and tail.offset == 0
    assert set(cols.columns) == set(STEP_COLUMNS)
    assert len(RunFolder(tmp_path).last_steps()) == 0


def test_an_older_steps_layout_of_one_to_256_columns_is_honoured(tmp_path):
    p = tmp_path / "steps.bin"
    (tmp_path / "steps.json").write_text(json.dumps({"columns": ["step"]}))
    p.write_bytes(struct.pack("<2d", 1.0, 2.0))
    cols = rf.StepsTail(p).read_new()
    assert list(cols["step"]) == [1.0, 2.0]
    wide = ["step"] + [f"c{i}" for i in range(255)]
    (tmp_path / "steps.json").write_text(json.dumps({"columns": wide}))
    assert rf.StepsTail(p).columns == tuple(wide)
    (tmp_path / "steps.json").write_text(json.dumps({"columns": [*wide, "c255"]}))
    assert rf.StepsTail(p).columns == STEP_COLUMNS  # 257: not a header of ours


def test_step_columns_extend_column_by_column():
    a = rf.decode_steps(struct.pack("<9d", *range(9)))
    b = rf.decode_steps(struct.pack("<9d", *range(10, 19)))
    a.extend(b)
    assert list(a["step"]) == [0.0, 10.0] and list(a["lr"]) == [8.0, 18.0] and len(a) == 2


# ---------------------------------------------------------------- the run folder's readers


def row(step: float, **kw) -> tuple:
    values = dict(
        step=step, time=1000.0 + step, stage=0, train_loss=1.0, val_loss=math.nan,
        data_s=0.01, step_s=0.1, gpu_s=math.nan, lr=1e-3,
    )  # fmt: skip
    values.update(kw)
    return tuple(values[c] for c in STEP_COLUMNS)


def write_steps(folder: RunFolder, rows: list[tuple]) -> None:
    out = rf.StepsAppender(folder.file("steps.bin"))
    out.append_many(rows)
    out.close()


def test_the_folders_readers_read_what_the_writers_wrote(tmp_path):
    folder = RunFolder(tmp_path / "r")
    folder.path.mkdir()
    assert folder.run_id == "r" and folder.file("x") == tmp_path / "r" / "x"
    assert folder.steps()["step"] == rf.StepColumns()["step"]
    assert (folder.evals(), folder.telemetry(), folder.events()) == ([], [], [])
    write_steps(folder, [row(1), row(2)])
    for name, rec in (("evals", {"step": 1}), ("telemetry", {"t": 1}), ("events", {"e": 1})):
        out = rf.JsonlAppender(folder.file(f"{name}.jsonl"))
        out.append(rec)
        out.close()
    assert list(folder.steps()["step"]) == [1.0, 2.0]
    assert folder.evals() == [{"step": 1}]
    assert folder.telemetry() == [{"t": 1}]
    assert folder.events() == [{"e": 1}]
    rf.write_json_atomic(folder.file("run.json"), {"preset": "p.yaml"})
    assert folder.request() == {"preset": "p.yaml"}
    assert RunFolder(tmp_path / "none").request() == {}


def test_the_preset_text_and_the_log_tail_never_raise(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.preset_text() == "" and folder.log_tail() == ""
    folder.file("preset.yaml").write_bytes(b"name: caf\xe9\n")
    assert folder.preset_text() == "name: caf\ufffd\n"
    log = b"".join(b"line %06d\n" % i for i in range(8000))  # 96 kB
    folder.file("engine.log").write_bytes(log + b"\xff end\n")
    tail = folder.log_tail()
    assert len(tail.encode()) == 64_000 + 2  # U+FFFD is three bytes
    assert tail.endswith("\ufffd end\n") and tail.startswith(log[-(64_000 - 6) :][:10].decode())
    assert folder.log_tail(max_bytes=8) == "9\n\ufffd end\n"
    assert folder.log_tail(max_bytes=10**9) == (log + b"\xff end\n").decode(errors="replace")
    os.remove(folder.file("preset.yaml"))
    os.mkdir(folder.file("preset.yaml"))
    assert folder.preset_text() == ""


def test_the_preset_text_is_cut_at_the_json_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(rf, "MAX_JSON_BYTES", 10)
    RunFolder(tmp_path).file("preset.yaml").write_text("a: 1\nb: 2\nc: 3\n")
    assert RunFolder(tmp_path).preset_text() == "a: 1\nb: 2\n"


def test_the_last_steps_are_the_last_whole_records(tmp_path):
    folder = RunFolder(tmp_path)
    write_steps(folder, [row(i) for i in range(100)])
    assert list(folder.last_steps(3)["step"]) == [97.0, 98.0, 99.0]
    assert len(folder.last_steps()) == 64 and folder.last_steps()["step"][0] == 36.0
    assert list(folder.last_steps(200)["step"]) == [float(i) for i in range(100)]
    with open(folder.file("steps.bin"), "ab") as f:
        f.write(b"\x01" * (RECORD_SIZE - 1))  # a torn record at the end
    assert list(folder.last_steps(2)["step"]) == [98.0, 99.0]
    assert list(folder.last_steps(2)["lr"]) == [1e-3, 1e-3]


def test_the_last_eval_is_the_last_whole_object_line(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.last_eval() is None
    folder.file("evals.jsonl").write_bytes(b'{"step": 1}\n{"step": 2}\n[3]\n{"step": ')
    assert folder.last_eval() == {"step": 2}
    big = b"".join(b'{"step": %d, "pad": "%s"}\n' % (i, b"x" * 100) for i in range(200))
    folder.file("evals.jsonl").write_bytes(big)
    assert folder.last_eval()["step"] == 199
    assert folder._last_jsonl("evals.jsonl", max_bytes=50) is None  # less than one line
    line = b'{"step": 1, "pad": "' + b"x" * (8192 - 23) + b'"}\n'
    assert len(line) == 8192
    folder.file("evals.jsonl").write_bytes(line)
    assert folder.last_eval()["step"] == 1  # a last line of 8 kB exactly is read
    folder.file("evals.jsonl").write_bytes(line[:-3] + b'x"}\n')
    assert folder.last_eval() is None  # one byte more: cut, so not JSON
    assert folder._last_jsonl("evals.jsonl", max_bytes=8193)["step"] == 1


def test_the_last_telemetry_leaves_the_header_out(tmp_path):
    folder = RunFolder(tmp_path)
    folder.file("telemetry.jsonl").write_text('{"kind": "header", "gpus": 1}\n')
    assert folder.last_telemetry() is None
    with open(folder.file("telemetry.jsonl"), "a") as f:
        f.write('{"kind": "sample", "gpu": {"util": 5}}\n')
    assert folder.last_telemetry() == {"kind": "sample", "gpu": {"util": 5}}
    folder.file("telemetry.jsonl").write_text('{"gpu": {"util": 7}}\n')
    assert folder.last_telemetry() == {"gpu": {"util": 7}}


# ---------------------------------------------------------------- state


def summary(**kw) -> dict:
    s = {
        "run_id": "r",
        "preset": "p.yaml",
        "status": "running",
        "stages": [],
        "stage_names": ["init", "speed"],
        "created": time.time(),
        "overrides": {},
        "parent": None,
        "fork_step": None,
    }
    s.update(kw)
    return s


def make(tmp_path: Path, name: str = "r", **kw) -> RunFolder:
    folder = RunFolder(tmp_path / name)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_summary(summary(run_id=name, **kw))
    return folder


def dead_proc(folder: RunFolder) -> None:
    rf.write_json_atomic(
        folder.file("proc.json"),
        {"pid": os.getpid(), "create_time": psutil.Process().create_time() - 100},
    )


def test_an_unreadable_summary_is_the_runs_status_with_the_reason(tmp_path):
    folder = RunFolder(tmp_path / "r")
    folder.path.mkdir()
    rf.write_json_atomic(folder.file("summary.json"), {"run_id": 3, "preset": "p.yaml"})
    assert folder.state() == {
        "preset": "p.yaml",
        "status": "unreadable",
        "reason": "summary.json: 'run_id' is a number, expected text",
    }
    folder.file("summary.json").write_text("[]")
    assert folder.state() == {
        "status": "unreadable",
        "reason": "summary.json holds a list, not a JSON object",
    }


def test_a_run_without_proc_json_is_given_thirty_seconds_to_start(tmp_path, monkeypatch):
    now = 10_000.0
    monkeypatch.setattr(rf.time, "time", lambda: now)
    folder = make(tmp_path, created=now - 30)  # just inside: the launcher is still starting it
    assert folder.state()["status"] == "running"
    folder = make(tmp_path, created=now - 30.5)  # just outside: nothing started it
    s = folder.state()
    assert s["status"] == "error"
    assert s["reason"] == (
        "the engine process is gone without a word (killed -9, or out of memory?); see engine.log"
    )
    folder.write_summary({k: v for k, v in summary().items() if k != "created"})
    assert folder.state()["status"] == "error"  # no creation time: long ago


def test_a_dead_engine_on_a_full_disk_blames_the_disk(tmp_path, monkeypatch):
    folder = make(tmp_path)
    dead_proc(folder)
    monkeypatch.setattr(rf, "disk_full", lambda path: True)
    s = folder.state()
    assert s["status"] == "error" and s["reason"] == (
        f"the engine stopped while the disk was full: no space left on device on {folder.path}; "
        "free some space and start it again"
    )
    assert folder.summary()["status"] == "running"  # the file is left as it was


def test_a_finished_run_is_never_turned_into_an_error(tmp_path):
    folder = make(tmp_path, status="passed")
    dead_proc(folder)
    assert folder.state()["status"] == "passed"
    folder = make(tmp_path, "q", status="queued")
    dead_proc(folder)
    assert folder.state()["status"] == "error"


def test_a_slurm_run_asks_slurm_not_the_local_pid(tmp_path):
    folder = make(tmp_path)
    dead_proc(folder)
    folder.file("slurm.json").write_text("not json")  # no job id: the summary as it is
    assert folder.state() == folder.summary()
    assert folder.state()["status"] == "running"


def test_process_alive_allows_a_second_of_clock_difference():
    me = psutil.Process()
    ct = me.create_time()
    assert rf.process_alive({"pid": me.pid, "create_time": ct + 0.9}) is True
    assert rf.process_alive({"pid": me.pid, "create_time": ct - 1.0}) is True
    assert rf.process_alive({"pid": me.pid, "create_time": ct - 1.5}) is False
    assert rf.process_alive({"pid": me.pid}) is False  # no start time: it cannot be ours
    assert rf.process_alive({"pid": 2**22 + 12345, "create_time": ct}) is False  # no such pid


def test_proc_records_a_pgid_within_bounds():
    base = {"pid": 1234, "create_time": 1.0}
    assert rf.check_proc({**base, "pgid": 2}) is not None
    assert rf.check_proc({**base, "pgid": (1 << 31) - 1}) is not None
    assert rf.check_proc({**base, "pgid": 1 << 31}) is None
    assert rf.check_proc({**base, "pgid": None}) is not None
    assert rf.check_proc({"pid": 1234}) == {"pid": 1234}  # no start time: checked as 0


# ---------------------------------------------------------------- checkpoints


def checkpoint_run(tmp_path: Path, latest: dict | str | None) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    (folder.path / "checkpoints").mkdir(parents=True)
    (folder.path / "checkpoints" / "step_10.pt").write_bytes(b"x")
    if latest is not None:
        text = latest if isinstance(latest, str) else json.dumps(latest)
        (folder.path / "checkpoints" / "latest.json").write_text(text)
    return folder


def test_the_latest_checkpoint_is_latest_json_with_its_path(tmp_path):
    folder = checkpoint_run(tmp_path, {"file": "step_10.pt", "step": 10})
    path = str(folder.path / "checkpoints" / "step_10.pt")
    assert folder.checked_checkpoint() == ({"file": "step_10.pt", "step": 10, "path": path}, None)
    assert folder.latest_checkpoint() == {"file": "step_10.pt", "step": 10, "path": path}


@pytest.mark.parametrize(
    ("latest", "why"),
    [
        (None, "C/latest.json does not exist"),
        ("{", "latest.json is not valid JSON (line 1, column 2)"),
        ({"file": "../x.pt"}, "C/latest.json names '../x.pt', not a step_<N>.pt file in the run's own checkpoints folder; refused"),
        ({"file": 3}, "C/latest.json names 'a number', not a step_<N>.pt file in the run's own checkpoints folder; refused"),
        ({"file": "step_" + "9" * 100 + ".pt"}, "C/latest.json names 'step_" + "9" * 75 + "', not a step_<N>.pt file in the run's own checkpoints folder; refused"),
        ({"file": "step_11.pt"}, "C/step_11.pt does not exist"),
        ({"file": "step_10.pt", "step": -1}, "C/latest.json: 'step' is a number, expected a whole number ≥ 0"),
        ({"file": "step_10.pt", "step": 1.5}, "C/latest.json: 'step' is a number, expected a whole number ≥ 0"),
        ({"file": "step_10.pt", "step": True}, "C/latest.json: 'step' is a boolean, expected a whole number ≥ 0"),
        ({"file": "step_10.pt", "step": 2**53}, "C/latest.json: 'step' is a number, expected a whole number ≥ 0"),
    ],
)  # fmt: skip
def test_a_refused_checkpoint_says_why(tmp_path, latest, why):
    folder = checkpoint_run(tmp_path, latest)
    where = str(folder.path / "checkpoints")
    assert folder.checked_checkpoint() == (None, why.replace("C", where, 1))
    assert folder.latest_checkpoint() is None


def test_a_checkpoint_at_the_edges_of_its_step(tmp_path):
    for step in (0, 2**53 - 1):
        folder = checkpoint_run(tmp_path / str(step), {"file": "step_10.pt", "step": step})
        assert folder.latest_checkpoint()["step"] == step
    folder = checkpoint_run(tmp_path / "none", {"file": "step_10.pt"})
    assert folder.latest_checkpoint()["path"].endswith("step_10.pt")  # no step: 0


def test_a_checkpoint_that_is_not_a_file_or_sits_outside_is_refused(tmp_path):
    folder = checkpoint_run(tmp_path, {"file": "step_12.pt"})
    (folder.path / "checkpoints" / "step_12.pt").mkdir()
    where = folder.path / "checkpoints"
    assert folder.checked_checkpoint() == (
        None,
        f"{where / 'step_12.pt'} is not a regular file (a link or a device); refused",
    )
    other = tmp_path / "other"
    other.mkdir()
    run2 = tmp_path / "run2"
    run2.mkdir()
    os.symlink(other, run2 / "checkpoints")
    assert rf.confined_checkpoint(run2, "step_1.pt") == (
        None,
        f"{run2 / 'checkpoints'} is a link to {os.path.realpath(other)}, outside the run folder; refused",
    )


# ---------------------------------------------------------------- the snapshot


def test_a_snapshot_holds_every_field_the_runs_table_shows(tmp_path):
    folder = make(
        tmp_path,
        status="passed",
        reason="all good",
        stages=[{"name": "init", "status": "pass"}, {"name": "speed", "status": "warn"}],
        created=123.0,
        ended=456.0,
        parent="p-1",
        fork_step=7,
        group="g",
        overrides={"seed": 1},
        queue="gpu",
        device="cuda:0",
    )
    write_steps(
        folder,
        [
            row(1, train_loss=3.0, val_loss=2.0, data_s=0.1, step_s=1.0),
            row(2, train_loss=2.5, val_loss=math.nan, data_s=0.3, step_s=1.0, time=2002.0),
        ],
    )
    rf.JsonlAppender(folder.file("evals.jsonl")).append({"step": 2, "accuracy": 0.75})
    rf.JsonlAppender(folder.file("telemetry.jsonl")).append({"gpu": {"util": 40}})
    snap = folder.snapshot()
    assert snap.to_json() == {
        "run_id": "r",
        "preset": "p.yaml",
        "status": "passed",
        "reason": "all good",
        "stage": "speed",  # no current stage: the last one
        "verdicts": [["init", "pass"], ["speed", "warn"]],
        "stage_names": ["init", "speed"],
        "created": 123.0,
        "ended": 456.0,
        "parent": "p-1",
        "fork_step": 7,
        "group": "g",
        "overrides": {"seed": 1},
        "queue": "gpu",
        "device": "cuda:0",
        "slurm_job": None,
        "slurm_state": None,
        "node": None,
        "step": 2,
        "train_loss": 2.5,
        "val_loss": 2.0,  # the last one measured
        "metric_name": "accuracy",
        "metric": 0.75,
        "data_wait": pytest.approx(0.2),
        "gpu_util": 40.0,
        "last_time": 2002.0,
        "path": str(folder.path),
    }
    assert isinstance(snap.gpu_util, float) and isinstance(snap.metric, float)


def test_a_snapshot_of_a_bare_summary_has_the_defaults(tmp_path):
    folder = RunFolder(tmp_path / "bare")
    folder.path.mkdir()
    rf.write_json_atomic(folder.file("summary.json"), {"status": "passed"})
    snap = folder.snapshot()
    assert (snap.preset, snap.status, snap.reason, snap.stage) == ("?", "passed", "", "")
    assert (snap.verdicts, snap.stage_names, snap.created, snap.overrides) == ([], [], 0.0, {})
    assert snap.step == 0 and math.isnan(snap.train_loss) and snap.metric_name == ""
    assert snap.last_time is None and math.isnan(snap.gpu_util)
    rf.write_json_atomic(
        folder.file("summary.json"),
        {"stages": [{"status": "pass"}, {}], "current_stage": "overfit_one", "reason": None},
    )
    snap = folder.snapshot()
    assert snap.status == "?" and snap.verdicts == [("?", "pass"), ("?", "?")]
    assert snap.stage == "overfit_one" and snap.reason == ""
    rf.write_json_atomic(folder.file("summary.json"), {"stages": [{"status": "pass"}]})
    assert folder.snapshot().stage == ""  # the last stage has no name


def test_a_slurm_runs_device_says_where_and_which_job(tmp_path):
    folder = make(tmp_path, status="passed", slurm_job="42", slurm_state="RUNNING", node="n1")
    snap = folder.snapshot()
    assert (snap.slurm_job, snap.slurm_state, snap.node) == ("42", "RUNNING", "n1")
    assert snap.device == "Slurm on n1 · job 42"
    folder = make(tmp_path, "s2", status="passed", slurm_job="43", slurm_node="n2", device="cuda")
    assert folder.snapshot().device == "cuda on n2 · job 43"
    assert folder.snapshot().node == "n2"
    folder = make(tmp_path, "s3", status="passed", slurm_job="44")
    assert folder.snapshot().device == "Slurm · job 44"


@pytest.mark.parametrize(
    ("step", "shown"),
    [
        (0.0, 0),
        (5.0, 5),
        (-1.0, 0),
        (math.nan, 0),
        (math.inf, 0),
        (2.0**53 - 1, 2**53 - 1),
        (2.0**53, 0),
    ],
)
def test_a_snapshots_step_is_a_sane_whole_number(tmp_path, step, shown):
    folder = make(tmp_path, status="passed")
    write_steps(folder, [row(step)])
    assert folder.snapshot().step == shown


def test_a_snapshot_without_time_spent_or_a_clock_shows_no_share_or_time(tmp_path):
    folder = make(tmp_path, status="passed")
    write_steps(folder, [row(1, step_s=0.0, data_s=0.0, time=math.nan)])
    snap = folder.snapshot()
    assert snap.status == "passed" and snap.step == 1  # read, not an 'unreadable' row
    assert math.isnan(snap.data_wait) and snap.last_time is None
    assert snap.to_json()["data_wait"] is None


def test_the_data_wait_share_is_over_the_last_64_steps(tmp_path):
    folder = make(tmp_path, status="passed")
    write_steps(folder, [row(0, data_s=100.0, step_s=100.0)] + [row(i) for i in range(1, 65)])
    assert folder.snapshot().data_wait == pytest.approx(0.1)  # 0.01 of 0.1 s, step 0 left out


def test_a_snapshot_of_a_broken_folder_is_one_unreadable_row(tmp_path, monkeypatch):
    folder = make(tmp_path)

    def broken(self, *args):
        raise RuntimeError("x" * 400)

    monkeypatch.setattr(RunFolder, "_snapshot", broken)
    snap = folder.snapshot()
    assert (snap.run_id, snap.path, snap.preset, snap.status) == (
        "r",
        folder.path,
        "?",
        "unreadable",
    )
    assert snap.reason == ("the run folder cannot be read: RuntimeError: " + "x" * 400)[:300]
    assert len(snap.reason) == 300


# ---------------------------------------------------------------- finding runs


def test_runs_are_sorted_by_when_they_were_asked_for_not_by_folder_time(tmp_path):
    for i, name in enumerate(["b", "a", "c"]):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text("{}")
        (d / "run.json").write_text("{}")
        os.utime(d / "run.json", (2000 - i, 2000 - i))  # c asked first, b last
        os.utime(d, (1000 + i, 1000 + i))  # the folders the other way round
    assert [r.run_id for r in rf.iter_runs(tmp_path)] == ["c", "a", "b"]
    d = tmp_path / "d"
    d.mkdir()
    (d / "summary.json").write_text("{}")  # no run.json: first
    assert [r.run_id for r in rf.iter_runs(tmp_path)] == ["d", "c", "a", "b"]


def test_disk_full_is_strictly_below_the_margin(tmp_path, monkeypatch):
    class St:
        f_bavail, f_frsize = 1024, 1024

    monkeypatch.setattr(rf.os, "statvfs", lambda path: St())
    assert not rf.disk_full(tmp_path)  # exactly 1 MB left: not yet
    assert rf.disk_full(tmp_path, margin=(1 << 20) + 1)


def test_sweeping_leaves_folders_that_look_like_temp_files(tmp_path):
    (tmp_path / ".x.1.aa.tmp").mkdir()
    (tmp_path / ".y.1.bb.tmp").write_text("x")
    (tmp_path / rf.RESERVE).write_bytes(b"\0")
    assert rf.remove_temp_files(tmp_path, pid=1) == 2  # its file and the reserve
    assert sorted(os.listdir(tmp_path)) == [".x.1.aa.tmp"]


def runs(tmp_path: Path, *names: str) -> None:
    for i, name in enumerate(names):
        folder = make(tmp_path, name, status="passed")
        os.utime(folder.file("summary.json"), (1000 + i, 1000 + i))
        rf.write_json_atomic(folder.file("run.json"), {})
        os.utime(folder.file("run.json"), (1000 + i, 1000 + i))


@pytest.mark.parametrize(
    ("ref", "said"),
    [
        ("", "an empty run reference matches nothing (an unset shell variable?); give a run id or a unique prefix — `cockpit ls` lists them."),
        ("  ", "an empty run reference matches nothing (an unset shell variable?); give a run id or a unique prefix — `cockpit ls` lists them."),
        ("a\x1bb", "'a\\x1bb' is not a run id (it holds control characters); `cockpit ls` lists them."),
        ("a\x7fb", "'a\\x7fb' is not a run id (it holds control characters); `cockpit ls` lists them."),
        (" quick", "' quick' has spaces around it; no run id does — give it without them."),
        ("quick", "'quick' matches 6 runs in W (quick-1, quick-2, quick-3, quick-4, quick-5); give more of the id."),
        ("zzz", "no run 'zzz' in W; the latest is slow-1 — `cockpit ls` lists them."),
    ],
)  # fmt: skip
def test_a_run_reference_that_finds_nothing_says_why(tmp_path, ref, said):
    runs(tmp_path, *[f"quick-{i}" for i in range(1, 7)], "slow-1")
    with pytest.raises(LookupError) as e:
        rf.find_run(tmp_path, ref)
    assert str(e.value) == said.replace("W", str(tmp_path))


def test_a_run_reference_in_an_empty_workspace_says_so(tmp_path):
    with pytest.raises(LookupError) as e:
        rf.find_run(tmp_path, "x")
    assert (
        str(e.value)
        == f"no run 'x' in {tmp_path} (the workspace has no runs) — `cockpit ls` lists them."
    )
    with pytest.raises(LookupError):
        rf.find_run(tmp_path, None)


def test_a_run_is_found_by_id_prefix_or_path(tmp_path, monkeypatch):
    runs(tmp_path, "quick-1", "quick-10", "slow-1")
    assert rf.find_run(tmp_path, "quick-1").run_id == "quick-1"  # exact, though a prefix of two
    assert rf.find_run(tmp_path, "quick-10").run_id == "quick-10"
    assert rf.find_run(tmp_path, "sl").run_id == "slow-1"
    found = rf.find_run(tmp_path / "elsewhere", str(tmp_path / "slow-1"))
    assert found.path == tmp_path / "slow-1"
    monkeypatch.chdir(tmp_path)
    assert rf.find_run(tmp_path / "elsewhere", "quick-10").path == Path("quick-10")  # a path
    with pytest.raises(LookupError):
        rf.find_run(tmp_path, "x\0y")  # a NUL is a control character
    with pytest.raises(LookupError) as e:
        rf.find_run(tmp_path, "q" * 300)  # no file system takes such a name: not a path
    assert str(e.value).startswith(f"no run '{'q' * 300}' in {tmp_path}; the latest is slow-1")
