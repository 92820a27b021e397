"""A FIFO planted in a run folder never blocks a reader: in a shared workspace another user
may replace engine.log, steps.bin, losses.bin, evals.jsonl, preset.yaml, a batch preview or
slurm.json with one, and a plain open() of a FIFO waits for a writer forever (the app's UI
thread, its watcher thread, `cockpit show`, `cockpit export`, `cockpit ls`).

Each read runs in a thread that must end within a few seconds (a hang guard, not a timing
check); a reader still blocked is released by opening its FIFOs for writing, then fails."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from engine.torchfree.runfolder import RunFolder
from tests.app.workspaces import RunSpec, loss_rows, write_run

GUARD_S = 5.0


def plant_fifo(path: Path) -> Path:
    """Replace ``path`` (a file, if there is one) with a FIFO."""
    if path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _release(fifo: Path) -> None:
    """Unblock a reader stuck opening ``fifo``: a writer end opened, then closed (EOF)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


def finishes(call, fifos: list[Path]):
    """``call()``'s value, provided it returns within GUARD_S (its exception is re-raised)."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as e:  # re-raised below, in the test's thread
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(GUARD_S)
    if t.is_alive():
        for _ in range(3):
            for fifo in fifos:
                _release(fifo)
            t.join(1.0)
        pytest.fail(f"{call} was still blocked on a FIFO ({', '.join(map(str, fifos))})")
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture
def run(tmp_path) -> RunFolder:
    return write_run(
        tmp_path / "ws",
        RunSpec(
            "fifo-20260101-000000-aaaa",
            verdicts=[("init", "pass", "fine")],
            steps=loss_rows(range(1, 11), 0),
            evals=[{"step": 10, "time": 1.0, "stage": "init", "val_loss": 0.5}],
            log="hello\n",
        ),
    )


def test_the_log_tab_says_engine_log_is_not_a_regular_file(run):
    from cockpit.app.widgets.log_view import LogView

    fifo = plant_fifo(run.file("engine.log"))
    view = LogView(run)
    shown: list = []
    view.write = shown.append  # no app needed: what the tab would show
    finishes(view.read_new, [fifo])
    finishes(view.read_new, [fifo])  # polled again (once a second): said once
    (note,) = [str(t) for t in shown]
    assert str(fifo) in note and "is not a regular file" in note and "FIFO" in note
    fifo.unlink()
    fifo.write_text("back\n")
    view.read_new()  # a regular log again: tailed as before
    assert [str(t) for t in shown][1:] == ["back"]


def test_the_preset_tab_says_preset_yaml_is_not_a_regular_file(run):
    from cockpit.app.widgets.preset_view import PresetView

    fifo = plant_fifo(run.file("preset.yaml"))
    view = PresetView()
    view.update = lambda content: setattr(view, "shown", content)
    finishes(lambda: view.show(run), [fifo])
    texts = [str(r) for r in view.shown.renderables]
    assert any(str(fifo) in t and "is not a regular file" in t for t in texts), texts


def test_run_json_a_fifo_leaves_the_preset_tab_its_yaml(run):
    from cockpit.app.widgets.preset_view import PresetView

    fifo = plant_fifo(run.file("run.json"))
    view = PresetView()
    view.update = lambda content: setattr(view, "shown", content)
    finishes(lambda: view.show(run), [fifo])
    assert "resolved preset (preset.yaml)" in [str(r) for r in view.shown.renderables]


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_batch_preview_fifo_shows_no_batch(run, split):
    from cockpit.app.widgets.batch_view import BatchView
    from cockpit.show import render

    fifo = plant_fifo(run.file("batches") / f"{split}.json")
    view = BatchView(run)
    view.update = lambda content: setattr(view, "shown", content)
    finishes(view.load, [fifo])
    assert not view.loaded and "no batch yet" in str(view.shown)
    text = finishes(lambda: render(run, color=False), [fifo])  # `cockpit show`
    assert "no batch snapshot yet" in text


def test_the_curves_readers_skip_fifos(run):
    from cockpit.app.history import RunHistory, StepsReader
    from engine.torchfree.losses import LOSSES_FILE, LossesTail

    fifos = [plant_fifo(run.file(n)) for n in ("steps.bin", LOSSES_FILE, "evals.jsonl")]
    assert finishes(lambda: list(StepsReader(run.file("steps.bin")).read_new()), fifos) == []
    assert finishes(LossesTail(run.path).read_new, fifos) == {}
    history = RunHistory(run)
    finishes(history.poll, fifos)  # what the watcher thread does for an open run
    assert history.loaded and history.stages_with_data() == []


def test_export_of_a_run_with_fifos_writes_nothing_and_ends(run, tmp_path):
    from cockpit.export import export

    fifos = [plant_fifo(run.file(n)) for n in ("steps.bin", "evals.jsonl", "preset.yaml")]
    said: list[str] = []
    (e,) = finishes(lambda: export([run], tmp_path / "tb", say=said.append), fifos)
    assert e.points == 0 and said and "0 scalars" in said[0]


@pytest.mark.parametrize("name", ["slurm.json", "pruned.json"])
def test_slurm_records_that_are_fifos_read_as_none(run, name):
    from engine.torchfree import slurm

    fifo = plant_fifo(run.file(name))
    read = slurm.read_record if name == "slurm.json" else slurm.read_pruned
    assert finishes(lambda: read(run.path), [fifo]) is None


def test_cockpit_ls_lists_a_slurm_run_whose_slurm_json_is_a_fifo(capsys, run, monkeypatch):
    from cockpit import cli

    monkeypatch.setenv("COCKPIT_FAKE_GPUS", "0")
    request = json.loads(run.file("run.json").read_text())
    run.file("run.json").write_text(json.dumps({**request, "launcher": "slurm"}))
    fifo = plant_fifo(run.file("slurm.json"))
    ws = str(run.path.parent)
    assert finishes(lambda: cli.main(["ls", "--workspace", ws]), [fifo]) == 0
    out = capsys.readouterr()
    assert run.run_id in out.out and "Traceback" not in out.err


def test_a_requeued_engine_cuts_no_fifo(run):
    """The requeue cut opens steps.bin/losses.bin/evals.jsonl read-write: a FIFO opened so
    does not block on Linux, but reading it would, forever (the engine would never restart)."""
    from engine.torchfree.requeue import cut_jsonl_after, cut_records_after
    from engine.torchfree.runfolder import RECORD_SIZE

    steps = plant_fifo(run.file("steps.bin"))
    evals = plant_fifo(run.file("evals.jsonl"))
    assert finishes(lambda: cut_records_after(steps, RECORD_SIZE, 5), [steps]) == 0
    assert finishes(lambda: cut_jsonl_after(evals, 5), [evals]) == 0


def test_the_tracking_apis_reader_skips_a_fifo(run):
    from cockpit.track import _decode_range

    steps = plant_fifo(run.file("steps.bin"))
    columns = finishes(lambda: _decode_range(steps, 0, 10), [steps])
    assert all(len(v) == 0 for v in columns.values())
