"""TensorBoard both ways: cockpit's event files open in TensorBoard's own reader, and logs
written by torch.utils.tensorboard read back — whole, incrementally, and as cockpit runs."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cockpit import tensorboard as tb
from engine.torchfree.runfolder import RunFolder, StepsAppender, write_json_atomic
from tests.conftest import ROOT, cockpit, wait_for

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard (the reference reader) is a test extra: pip install -e '.[test]'",
)


def _accumulate(path: Path):
    acc = event_accumulator.EventAccumulator(
        str(path), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def _summary_writer(logdir: Path):
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COCKPIT_TB_CACHE", str(tmp_path / "tb-cache"))


def test_crc32c_matches_the_published_check_values() -> None:
    # RFC 3720 B.4: 32 bytes of zeros -> 0x8A9136AA; "123456789" -> 0xE3069283
    assert tb.crc32c_py(bytes(32)) == 0x8A9136AA
    assert tb.crc32c_py(b"123456789") == 0xE3069283
    assert tb.crc32c(b"123456789") == 0xE3069283


def test_our_event_files_open_in_tensorboards_reader_with_every_step(tmp_path: Path) -> None:
    with tb.EventWriter(tmp_path / "run") as w:
        for step in range(0, 3000):
            w.scalar("generalize/train_loss", 1.0 / (step + 1), step, 1000.0 + step)
        w.scalar("big/step", 7.0, 2**40, 5000.0)
        w.scalar("x" * 300, 1.5, 3, 5001.0)  # a tag too long for the fast path
        w.text("preset", "name: quickstart\nseed: 0")
    acc = _accumulate(w.path)
    points = acc.Scalars("generalize/train_loss")
    assert [p.step for p in points] == list(range(3000))
    assert points[9].value == pytest.approx(0.1) and points[9].wall_time == 1009.0
    assert acc.Scalars("big/step")[0].step == 2**40
    assert acc.Scalars("x" * 300)[0].value == 1.5
    text = acc.Tensors("preset/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "name: quickstart\nseed: 0"
    # and ours reads back what TensorBoard read, CRCs checked
    ours = tb.read_scalars(w.path, verify=True)
    assert len(ours) == 3002 and ours.texts[0][3] == "name: quickstart\nseed: 0"


def test_a_log_written_by_torch_utils_tensorboard(tmp_path: Path) -> None:
    w = _summary_writer(tmp_path)
    for step in range(0, 20000, 7):  # steps past 2**7 and 2**14: varints of 1-3 bytes
        w.add_scalar("Loss/train", 1.0 / (step + 1), step)
        w.add_scalar("lr", 0.1, step)
    w.add_scalar("huge", 3.0, 2**35)
    w.add_text("note", "hello", 0)
    w.add_histogram("weights", np.array([0.1, 0.2, 0.3]), 1)  # not a scalar: skipped, not a stop
    w.add_scalar("after", 9.0, 5)
    w.close()
    (path,) = tb.event_files(tmp_path)
    ours = tb.read_scalars(path, verify=True).by_tag()
    acc = _accumulate(path)
    for tag in ("Loss/train", "lr", "huge", "after"):
        ref = acc.Scalars(tag)
        steps, walls, values = ours[tag]
        assert list(steps) == [p.step for p in ref], tag
        assert list(values) == pytest.approx([p.value for p in ref]), tag
        assert list(walls) == pytest.approx([p.wall_time for p in ref]), tag
    assert tb.writer_process(path) == (os.uname().nodename, os.getpid())


def test_tf2_style_tensor_scalars_are_read(tmp_path: Path) -> None:
    """TF2's tf.summary.scalar writes a float tensor with scalars-plugin metadata."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

    path = tmp_path / "events.out.tfevents.1.host.1.v2"
    with open(path, "wb") as f:
        for step, value in enumerate((0.5, 0.25)):
            tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value])
            meta = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            )
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag="epoch_loss", tensor=tensor, metadata=meta)]
            )
            event = event_pb2.Event(wall_time=10.0 + step, step=step, summary=summary)
            f.write(tb.frame(event.SerializeToString()))
    got = tb.read_scalars(path)
    assert list(got.tags) == ["epoch_loss"] * 2 and list(got.values) == [0.5, 0.25]
    assert list(got.steps) == [0, 1]


def test_the_tail_reads_only_new_records_and_waits_for_a_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1.h.1.0"
    records = [tb.frame(tb.scalar_event("loss", 1.0 / (i + 1), i, 100.0 + i)) for i in range(10)]
    blob = b"".join(records)
    cut = len(b"".join(records[:6])) + 5  # half of record 7's header is on disk
    path.write_bytes(blob[:cut])
    tail = tb.EventFileTail(path)
    first = tail.read_new()
    assert list(first.steps) == [0, 1, 2, 3, 4, 5]
    assert list(tail.read_new().steps) == []  # still partial: nothing, no error
    with open(path, "ab") as f:
        f.write(blob[cut : cut + 20])  # header done, payload still partial
    assert list(tail.read_new().steps) == []
    with open(path, "ab") as f:
        f.write(blob[cut + 20 :])
    assert list(tail.read_new().steps) == [6, 7, 8, 9]
    assert tail.error is None


def test_a_corrupt_record_is_reported_once_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1.h.1.0"
    good = tb.frame(tb.scalar_event("loss", 1.0, 1, 100.0))
    bad = bytearray(tb.frame(tb.scalar_event("loss", 2.0, 2, 101.0)))
    bad[20] ^= 0xFF  # a flipped bit inside the payload
    path.write_bytes(good + bytes(bad))
    tail = tb.EventFileTail(path, verify=True)
    assert list(tail.read_new().steps) == [1]  # the good record before it
    assert "payload's CRC does not match" in tail.error and tail.offset == len(good)
    assert len(tail.read_new()) == 0  # and no exception on the next call either


@pytest.mark.parametrize("lo, hi", [(0, 0), (1, 127), (128, 16383), (16384, 2**21 - 1), (0, 2**40)])
def test_step_fields_decode_in_bulk_as_one_by_one(lo: int, hi: int) -> None:
    import random

    rng = random.Random(lo)
    steps = [rng.randint(lo, hi) for _ in range(3000)]
    fields = [b"" if n == 0 else b"\x10" + tb._varint(n) for n in steps]
    assert list(tb._steps_of(fields)) == steps


def test_tags_become_columns_or_metrics() -> None:
    assert tb.classify("Loss/train") == ("step", "train", "train_loss")
    assert tb.classify("train/loss") == ("step", "train", "train_loss")  # HF Trainer
    assert tb.classify("eval/loss") == ("step", "train", "val_loss")
    assert tb.classify("lr-Adam") == ("step", "train", "lr")  # Lightning's LearningRateMonitor
    assert tb.classify("generalize/val_loss") == ("step", "generalize", "val_loss")  # our export
    assert tb.classify("generalize/eval/accuracy") == ("metric", "generalize", "accuracy")
    assert tb.classify("val/acc") == ("metric", "train", "accuracy")
    assert tb.classify("grad_norm") == ("metric", "train", "grad_norm")


def test_a_tensorboard_run_as_a_cockpit_run_live(tmp_path: Path) -> None:
    logdir = tmp_path / "lightning_logs"
    w = _summary_writer(logdir / "version_0")
    for step in range(100):
        w.add_scalar("train_loss", 2.0 - step / 100, step)
        w.add_scalar("val_loss", 2.5 - step / 100, step)
    w.add_scalar("val_acc", 0.8, 99)
    w.flush()
    source = tb.TensorBoardDir(logdir)
    ((run_id, path),) = source.sync().items()
    assert run_id == "tb-lightning_logs-version_0"
    folder = RunFolder(path)
    snap = folder.snapshot()
    assert snap.status == "running"  # this process is the writer, alive
    assert (snap.step, snap.train_loss, snap.metric_name, snap.metric) == (
        99,
        pytest.approx(1.01),
        "accuracy",
        pytest.approx(0.8),
    )
    cols = folder.steps()
    assert list(cols["step"]) == list(range(100))  # one row per step, both losses in it
    assert cols["val_loss"][0] == 2.5
    for step in range(100, 150):
        w.add_scalar("train_loss", 1.0, step)
    w.flush()
    source.sync()
    assert list(folder.steps()["step"]) == list(range(150))  # appended, nothing twice
    w.close()
    # another cockpit picks the mirror up where it stood: no duplicates after a restart
    source.runs[run_id].owner = False
    os.close(source.runs[run_id].lock_fd)
    again = tb.TensorBoardDir(logdir)
    again.sync()
    assert list(folder.steps()["step"]) == list(range(150))

    listed = json.loads(
        cockpit(
            "ls",
            "--json",
            "--tensorboard",
            str(logdir),
            workspace=tmp_path / "ws",
            env={"COCKPIT_TB_CACHE": str(tmp_path / "tb-cache")},
        ).stdout
    )
    assert [r["run_id"] for r in listed] == [run_id]
    assert listed[0]["step"] == 149


def test_the_apps_watcher_shows_tensorboard_runs_next_to_the_workspaces(
    tmp_path: Path, workspace: Path
) -> None:
    import cockpit.track as track
    from cockpit.app.messages import RunsUpdated
    from cockpit.app.watcher import WorkspaceWatcher

    with track.start(name="own", workspace=workspace) as run:
        run.log(1, train_loss=1.0)
    logdir = tmp_path / "tblogs"
    with tb.EventWriter(logdir / "baseline") as w:
        w.scalar("loss", 0.5, 1, 10.0)
    posted = []
    watcher = WorkspaceWatcher(workspace, posted.append)
    watcher.sources = (tb.TensorBoardDir(logdir),)
    watcher.scan()
    (message,) = [m for m in posted if isinstance(m, RunsUpdated)]
    ids = {s.run_id: s for s in message.runs}
    assert set(ids) == {run.run_id, "tb-tblogs-baseline"}
    assert ids["tb-tblogs-baseline"].snapshot.train_loss == 0.5


def _two_stage_run(workspace: Path) -> RunFolder:
    """A finished engine-shaped run with two stages, written as the engine writes one."""
    folder = RunFolder(workspace / "quick-20261201-000000-abcd")
    folder.path.mkdir(parents=True)
    folder.write_steps_header()
    rows = [
        (s, 1000.0 + s, 0.0, 1.0 / s, math.nan, 0.001, 0.01, math.nan, 1e-3) for s in range(1, 51)
    ]
    rows += [
        (s, 2000.0 + s, 1.0, 2.0 / s, 3.0 / s, 0.002, 0.02, math.nan, 1e-3) for s in range(1, 401)
    ]
    out = StepsAppender(folder.file("steps.bin"))
    out.append_many(rows)
    out.close()
    with open(folder.file("evals.jsonl"), "w") as f:
        f.write(
            json.dumps(
                {
                    "step": 400,
                    "time": 2400.0,
                    "stage": "generalize",
                    "val_loss": 0.1,
                    "accuracy": 0.97,
                }
            )
            + "\n"
        )
    folder.file("preset.yaml").write_text("name: quick\nseed: 0\n")
    write_json_atomic(
        folder.file("summary.json"),
        {
            "run_id": folder.run_id,
            "preset": "quick",
            "status": "passed",
            "stages": [
                {
                    "name": "overfit_one",
                    "status": "pass",
                    "reason": "ok",
                    "checks": [],
                    "metrics": {},
                }
            ],
            "stage_names": ["overfit_one", "generalize"],
            "created": 1000.0,
        },
    )
    return folder


def test_cockpit_export_opens_in_tensorboard_with_every_step(
    tmp_path: Path, workspace: Path
) -> None:
    folder = _two_stage_run(workspace)
    out = cockpit(
        "export", folder.run_id[:8], "--tensorboard", str(tmp_path / "tb"), workspace=workspace
    )
    assert out.returncode == 0, out.stderr
    (path,) = tb.event_files(tmp_path / "tb" / folder.run_id)
    acc = _accumulate(path)
    assert [p.step for p in acc.Scalars("overfit_one/train_loss")] == list(range(1, 51))
    assert [p.step for p in acc.Scalars("generalize/train_loss")] == list(range(1, 401))
    assert [p.step for p in acc.Scalars("generalize/val_loss")] == list(range(1, 401))
    assert "overfit_one/val_loss" not in acc.Tags()["scalars"]  # NaN: no val batch there
    assert acc.Scalars("generalize/eval/accuracy")[0].value == pytest.approx(0.97)
    assert acc.Scalars("generalize/lr")[0].value == pytest.approx(1e-3)
    preset = acc.Tensors("preset/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: quick" in preset
    assert (
        "**overfit_one** pass"
        in acc.Tensors("verdicts/text_summary")[0].tensor_proto.string_val[0].decode()
    )
    # and back in: the mirror of the export has the stages and the steps of the run
    mirror = RunFolder(next(iter(tb.TensorBoardDir(tmp_path / "tb").sync().values())))
    assert mirror.summary()["stage_names"] == ["overfit_one", "generalize"]
    assert len(mirror.steps()) == 450
    assert "\nname: quick\nseed: 0\n" in mirror.preset_text()  # the preset as it was


def test_a_rewritten_log_is_mirrored_again_not_appended(tmp_path: Path, workspace: Path) -> None:
    """Exporting a run again rewrites its event file from the start: the mirror starts over."""
    folder = _two_stage_run(workspace)
    out_dir = tmp_path / "tb"
    assert (
        cockpit(
            "export", folder.run_id, "--tensorboard", str(out_dir), workspace=workspace
        ).returncode
        == 0
    )
    source = tb.TensorBoardDir(out_dir)
    (path,) = source.sync().values()
    assert len(RunFolder(path).steps()) == 450
    with tb.EventWriter(
        out_dir / folder.run_id, filename=tb.event_files(out_dir / folder.run_id)[0].name
    ) as w:
        w.scalar("generalize/train_loss", 0.5, 1, 10.0)  # a shorter file under the same name
    source.sync()
    assert list(RunFolder(path).steps()["train_loss"]) == [0.5]


@pytest.mark.slow
def test_export_live_follows_a_tracked_script_to_its_end(tmp_path: Path, workspace: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(
        "import time, cockpit.track as track\n"
        "run = track.start(name='slow')\n"
        "for i in range(1, 41):\n"
        "    run.log(i, train_loss=1.0 / i); time.sleep(0.05)\n"
        "run.finish()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COCKPIT_WORKSPACE": str(workspace)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True)
    try:
        run_dir = wait_for(lambda: next(iter(workspace.iterdir()), None), timeout=60)
        out = cockpit(
            "export",
            run_dir.name,
            "--tensorboard",
            str(tmp_path / "tb"),
            "--live",
            workspace=workspace,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "ended" in out.stdout or "40 scalars" in out.stdout
    finally:
        proc.wait(timeout=60)
    (path,) = tb.event_files(tmp_path / "tb" / run_dir.name)
    assert [p.step for p in _accumulate(path).Scalars("train/train_loss")] == list(range(1, 41))


def test_a_missing_log_directory_is_one_sentence(tmp_path: Path) -> None:
    out = cockpit("ls", "--tensorboard", str(tmp_path / "nope"), workspace=tmp_path / "ws")
    assert out.returncode == 2
    assert "no such directory" in out.stderr and "Traceback" not in out.stderr


def test_record_layout_is_the_documented_one() -> None:
    record = tb.frame(b"abc")
    assert struct.unpack("<Q", record[:8])[0] == 3
    assert struct.unpack("<I", record[8:12])[0] == tb.masked_crc(record[:8])
    assert record[12:15] == b"abc" and struct.unpack("<I", record[15:])[0] == tb.masked_crc(b"abc")


@pytest.mark.slow
def test_a_torch_tensorboard_log_drawn_live_in_the_app(tmp_path: Path, workspace: Path) -> None:
    """`cockpit --tensorboard DIR`: a log torch.utils.tensorboard is writing, curves growing."""
    import asyncio
    import time

    from cockpit.app.screens.run import RunScreen
    from cockpit.app.widgets.curves import CurvesView
    from tests.app.conftest import histories_loaded, make_app, wait_until

    logdir = tmp_path / "runs-tb"
    w = _summary_writer(logdir / "exp1")
    for step in range(50):
        w.add_scalar("Loss/train", 1.0 / (step + 1), step)
        w.add_scalar("Loss/val", 2.0 / (step + 1), step)
    w.flush()

    async def go():
        app = make_app(workspace, clock=time.time)
        app.watcher.sources = (tb.TensorBoardDir(logdir),)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: len(app.runs) == 1, what="the TensorBoard run")
            assert app.runs[0].run_id == "tb-runs-tb-exp1"
            assert app.runs[0].snapshot.status == "running"  # its writer (us) is alive
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            stage = app.screen.query_one(CurvesView).current_stage()
            assert (stage.steps, len(stage.val)) == (50, 50)
            for step in range(50, 80):
                w.add_scalar("Loss/train", 0.01, step)
            w.flush()
            await wait_until(
                pilot,
                lambda: app.screen.query_one(CurvesView).current_stage().steps == 80,
                what="the curve growing",
            )

    try:
        asyncio.run(go())
    finally:
        w.close()
