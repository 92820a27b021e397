"""The run folder: appends are whole records, readers tail incrementally and never see half
a record, summaries are atomic, a dead engine reads as an error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

from engine.torchfree.runfolder import (
    RECORD_SIZE,
    STEP_COLUMNS,
    JsonlAppender,
    JsonlTail,
    RunFolder,
    StepsAppender,
    StepsTail,
    find_run,
    iter_runs,
    write_json_atomic,
)


def row(step: int, loss: float = 1.0, val: float = math.nan) -> tuple:
    return (step, 1000.0 + step, 0, loss, val, 0.001, 0.01, math.nan, 1e-3)


def test_steps_round_trip_and_incremental_tail(tmp_path):
    path = tmp_path / "steps.bin"
    out = StepsAppender(path)
    tail = StepsTail(path)
    assert len(tail.read_new()) == 0  # nothing yet: no error
    out.append_many([row(i, loss=1 / i) for i in range(1, 101)])
    first = tail.read_new()
    assert len(first) == 100 and first["step"][-1] == 100 and first["train_loss"][1] == 0.5
    out.append(*row(101, val=0.7))
    second = tail.read_new()
    assert list(second["step"]) == [101.0] and second["val_loss"][0] == 0.7
    assert tail.offset == 101 * RECORD_SIZE


def test_a_half_written_record_is_left_for_later(tmp_path):
    path = tmp_path / "steps.bin"
    StepsAppender(path).append_many([row(1), row(2)])
    with open(path, "ab") as f:  # a writer killed mid-record
        f.write(b"\x00" * (RECORD_SIZE // 2))
    tail = StepsTail(path)
    assert len(tail.read_new()) == 2
    assert tail.offset == 2 * RECORD_SIZE


def test_jsonl_tail_waits_for_the_newline(tmp_path):
    path = tmp_path / "e.jsonl"
    out = JsonlAppender(path)
    tail = JsonlTail(path)
    out.append({"a": 1})
    with open(path, "ab") as f:
        f.write(b'{"b": ')
    assert tail.read_new() == [{"a": 1}]
    with open(path, "ab") as f:
        f.write(b"2}\n")
    assert tail.read_new() == [{"b": 2}]


def test_atomic_json_leaves_no_temp_files(tmp_path):
    target = tmp_path / "summary.json"
    for i in range(5):
        write_json_atomic(target, {"i": i, "nan": float("nan")})
    assert json.loads(target.read_text().replace("NaN", "null"))["i"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_steps_header_documents_the_layout(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_steps_header()
    header = json.loads((tmp_path / "steps.json").read_text())
    assert header["columns"] == list(STEP_COLUMNS) and header["record_bytes"] == RECORD_SIZE


def make_run(ws, name, status="running", pid=None, create_time=None):
    folder = RunFolder(ws / name)
    folder.path.mkdir(parents=True)
    write_json_atomic(folder.file("run.json"), {"run_id": name})
    folder.write_summary(
        {
            "run_id": name,
            "preset": "p",
            "status": status,
            "stages": [],
            "created": time.time(),
            "overrides": {},
            "parent": None,
            "fork_step": None,
        }
    )
    if pid is not None:
        import socket

        write_json_atomic(
            folder.file("proc.json"),
            {"pid": pid, "create_time": create_time, "host": socket.gethostname()},
        )
    return folder


def test_dead_engine_reads_as_error_and_pid_reuse_is_detected(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import psutil

        ct = psutil.Process(proc.pid).create_time()
        alive = make_run(tmp_path, "alive", pid=proc.pid, create_time=ct)
        reused = make_run(
            tmp_path, "reused", pid=proc.pid, create_time=ct - 1000
        )  # same pid, other process
        assert alive.state()["status"] == "running"
        assert reused.state()["status"] == "error"
    finally:
        proc.kill()
        proc.wait()
    assert alive.state()["status"] == "error"
    assert "gone without a word" in alive.state()["reason"]


def test_snapshot_reads_only_file_ends(tmp_path):
    folder = make_run(
        tmp_path, "r1", pid=os.getpid(), create_time=__import__("psutil").Process().create_time()
    )
    StepsAppender(folder.file("steps.bin")).append_many(
        [row(i, loss=2.0 - i / 100, val=(1.5 if i % 10 == 0 else math.nan)) for i in range(1, 101)]
    )
    JsonlAppender(folder.file("evals.jsonl")).append(
        {"step": 100, "val_loss": 1.1, "accuracy": 0.8}
    )
    JsonlAppender(folder.file("telemetry.jsonl")).append(
        {"t": 1.0, "gpu": {"util": 55.0}, "data_wait": 0.1}
    )
    snap = folder.snapshot()
    assert snap.status == "running" and snap.step == 100
    assert snap.train_loss == 1.0 and snap.val_loss == 1.5
    assert snap.metric_name == "accuracy" and snap.metric == 0.8
    assert snap.gpu_util == 55.0
    assert abs(snap.data_wait - 0.1) < 1e-9
    assert json.dumps(snap.to_json())  # JSON-safe: NaN became null


def test_find_run_by_prefix_and_helpful_misses(tmp_path):
    make_run(tmp_path, "quick-20260101-000000-aaaa", status="passed")
    make_run(tmp_path, "quick-20260101-000001-bbbb", status="passed")
    assert find_run(tmp_path, "quick-20260101-000001").run_id.endswith("bbbb")
    for ref, words in (("quick", "matches 2 runs"), ("zzz", "no run 'zzz'")):
        try:
            find_run(tmp_path, ref)
        except LookupError as e:
            assert words in str(e)
        else:
            raise AssertionError("expected LookupError")
    assert next(iter_runs(tmp_path)).run_id.endswith("aaaa")
