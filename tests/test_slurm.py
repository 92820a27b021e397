"""The Slurm launcher (cockpit/launchers/slurm.py, engine/torchfree/slurm.py, docs/slurm.md).

Two halves:
- units that need no Slurm: parsing squeue/sacct output, how a summary and its job combine
  (every end Slurm can give a job), the workspace's launcher settings, the sbatch command line;
- end-to-end tests against the real single-node Slurm that tests/slurm/setup.sh brings up
  (.ci/run calls it): submit, watch queued -> running with the node -> passed, an ablation of
  three jobs, `cockpit kill` through scancel, an scancel from outside, a warm fork as another
  job. They skip, with the reason setup.sh wrote, when there is no Slurm here.

Slurm's documented behaviour the tests lean on: `squeue -t all` lists finished jobs for
MinJobAge seconds; a cancelled job stays COMPLETING until its processes are gone (scancel's
SIGTERM, SIGKILL after KillWait; https://slurm.schedmd.com/scancel.html), with Reason=None;
a held job (`sbatch --hold`) pends with Reason=JobHeldUser until `scontrol release`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cockpit.args import UsageError
from cockpit.launchers import choose, parse_slurm_args
from cockpit.launchers import slurm as launcher
from engine.torchfree import slots, slurm
from engine.torchfree.runfolder import RunFolder

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("COCKPIT_SLURM_STATE", "/tmp/cockpit-slurm"))


# ---------------------------------------------------------------- parsing


def test_squeue_lines_parse_into_jobs_and_junk_is_skipped():
    text = (
        "12|PENDING|Resources||2:00:00\n"
        "13|RUNNING|None|node[01-02]|UNLIMITED\n"
        "garbage line\n"
        "14|CANCELLED by 1000|None|node03|1:00\n"
    )
    jobs = slurm.parse_squeue(text)
    assert set(jobs) == {"12", "13", "14"}
    assert jobs["12"].state == "PENDING" and jobs["12"].reason == "Resources"
    assert jobs["13"].nodes == "node[01-02]" and jobs["13"].reason == ""
    assert jobs["14"].state == "CANCELLED"


def test_sacct_lines_skip_job_steps():
    text = "20|TIMEOUT|0:15|gpu07|00:10:00\n20.batch|CANCELLED|0:15|gpu07|\n21|FAILED|1:0|gpu08|\n"
    jobs = slurm.parse_sacct(text)
    assert set(jobs) == {"20", "21"}
    assert jobs["20"].state == "TIMEOUT" and jobs["20"].time_limit == "00:10:00"
    assert jobs["21"].exit_code == "1:0"
    assert "exit code 1:0" in jobs["21"].words()


def test_scontrol_show_job_parses_keys():
    text = "JobId=5 JobName=wrap\n   JobState=TIMEOUT Reason=TimeLimit Dependency=(null)\n"
    info = slurm.parse_scontrol(text)
    assert info["JobState"] == "TIMEOUT" and info["Reason"] == "TimeLimit"


# ---------------------------------------------------------------- summary + job


REC = {"job_id": "42", "submitted": 0.0}


def _live(status="running", **kw):
    return {"run_id": "r", "status": status, "stages": [], **kw}


def test_pending_job_shows_queued_with_slurm_reason():
    job = slurm.Job("42", "PENDING", "Priority")
    s, news = slurm.overlay(_live("running"), REC, job, True)  # requeued after a preemption
    assert s["status"] == "queued" and s["queue"] == "Slurm job 42 pending (Priority)"
    assert not news


def test_a_requeued_job_shows_queued_again_not_its_previous_attempts_end():
    before = _live("killed", reason="stopped during train", ended=5.0, slurm_state="PREEMPTED")
    s, news = slurm.overlay(before, REC, slurm.Job("42", "PENDING", "BeginTime"), True)
    assert s["status"] == "queued" and s["queue"] == "Slurm job 42 pending (BeginTime)"
    assert s["reason"] is None and s["ended"] is None and not news


def test_running_job_keeps_the_engines_status_and_names_the_node():
    job = slurm.Job("42", "RUNNING", "", "gpu07")
    s, news = slurm.overlay(_live("queued"), REC, job, True)
    assert s["status"] == "queued" and s["node"] == "gpu07" and not news
    assert s["queue"] == "Slurm job 42 starting on gpu07"
    s, _ = slurm.overlay(_live("running"), REC, slurm.Job("42", "COMPLETING", "", "gpu07"), True)
    assert s["status"] == "running"  # its processes are still stopping: not over yet


@pytest.mark.parametrize(
    "state, status, words",
    [
        ("TIMEOUT", "killed", "stopped at its time limit (1:00:00)"),
        ("CANCELLED", "killed", "cancelled (scancel)"),
        ("PREEMPTED", "killed", "preempted"),
        ("NODE_FAIL", "error", "node failure"),
        ("OUT_OF_MEMORY", "error", "out of memory"),
        ("FAILED", "error", "failed"),
        ("COMPLETED", "error", "ended without the engine recording an end"),
    ],
)
def test_a_job_that_ended_while_the_folder_says_running_ends_with_slurms_reason(
    state, status, words
):
    job = slurm.Job("42", state, "", "gpu07", "1:00:00")
    s, news = slurm.overlay(_live("running", current_stage="train"), REC, job, True, now=100.0)
    assert news  # worth writing back: Slurm forgets the job after MinJobAge
    assert s["status"] == status and words in s["reason"] and "42" in s["reason"]
    assert s["slurm_state"] == state and s["ended"] == 100.0 and s["current_stage"] is None


def test_an_engine_that_wrote_killed_gets_slurms_reason_in_front():
    s, news = slurm.overlay(
        _live("killed", reason="stopped during train"), REC, slurm.Job("42", "TIMEOUT"), True
    )
    assert news and s["status"] == "killed"
    assert s["reason"] == "Slurm job 42 stopped at its time limit; stopped during train"
    done, news = slurm.overlay(_live("passed"), REC, slurm.Job("42", "COMPLETED"), True)
    assert news and done["status"] == "passed" and done["slurm_state"] == "COMPLETED"
    again, news = slurm.overlay(s, REC, slurm.Job("42", "TIMEOUT"), True)
    assert not news and again["reason"] == s["reason"]  # added once only


def test_slurm_not_answering_changes_nothing():
    s, news = slurm.overlay(_live("running"), REC, None, False)
    assert s["status"] == "running" and not news


def test_a_job_slurm_forgot_while_the_folder_is_live_is_an_error():
    s, news = slurm.overlay(_live("running"), {"job_id": "42", "submitted": 0.0}, None, True, 1e9)
    assert news and s["status"] == "error" and "no longer knows job 42" in s["reason"]
    fresh, news = slurm.overlay(
        _live("queued"), {"job_id": "42", "submitted": 99.0}, None, True, 100
    )
    assert fresh["status"] == "queued" and not news  # a moment after sbatch


def _folder(tmp_path, summary, record=REC) -> RunFolder:
    run = tmp_path / "ws" / "r"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "run.json").write_text(json.dumps({"launcher": "slurm"}))
    if record is not None:
        (run / "slurm.json").write_text(json.dumps(record))
    return RunFolder(run)


def test_without_squeue_a_slurm_run_shows_as_written(tmp_path, monkeypatch):
    """A login node without Slurm's tools (or a laptop reading a copied workspace): no
    'engine process gone' for a job that runs elsewhere, no Slurm call."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    folder = _folder(tmp_path, _live("running", created=0.0))
    assert folder.state()["status"] == "running"
    snap = folder.snapshot()
    assert snap.status == "running" and snap.slurm_job == "42"


def test_a_local_run_never_asks_slurm(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(slurm, "query", lambda *a, **k: calls.append(a) or ({}, True))
    folder = _folder(tmp_path, _live("passed"), record=None)
    assert folder.state()["status"] == "passed" and not calls


def test_one_squeue_call_serves_every_run_of_a_workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    for i in range(5):
        run = ws / f"r{i}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(_live("running")))
        (run / "slurm.json").write_text(json.dumps({"job_id": str(100 + i), "submitted": 0}))
    calls = []

    def fake_query(ids, timeout=slurm.TIMEOUT_S):
        calls.append(sorted(ids))
        return {j: slurm.Job(j, "RUNNING", "", "n1") for j in ids}, True

    monkeypatch.setattr(slurm, "query", fake_query)
    monkeypatch.setattr(slurm, "JOBS", slurm.Jobs(ttl=60))
    snaps = [RunFolder(ws / f"r{i}").snapshot() for i in range(5)]
    assert [s.node for s in snaps] == ["n1"] * 5
    assert calls == [[str(100 + i) for i in range(5)]]


def test_the_end_slurm_reports_is_written_back(tmp_path, monkeypatch):
    folder = _folder(tmp_path, _live("running", created=0.0))
    monkeypatch.setattr(slurm, "JOBS", slurm.Jobs(ttl=0))
    monkeypatch.setattr(
        slurm, "query", lambda ids, timeout=0: ({"42": slurm.Job("42", "TIMEOUT", "", "n1")}, True)
    )
    assert folder.state()["status"] == "killed"
    on_disk = json.loads(folder.file("summary.json").read_text())
    assert on_disk["status"] == "killed" and "time limit" in on_disk["reason"]


def test_squeue_missing_means_not_answered(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert slurm.query(["1"]) == ({}, False)


def test_squeue_that_hangs_is_cut_off(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "squeue").write_text("#!/bin/sh\nsleep 30\n")
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    assert slurm.query(["1"], timeout=0.5) == ({}, False)


PRUNED = {"metric": "val_loss", "step": 10, "reason": "pruned: val_loss 1.6 at step 10 is worse"}


def test_a_pruned_run_keeps_the_rules_reason_when_slurm_says_cancelled():
    """The engine cancels its own job when pruned: Slurm's CANCELLED must not turn `pruned`
    into `killed (scancel)` — neither after the engine wrote its end nor before (SIGKILL)."""
    done = _live("killed", reason=PRUNED["reason"], pruned=PRUNED)
    s, news = slurm.overlay(done, REC, slurm.Job("42", "CANCELLED"), True)
    assert news and s["status"] == "killed" and s["reason"] == PRUNED["reason"]
    assert s["slurm_state"] == "CANCELLED"
    cut_short = _live("running", current_stage="train", pruned=PRUNED)  # from pruned.json
    s, news = slurm.overlay(cut_short, REC, slurm.Job("42", "CANCELLED"), True, now=7.0)
    assert news and s["status"] == "killed" and s["reason"] == PRUNED["reason"]
    assert s["ended"] == 7.0 and s["current_stage"] is None
    failed = slurm.overlay(cut_short, REC, slurm.Job("42", "NODE_FAIL"), True)[0]
    assert failed["status"] == "error"  # a node failure is still one


def test_the_pruned_decision_on_disk_survives_a_sigkill_before_the_engine_wrote_it(
    tmp_path, monkeypatch
):
    folder = _folder(tmp_path, _live("running", created=0.0))
    (folder.path / slurm.PRUNED_JSON).write_text(json.dumps({"job_id": "42", "pruned": PRUNED}))
    monkeypatch.setattr(slurm, "JOBS", slurm.Jobs(ttl=0))
    monkeypatch.setattr(
        slurm, "query", lambda ids, timeout=0: ({"42": slurm.Job("42", "CANCELLED")}, True)
    )
    s = folder.state()
    assert s["status"] == "killed" and s["reason"] == PRUNED["reason"] and s["pruned"] == PRUNED
    on_disk = json.loads(folder.file("summary.json").read_text())
    assert on_disk["reason"] == PRUNED["reason"] and on_disk["slurm_state"] == "CANCELLED"


def _fake_scancel(tmp_path, monkeypatch, code=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "scancel.args"
    (bin_dir / "scancel").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\necho "scancel: error: no" >&2\nexit {code}\n'
    )
    (bin_dir / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_pruning_inside_a_job_writes_the_decision_then_scancels_its_own_job(tmp_path, monkeypatch):
    log = _fake_scancel(tmp_path, monkeypatch)
    folder = _folder(tmp_path, _live("running"))
    env = {"SLURM_JOB_ID": "42"}
    assert slurm.cancel_pruned(folder, {}, PRUNED, env) is None  # a local run: no Slurm
    assert not log.exists()
    assert slurm.cancel_pruned(folder, {"launcher": "slurm"}, PRUNED, env) == "scancel"
    assert log.read_text().split() == ["42"]
    assert slurm.read_pruned(folder.path) == PRUNED
    assert slurm.cancel_pruned(folder, {"launcher": "slurm"}, PRUNED, env) is None  # once
    assert log.read_text().split() == ["42"]


def test_pruning_stops_the_run_itself_when_scancel_is_refused(tmp_path, monkeypatch):
    _fake_scancel(tmp_path, monkeypatch, code=1)
    folder = _folder(tmp_path, _live("running"))
    got = slurm.cancel_pruned(folder, {"launcher": "slurm"}, PRUNED, {"SLURM_JOB_ID": "42"})
    assert got == "self" and slurm.read_pruned(folder.path) == PRUNED


# ---------------------------------------------------------------- inside the job


def test_inside_its_job_the_engine_takes_slurms_devices_without_the_local_queue():
    env = {"SLURM_JOB_ID": "77", "SLURMD_NODENAME": "gpu07", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert slurm.in_job({"launcher": "slurm"}, env)
    assert not slurm.in_job({}, env)  # a local run started inside an salloc: the local queue
    lease = slots.slurm_job_lease(env)
    assert lease.gpus == [2, 3] and lease.env == {}  # Slurm's CUDA_VISIBLE_DEVICES stays
    assert lease.describe() == "Slurm job 77 on gpu07 (GPUs 2,3)"
    lease.release()
    cpu = slots.slurm_job_lease({"SLURM_JOB_ID": "78"})
    assert cpu.kind == "cpu" and cpu.describe() == "Slurm job 78"
    fields = slurm.job_fields({**env, "SLURM_RESTART_COUNT": "1"})
    assert fields["slurm_job"] == "77" and fields["node"] == "gpu07"
    assert fields["slurm_restarts"] == 1
    assert fields["slurm_state"] is None and fields["ended"] is None  # a new attempt


class _Ckpt:
    def __init__(self, info, path=Path("/nonexistent-run")):
        self.info = info
        self.path = path

    def checked_checkpoint(self):
        return self.info, None if self.info else "none"


JOB_ENV = {"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "1"}


def test_a_requeued_train_run_resumes_from_its_own_checkpoint_for_the_steps_left():
    ckpt = {"path": "/ws/r/checkpoints/step_40.pt", "step": 40, "stage": "train"}
    req = {"launcher": "slurm"}
    plan = slurm.resume_plan(_Ckpt(ckpt), req, ["train"], 100, JOB_ENV)
    assert plan == {"path": ckpt["path"], "step": 40, "steps": 60}
    warm = {**req, "warm_from": "/ws/p/checkpoints/step_20.pt", "fork_step": 20}
    assert slurm.resume_plan(_Ckpt(ckpt), warm, ["train"], 100, JOB_ENV)["steps"] == 80
    first = {"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "0"}
    assert slurm.resume_plan(_Ckpt(ckpt), req, ["train"], 100, first) is None
    assert slurm.resume_plan(_Ckpt(ckpt), req, ["init", "train"], 100, JOB_ENV) is None
    assert slurm.resume_plan(_Ckpt(None), req, ["train"], 100, JOB_ENV) is None
    assert slurm.resume_plan(_Ckpt(ckpt), {}, ["train"], 100, JOB_ENV) is None  # local run
    done = {**ckpt, "step": 100}
    assert slurm.resume_plan(_Ckpt(done), req, ["train"], 100, JOB_ENV) is None


def _steps_file(path: Path, steps: list[int]) -> None:
    from engine.torchfree.runfolder import STEP_COLUMNS, StepsAppender

    out = StepsAppender(path)
    out.append_many([(st, 0.0, 0.0, *([1.0] * (len(STEP_COLUMNS) - 3))) for st in steps])
    out.close()


def test_a_requeued_run_cuts_what_its_first_attempt_logged_after_the_checkpoint(tmp_path):
    """Requeue without duplicates: the first attempt logged steps 1..47 and evals at 10..40,
    its last checkpoint is step 40; the resumed attempt logs 41.. again. The runner cuts right
    after the plan is made, before anything is appended, so each step is on disk once."""
    import struct

    from engine.torchfree import losses, requeue
    from engine.torchfree.runfolder import StepsTail

    run = tmp_path / "r"
    run.mkdir()
    _steps_file(run / "steps.bin", list(range(1, 48)))
    with open(run / "steps.bin", "ab") as f:
        f.write(b"\0" * 5)  # a torn last record of the killed attempt goes too
    rows = [{"stage": "train", "step": st, "val_loss": 1.0} for st in (10, 20, 30, 40)]
    (run / "evals.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "train", "step": 45, "val'
    )
    (run / "losses.bin").write_bytes(  # records of step, stage, name, value
        b"".join(struct.pack("<4d", st, 0, 0, 0.5) for st in (39, 40, 41, 42))
    )
    folder = _Ckpt({"path": str(run / "c.pt"), "step": 40, "stage": "train"}, run)
    plan = slurm.resume_plan(folder, {"launcher": "slurm"}, ["train"], 100, JOB_ENV)
    assert plan["step"] == 40 and plan["steps"] == 60
    cut = requeue.log_cut(folder, plan["step"])
    assert cut == {"steps.bin": 7, "losses.bin": 2, "evals.jsonl": 1}
    assert list(StepsTail(run / "steps.bin").read_new()["step"]) == list(range(1, 41))
    assert (run / "steps.bin").stat().st_size % 72 == 0
    assert [r["step"] for r in RunFolder(run).evals()] == [10, 20, 30, 40]
    assert (run / "losses.bin").stat().st_size == 2 * losses.RECORD_BYTES
    # the second attempt logs 41..; requeued again at checkpoint 50: cut again, idempotent
    _steps_file(run / "steps.bin", list(range(41, 56)))
    again = requeue.cut_logs_after(folder, 50)
    assert again["steps.bin"] == 5
    steps = list(StepsTail(run / "steps.bin").read_new()["step"])
    assert steps == list(range(1, 51)) and len(set(steps)) == len(steps)
    assert requeue.cut_logs_after(folder, 50) == {"steps.bin": 0, "losses.bin": 0, "evals.jsonl": 0}


# ---------------------------------------------------------------- settings


def _ws(tmp_path, text=None) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    if text is not None:
        (ws / "cockpit.yaml").write_text(text)
    return ws


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An sbatch on PATH that prints a job id (and records its arguments)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.args"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {log}\necho 4242\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_local_is_the_default(tmp_path):
    assert choose(_ws(tmp_path)) == {"launcher": "local"}
    assert choose(_ws(tmp_path, "cpu_slots: 2\n")) == {"launcher": "local"}


def test_workspace_config_and_command_line_combine(tmp_path, fake_sbatch):
    ws = _ws(
        tmp_path,
        "launcher: slurm\nslurm: {partition: gpu, time: '02:00:00', extra: [--exclusive]}\n",
    )
    got = choose(ws, None, ["time=0:10:00", "account=proj", "extra=--nice=5"])
    assert got == {
        "launcher": "slurm",
        "slurm": {
            "partition": "gpu",
            "time": "0:10:00",
            "account": "proj",
            "extra": ["--exclusive", "--nice=5"],
        },
    }
    assert choose(ws, "local") == {"launcher": "local"}  # --launcher overrides the workspace


def test_a_fork_inherits_its_parents_launcher(tmp_path, fake_sbatch):
    parent = {"launcher": "slurm", "slurm": {"partition": "a100"}}
    assert choose(_ws(tmp_path), parent_request=parent)["slurm"] == {"partition": "a100"}
    assert choose(_ws(tmp_path), "local", parent_request=parent) == {"launcher": "local"}


def test_a_fork_of_a_held_job_is_not_held(tmp_path, fake_sbatch):
    """The parent was submitted with --hold (and -H, and the --hol prefix sbatch takes): its
    fork drops them from the inherited extra, keeps every other option, and is held only when
    its own --slurm asks."""
    from cockpit.fork import fork_run
    from engine.torchfree.runfolder import write_json_atomic
    from tests.app.workspaces import RunSpec, write_run

    ws = _ws(tmp_path)
    parent = write_run(ws, RunSpec("held-20260101-000000-aaaa"))
    extra = ["--hold", "--qos=high", "-H", "--exclusive", "--hol", "--nice=5"]
    options = {"partition": "gpu", "extra": extra}
    write_json_atomic(
        parent.file("run.json"), {**parent.request(), "launcher": "slurm", "slurm": options}
    )
    held = launcher.sbatch_argv(parent, parent.request(), {"gpus": 0})
    assert "--hold" in held and "-H" in held  # the parent itself is held

    child, proc = fork_run(ws, parent, {"seed": 1}, start=False)
    assert proc is None
    request = child.request()
    assert request["launcher"] == "slurm"
    assert request["slurm"] == {
        "partition": "gpu",
        "extra": ["--qos=high", "--exclusive", "--nice=5"],
    }
    argv = launcher.sbatch_argv(child, request, {"gpus": 0})
    assert not {"--hold", "-H", "--hol"} & set(argv)
    assert {"--qos=high", "--exclusive", "--nice=5", "--partition=gpu"} <= set(argv)
    assert parent.request()["slurm"]["extra"] == extra  # the parent's record is untouched

    asked, _ = fork_run(ws, parent, {"seed": 2}, start=False, launcher=(None, ["extra=--hold"]))
    assert asked.request()["slurm"]["extra"] == ["--qos=high", "--exclusive", "--nice=5", "--hold"]


def test_without_hold_keeps_everything_else():
    assert launcher.without_hold("--hold --qos=high -H") == ["--qos=high"]  # a hand-written string
    assert launcher.without_hold(["--holdout=1", "--qos=hold", "-h"]) == [
        "--holdout=1",
        "--qos=hold",
        "-h",
    ]  # not sbatch's hold: kept as they are
    assert launcher.without_hold(None) is None


def test_without_hold_takes_the_h_out_of_a_bundle_of_short_flags():
    # getopt takes `-vH` as -v -H: a fork of a run submitted with it must not be held
    assert launcher.without_hold(["-vH", "-HQ", "-H"]) == ["-v", "-Q"]
    assert launcher.without_hold("-HW --qos=high") == ["-W", "--qos=high"]
    # an H inside an option's attached argument is not a hold: partition "High", job "Hx"
    assert launcher.without_hold(["-pHigh", "-JHx", "-kH"]) == ["-pHigh", "-JHx", "-kH"]


@pytest.mark.parametrize(
    "text, args, message",
    [
        ("launcher: kubernetes\n", [], r"expected local \(the default\) or slurm"),
        ("launcher: slurm\nslurm: {partiton: gpu}\n", [], "did you mean 'partition'"),
        (
            "launcher: slurm\nslurm: {extra: [exclusive]}\n",
            [],
            "'exclusive' is not an sbatch option",
        ),
        ("launcher: slurm\nslurm: [gpu]\n", [], "must be a mapping of sbatch options"),
        ("launcher: slurm\nslurm: {time: [1, 2]}\n", [], "time must be one value"),
        ("launcher: [\n", [], "is not valid YAML"),
        (None, ["time"], "expected KEY=VALUE"),
    ],
)
def test_wrong_settings_are_one_sentence(tmp_path, fake_sbatch, text, args, message):
    with pytest.raises(UsageError, match=message):
        choose(_ws(tmp_path, text), "slurm" if text is None else None, args)


def test_slurm_options_without_the_slurm_launcher_are_refused(tmp_path):
    with pytest.raises(UsageError, match="--launcher slurm"):
        choose(_ws(tmp_path), None, ["time=1:00"])


def test_no_sbatch_on_path_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="needs sbatch on PATH"):
        choose(_ws(tmp_path), "slurm")


def test_cli_without_sbatch_exits_2_without_a_traceback(tmp_path):
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable),
        "COCKPIT_WORKSPACE": str(tmp_path),
    }
    p = subprocess.run(
        [sys.executable, "-m", "cockpit", "run", "tests/zoo/blobs.yaml", "--launcher", "slurm"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "needs sbatch on PATH" in p.stderr
    assert "Traceback" not in p.stderr
    assert not any(tmp_path.iterdir())  # nothing created for a run that cannot start


def test_sbatch_command_line(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    folder = RunFolder(run)
    request = {
        "cwd": "/home/me/proj",
        "slurm": {"partition": "gpu", "cpus_per_task": "8", "extra": ["--exclusive"]},
    }
    argv = launcher.sbatch_argv(folder, request, {"gpus": 2})
    assert "--gres=gpu:2" in argv and "--partition=gpu" in argv and "--cpus-per-task=8" in argv
    assert "--exclusive" in argv and argv[-1].endswith("slurm.sh")
    assert f"--output={run.resolve() / 'engine.log'}" in argv and "--chdir=/home/me/proj" in argv
    assert not any(a.startswith("--gres") for a in launcher.sbatch_argv(folder, {}, {"gpus": 0}))
    cpu = launcher.sbatch_argv(folder, {}, {"gpus": 1, "device": "cpu"})
    assert not any(a.startswith("--gres") for a in cpu)
    lane = {"group": "g1", "group_parallel": 2, "lane": 1}
    argv = launcher.sbatch_argv(folder, lane, {"gpus": 0})
    assert "--dependency=singleton" in argv and "--job-name=cockpit-g1-lane1" in argv


def test_parse_slurm_args_splits_extra():
    assert parse_slurm_args(["extra=--mem=4G --exclusive"]) == {
        "extra": ["--mem=4G", "--exclusive"]
    }


def test_sbatch_refusing_the_job_marks_the_run_and_says_why(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid generic resource "
        "(gres) specification' >&2\nexit 1\n"
    )
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = tmp_path / "r1"
    run.mkdir()
    folder = RunFolder(run)
    folder.write_summary({"run_id": "r1", "status": "queued", "stages": []})
    (run / "run.json").write_text(json.dumps({"launcher": "slurm"}))
    (run / "preset.yaml").write_text("gpus: 1\n")
    with pytest.raises(UsageError, match=r"Invalid generic resource.*set gpus: 0"):
        launcher.submit(folder)
    assert folder.summary()["status"] == "error"
    assert not folder.file("slurm.json").exists()


# ---------------------------------------------------------------- the real Slurm


def _slurm_reason() -> str | None:
    """Why the real Slurm cannot be used here, or None when it answers."""
    flag = STATE / "unavailable"
    if flag.exists():
        return f"no Slurm: {flag.read_text().strip()} (tests/slurm/setup.sh)"
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return "no Slurm here: run `bash tests/slurm/setup.sh` as root first"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo does not answer: {e}"
    if not any(s in p.stdout for s in ("idle", "mixed", "allocated")):
        return f"the Slurm node is not up: {p.stdout.strip() or p.stderr.strip()}"
    return None


needs_slurm = pytest.mark.skipif(_slurm_reason() is not None, reason=_slurm_reason() or "")


@pytest.fixture
def ws(tmp_path):
    """The test's workspace; whatever job a failing test left behind is cancelled after it."""
    path = tmp_path / "ws"
    yield path
    jobs = [r["job_id"] for r in map(slurm.read_record, path.glob("*")) if r]
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


def cockpit(ws: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cockpit", *args],
        cwd=ROOT,
        env={**os.environ, "COCKPIT_WORKSPACE": str(ws)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ls(ws: Path) -> dict[str, dict]:
    p = cockpit(ws, "ls", "--json")
    assert p.returncode == 0, p.stderr
    return {r["run_id"]: r for r in json.loads(p.stdout)}


def wait_for(ws: Path, run_id: str, pred, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        row = ls(ws).get(run_id)
        if row is not None:
            seen.append(row["status"])
            if pred(row):
                return row
        time.sleep(0.5)
    raise AssertionError(f"{run_id}: condition not met in {timeout} s; statuses seen {seen[-5:]}")


def job_of(ws: Path, run_id: str) -> str:
    return json.loads((ws / run_id / "slurm.json").read_text())["job_id"]


def new_runs(ws: Path, before: set[str]) -> list[str]:
    return sorted(set(ls(ws)) - before)


BLOBS = ["tests/zoo/blobs.yaml", "--set", "gpus=0", "--stages", "train"]
SMALL = ["--set", "train.eval_every=5", "--set", "train.checkpoint_every=5"]


@pytest.mark.slow
@needs_slurm
def test_run_is_a_job_that_shows_queued_then_running_on_its_node_then_passed(ws):
    p = cockpit(
        ws, "run", *BLOBS, *SMALL, "--set", "train.steps=10",
        "--launcher", "slurm", "--slurm", "extra=--hold", "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (run_id,) = ls(ws)
    job = job_of(ws, run_id)
    row = wait_for(ws, run_id, lambda r: r["status"] == "queued" and r["queue"])
    assert row["queue"] == f"Slurm job {job} pending (JobHeldUser)" and row["slurm_job"] == job
    subprocess.run(["scontrol", "release", job], check=True, timeout=10)
    row = wait_for(ws, run_id, lambda r: r["status"] != "queued")
    assert row["status"] in ("running", "passed") and row["node"] == "localhost"
    row = wait_for(ws, run_id, lambda r: r["status"] not in ("queued", "running"))
    assert row["status"] == "passed", row["reason"]
    summary = json.loads((ws / run_id / "summary.json").read_text())
    assert summary["slurm_job"] == job and summary["node"] == "localhost"
    assert summary["slots"] == f"Slurm job {job} on localhost"  # no local slot queue
    assert "passed (slurm" in cockpit(ws, "ls").stdout


@pytest.mark.slow
@needs_slurm
def test_a_job_scancelled_from_outside_ends_killed_with_slurms_reason(ws):
    p = cockpit(ws, "run", *BLOBS, "--set", "train.steps=100000", "--launcher", "slurm", "--detach")
    assert p.returncode == 0, p.stderr
    (run_id,) = ls(ws)
    job = job_of(ws, run_id)
    wait_for(ws, run_id, lambda r: r["status"] == "running" and r["step"])
    subprocess.run(["scancel", job], check=True, timeout=10)
    # the engine writes `killed` as it stops; Slurm's reason joins once the job has ended
    row = wait_for(ws, run_id, lambda r: r["slurm_state"], timeout=60)
    assert row["status"] == "killed"
    assert row["reason"].startswith(f"Slurm job {job} cancelled (scancel)")
    assert row["slurm_state"] == "CANCELLED"
    # written back: still so once Slurm has forgotten the job
    assert "cancelled (scancel)" in json.loads((ws / run_id / "summary.json").read_text())["reason"]


@pytest.mark.slow
@needs_slurm
def test_ablation_submits_three_jobs_kill_cancels_one_and_the_best_forks_warm(ws):
    (ws).mkdir()
    (ws / "cockpit.yaml").write_text("launcher: slurm\nslurm: {time: '00:10:00'}\n")
    p = cockpit(
        ws, "ablate", "presets/quickstart.yaml", "--grid", "optimizer.lr=1e-4,1e-3,3e-3",
        "--set", "gpus=0", "--set", "train.steps=20", "--set", "data.n_train=128",
        "--set", "data.n_val=64", *SMALL, "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    runs = sorted(ls(ws))
    assert len(runs) == 3
    jobs = {job_of(ws, r) for r in runs}
    assert len(jobs) == 3  # three batch jobs
    q = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(jobs), "-o", "%i|%l"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert sorted(q.stdout.split()) == sorted(f"{j}|10:00" for j in jobs)  # the config's time
    victim, *others = runs
    wait_for(ws, victim, lambda r: r["status"] == "running")
    k = cockpit(ws, "kill", victim)
    assert k.returncode == 0 and "killed in" in k.stdout, k.stdout + k.stderr
    row = ls(ws)[victim]
    assert row["status"] == "killed" and row["slurm_state"] == "CANCELLED"
    assert f"Slurm job {job_of(ws, victim)} cancelled" in row["reason"]
    state = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_of(ws, victim), "-o", "%T"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert state.stdout.strip() == "CANCELLED"  # ended: its processes are gone
    for r in others:
        done = wait_for(ws, r, lambda r: r["status"] not in ("queued", "running"), timeout=150)
        assert done["status"] == "passed", done["reason"]
    f = cockpit(ws, "fork", others[0], "--warm", "--set", "train.steps=5", "--detach")
    assert f.returncode == 0, f.stderr
    (child,) = set(ls(ws)) - set(runs)
    assert job_of(ws, child) not in jobs  # another job
    done = wait_for(ws, child, lambda r: r["status"] not in ("queued", "running"), timeout=120)
    assert done["status"] == "passed", done["reason"]
    assert done["parent"] == others[0] and done["fork_step"] == 20 and done["node"] == "localhost"


def test_a_run_started_without_a_choice_follows_the_workspace(tmp_path, fake_sbatch):
    """The app's new-run dialog creates and starts a run without a launcher: cockpit.yaml
    decides at the start. (The in-process Python ladder never starts an engine: unaffected.)"""
    from cockpit.launch import create_run, start_engine
    from engine.torchfree import preset as presets

    ws = _ws(tmp_path, "launcher: slurm\nslurm: {partition: debug}\n")
    preset = presets.load(str(ROOT / "tests/zoo/blobs.yaml"), {})
    folder = create_run(ws, preset)
    handle = start_engine(folder)
    assert handle.job_id == "4242" and "--partition=debug" in fake_sbatch.read_text()
    assert folder.request()["launcher"] == "slurm"
    assert folder.request()["slurm"] == {"partition": "debug"}
    (ws / "cockpit.yaml").write_text("launcher: slurmm\n")
    with pytest.raises(LookupError, match="expected local"):  # the app shows LookupErrors
        start_engine(create_run(ws, preset))


@pytest.mark.slow
@needs_slurm
def test_parallel_is_lanes_of_singleton_jobs_and_queued_jobs_are_killed_too(ws):
    """--parallel 2 on Slurm: job names in two lanes, each job after its lane's previous one
    (--dependency=singleton), so Slurm keeps the cap cluster-wide. Held, so nothing trains:
    killing jobs that never started ends them killed, with Slurm's word."""
    p = cockpit(
        ws, "ablate", "presets/quickstart.yaml", "--grid", "optimizer.lr=1e-4,1e-3,3e-3",
        "--set", "gpus=0", "--parallel", "2", "--launcher", "slurm",
        "--slurm", "extra=--hold", "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    runs = sorted(ls(ws), key=lambda r: int(job_of(ws, r)))
    jobs = [job_of(ws, r) for r in runs]
    q = subprocess.run(
        ["squeue", "-h", "-j", ",".join(jobs), "-o", "%i|%j|%T"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    rows = {line.split("|")[0]: line.split("|")[1:] for line in q.stdout.split()}
    lanes = [rows[j][0].rsplit("-", 1)[1] for j in jobs]
    assert lanes == ["lane0", "lane1", "lane0"] and all(rows[j][1] == "PENDING" for j in jobs)
    deps = subprocess.run(["scontrol", "show", "job", jobs[2]], capture_output=True, text=True)
    assert "singleton" in slurm.parse_scontrol(deps.stdout).get("Dependency", "")
    k = cockpit(ws, "kill", *runs)
    assert k.returncode == 0, k.stderr
    for r, j in zip(runs, jobs):
        row = ls(ws)[r]
        assert row["status"] == "killed" and row["reason"].startswith(f"Slurm job {j} cancelled")


def start_now(job: str) -> None:
    """Move a requeued job's BeginTime (Slurm's ~2 min hold) to now — but not within 2 s of its
    previous attempt's end: slurmd revokes the old attempt's credential by the second, and a
    relaunch in that same second is refused ("Job credential revoked": the job FAILs)."""
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    end = slurm.parse_scontrol(info.stdout).get("EndTime", "")
    try:
        ended = time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        ended = time.time()
    while time.time() < ended + 2.5:  # a wall-clock window, not a guess at a state
        time.sleep(0.1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=10)


@pytest.mark.slow
@needs_slurm
def test_a_requeued_job_resumes_from_its_latest_checkpoint(ws):
    """`scontrol requeue` is what a preemption with PreemptMode=REQUEUE does to a job: SIGTERM,
    back to PENDING (BeginTime: Slurm holds it ~2 minutes, moved to now here), a new start
    with SLURM_RESTART_COUNT=1 in the same run folder."""
    p = cockpit(
        ws, "run", *BLOBS, "--set", "train.steps=1000000", "--set", "train.checkpoint_every=10",
        "--set", "train.eval_every=50", "--launcher", "slurm", "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (run_id,) = ls(ws)
    job = job_of(ws, run_id)
    latest = ws / run_id / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while not latest.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=10)
    wait_for(ws, run_id, lambda r: r["status"] == "queued" and "pending" in (r["queue"] or ""))
    start_now(job)
    summary_path = ws / run_id / "summary.json"

    def resumed_and_stepping(row: dict) -> bool:
        s = json.loads(summary_path.read_text())
        return (
            row["status"] == "running" and s.get("resumed_from") and row["step"] > s["resumed_from"]
        )

    wait_for(ws, run_id, resumed_and_stepping, timeout=150)
    summary = json.loads(summary_path.read_text())
    assert summary["resumed_from"] >= 10 and summary["slurm_restarts"] == 1
    resumes = [e for e in RunFolder(ws / run_id).events() if e.get("event") == "resume"]
    assert [e["step"] for e in resumes] == [summary["resumed_from"]]
    # each step once: what the first attempt logged after its checkpoint was cut at resume
    steps = [int(x) for x in RunFolder(ws / run_id).steps()["step"]]
    assert steps == list(range(1, len(steps) + 1)), "duplicate or missing steps after requeue"
    assert len(steps) > summary["resumed_from"]
    evals = [e["step"] for e in RunFolder(ws / run_id).evals()]
    assert len(evals) == len(set(evals))
    k = cockpit(ws, "kill", run_id)  # the rest of the million steps is not needed
    assert k.returncode == 0, k.stderr
    assert ls(ws)[run_id]["status"] == "killed"


PRUNE = "prune={rule: median, metric: val_loss, warmup_steps: 10, every: 10, min_peers: 2}"


def _squeue_state(job: str) -> str:
    p = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return p.stdout.strip()


@pytest.mark.slow
@needs_slurm
def test_ablation_prunes_through_scancel_and_the_best_forks_warm_as_another_job(ws):
    """Issue 12's "done when": three jobs, one pruned through scancel (its job CANCELLED, its
    summary still `pruned` with the rule's reason), the best forked warm as a fourth job.

    Held at submit, so the order is fixed: the two good learning rates train first (each has
    one peer only: never judged), then 1e-4 starts and is judged against both from step 10
    (on 512 shapes its val loss stays near ln 5 while theirs falls: 1.596 against 1.56 and
    1.37 at step 50)."""
    ws.mkdir()
    (ws / "cockpit.yaml").write_text("launcher: slurm\nslurm: {time: '00:10:00'}\n")
    p = cockpit(
        ws, "ablate", "presets/quickstart.yaml", "--grid", "optimizer.lr=1e-4,1e-3,3e-3",
        "--set", "gpus=0", "--set", "train.steps=80", "--set", "data.n_train=512",
        "--set", "data.n_val=128", *SMALL, "--set", "train.eval_every=10", "--set", PRUNE,
        "--slurm", "extra=--hold", "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lr = {r: RunFolder(ws / r).summary()["overrides"]["optimizer.lr"] for r in ls(ws)}
    assert sorted(lr.values()) == [1e-4, 1e-3, 3e-3]
    jobs = {r: job_of(ws, r) for r in lr}
    assert len(set(jobs.values())) == 3  # three batch jobs
    (victim,) = [r for r, v in lr.items() if v == 1e-4]
    good = [r for r in lr if r != victim]
    subprocess.run(["scontrol", "release", *(jobs[r] for r in good)], check=True, timeout=10)
    for r in good:
        done = wait_for(ws, r, lambda r: r["status"] not in ("queued", "running"), timeout=240)
        assert done["status"] == "passed", done["reason"]
    subprocess.run(["scontrol", "release", jobs[victim]], check=True, timeout=10)
    pruned_json = ws / victim / slurm.PRUNED_JSON
    deadline = time.monotonic() + 180
    while not pruned_json.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pruned_json.exists(), RunFolder(ws / victim).log_tail()
    decided = json.loads(pruned_json.read_text())["decided"]
    while _squeue_state(jobs[victim]) not in ("CANCELLED",) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = time.time() - decided
    print(f"pruned -> job gone (squeue CANCELLED): {gone:.2f} s")
    assert _squeue_state(jobs[victim]) == "CANCELLED"  # ended by Slurm, processes gone
    row = wait_for(ws, victim, lambda r: r["status"] not in ("queued", "running") and r["slurm_state"])  # fmt: skip
    summary = json.loads((ws / victim / "summary.json").read_text())
    assert row["status"] == "killed" and row["slurm_state"] == "CANCELLED"
    assert summary["pruned"]["peers"] == 2 and summary["pruned"]["step"] >= 10
    assert row["reason"] == summary["reason"] == summary["pruned"]["reason"]  # not Slurm's words
    assert row["reason"].startswith("pruned: val_loss")
    assert "pruned: scancel" in (ws / victim / "engine.log").read_text()
    from cockpit.app.formatting import display_status

    assert display_status(RunFolder(ws / victim).snapshot()) == "pruned"  # as the app shows it
    best = min(good, key=lambda r: RunFolder(ws / r).last_eval()["val_loss"])
    f = cockpit(ws, "fork", best, "--warm", "--set", "train.steps=5", "--detach")
    assert f.returncode == 0, f.stderr
    (child,) = set(ls(ws)) - set(lr)
    assert job_of(ws, child) not in jobs.values()  # another job
    # with its parent's sbatch options but not their --hold: it starts without a release
    assert "--hold" not in RunFolder(ws / child).request()["slurm"].get("extra", [])
    done = wait_for(ws, child, lambda r: r["status"] not in ("queued", "running"), timeout=180)
    assert done["status"] == "passed", done["reason"]
    assert done["parent"] == best and done["fork_step"] == 80 and done["node"] == "localhost"


@pytest.mark.slow
@needs_slurm
def test_a_job_killed_mid_step_then_requeued_logs_each_step_once(ws):
    """The duplicate case: the engine dies without its stop checkpoint (SIGKILL, as on a node
    that fails), steps after its last periodic checkpoint are on disk, Slurm requeues the job
    (`scontrol requeue` takes a finished batch job too). The new attempt resumes from that
    checkpoint and first cuts what the dead one logged after it: each step is on disk once."""
    p = cockpit(
        ws, "run", *BLOBS, "--set", "train.steps=1000000", "--set", "train.checkpoint_every=200",
        "--set", "train.eval_every=50", "--launcher", "slurm", "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (run_id,) = ls(ws)
    folder = RunFolder(ws / run_id)
    job = job_of(ws, run_id)
    latest = ws / run_id / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        latest.exists() and len(folder.steps()) > json.loads(latest.read_text())["step"] + 20
    ):
        time.sleep(0.1)
    pid = folder.summary()["pid"]
    os.kill(pid, 9)  # no stop checkpoint: a crash between two periodic ones
    ckpt = json.loads(latest.read_text())["step"]
    logged = len(folder.steps())
    assert logged > ckpt + 20
    while _squeue_state(job) in ("RUNNING", "COMPLETING") and time.monotonic() < deadline:
        time.sleep(0.1)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=10)
    wait_for(ws, run_id, lambda r: r["status"] == "queued" and "pending" in (r["queue"] or ""))
    start_now(job)
    summary_path = ws / run_id / "summary.json"

    def resumed_past_the_first_attempt(row: dict) -> bool:
        s = json.loads(summary_path.read_text())
        return s.get("resumed_from") == ckpt and row["status"] == "running" and row["step"] > logged

    wait_for(ws, run_id, resumed_past_the_first_attempt, timeout=150)
    steps = [int(x) for x in folder.steps()["step"]]
    assert steps[: logged + 1] == list(range(1, logged + 2)), "a step logged twice after requeue"
    evals = [e["step"] for e in folder.evals()]
    assert len(evals) == len(set(evals))
    assert (
        f"requeued: cut what the previous attempt logged after step {ckpt}"
        in (ws / run_id / "engine.log").read_text()
    )
    k = cockpit(ws, "kill", run_id)
    assert k.returncode == 0, k.stderr


# ---------------------------------------------------------------- multi-node DDP


def test_gpus_above_one_nodes_count_span_whole_nodes(tmp_path, monkeypatch):
    assert launcher.nodes_of({"gpus": 16}, {"gpus_per_node": 8}) == (2, 8)
    assert launcher.nodes_of({"gpus": 8}, {"gpus_per_node": 8}) == (1, 8)
    assert launcher.nodes_of({"gpus": 1}, {"gpus_per_node": 8}) == (1, 1)
    assert launcher.nodes_of({"gpus": 2, "device": "cpu"}, {"gpus_per_node": 1}) == (2, 1)
    with pytest.raises(UsageError, match="gpus: 12 does not split evenly over nodes of 8"):
        launcher.nodes_of({"gpus": 12}, {"gpus_per_node": 8})
    bin_dir = tmp_path / "bin"  # without gpus_per_node: sinfo's GRES of the partition
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text('#!/bin/sh\necho "$@" > ' + str(tmp_path / "args") + "\n"
                                   'printf "gpu:a100:4(S:0-1)\\n(null)\\n"\n')  # fmt: skip
    (bin_dir / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert launcher.nodes_of({"gpus": 8}, {"partition": "a100"}) == (2, 4)
    assert "--partition=a100" in (tmp_path / "args").read_text()
    assert launcher.nodes_of({"gpus": 8, "device": "cpu"}, {}) == (1, 8)  # no GPUs: one node


def test_multi_node_sbatch_line_asks_for_whole_nodes(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    argv = launcher.sbatch_argv(RunFolder(run), {"slurm": {"gpus_per_node": 8}}, {"gpus": 16})
    assert "--nodes=2" in argv and "--ntasks-per-node=1" in argv and "--gres=gpu:8" in argv
    assert not any(a.startswith("--gpus-per-node") for a in argv)  # cockpit's key, not sbatch's
    one = launcher.sbatch_argv(RunFolder(run), {"slurm": {"gpus_per_node": 8}}, {"gpus": 4})
    assert "--nodes=1" in one and "--gres=gpu:4" in one and "--ntasks-per-node=1" not in one


@pytest.mark.parametrize("value", ["0", "eight", True, -2])
def test_gpus_per_node_must_be_a_count(tmp_path, fake_sbatch, value):
    ws = _ws(tmp_path, f"launcher: slurm\nslurm: {{gpus_per_node: {json.dumps(value)}}}\n")
    with pytest.raises(UsageError, match="gpus_per_node must be a whole number above 0"):
        choose(ws)


def test_gpus_that_do_not_split_over_nodes_mark_the_run_and_say_why(tmp_path, fake_sbatch):
    run = tmp_path / "r1"
    run.mkdir()
    folder = RunFolder(run)
    folder.write_summary({"run_id": "r1", "status": "queued", "stages": []})
    (run / "run.json").write_text(json.dumps({"launcher": "slurm", "slurm": {"gpus_per_node": 8}}))
    (run / "preset.yaml").write_text("gpus: 12\n")
    with pytest.raises(UsageError, match="gpus: 12 does not split evenly over nodes of 8"):
        launcher.submit(folder)
    assert folder.summary()["status"] == "error" and "split evenly" in folder.summary()["reason"]
    assert not fake_sbatch.exists()  # nothing submitted


def test_in_a_job_of_several_nodes_torchrun_runs_once_per_node_through_srun(tmp_path):
    from engine.distributed.launch import torchrun_command

    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"launcher": "slurm"}))
    folder = RunFolder(run)
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2"}
    cmd = torchrun_command(folder, "multi_gpu", 3, 16, env)
    assert cmd[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                       "--kill-on-bad-exit=1", "--overlap"]  # fmt: skip
    tail = cmd[cmd.index("cockpit-ddp") + 1 :]
    assert tail[0] == sys.executable
    opts = dict(zip(tail[1:-5:2], tail[2:-5:2]))
    assert opts["--nnodes"] == "2" and opts["--nproc-per-node"] == "8"
    assert opts["--rdzv-backend"] == "c10d" and opts["--rdzv-id"] == "slurm-77-multi_gpu"
    host, port = opts["--rdzv-endpoint"].rsplit(":", 1)
    assert host == __import__("socket").gethostname() and port.isdigit()
    assert tail[-5:] == ["-m", "engine.distributed.rank", str(run.resolve()), "multi_gpu", "3"]
    script = cmd[cmd.index("-c") + 1]
    assert "is_host=$host" in script and "unset COCKPIT_ENGINE_PROC" in script
    one = torchrun_command(
        folder, "train", 0, 4, {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "1"}
    )
    assert "--standalone" in one and one[0] == sys.executable
    local = torchrun_command(folder, "train", 0, 4, {"SLURM_JOB_NUM_NODES": "2"})  # not a job
    assert "--standalone" in local
    own = torchrun_command(folder, "train", 0, 4, {**env, "COCKPIT_TORCHRUN_ARGS": "--nnodes 3"})
    assert own[0] == sys.executable and "--nnodes" in own and "srun" not in own  # yours wins


TWO_NODES = STATE / "two-nodes"


def _two_nodes_reason() -> str | None:
    if _slurm_reason() is not None:
        return _slurm_reason()
    if (TWO_NODES / "unavailable").exists():
        return f"no two-node Slurm: {(TWO_NODES / 'unavailable').read_text().strip()}"
    conf = TWO_NODES / "slurm.conf"
    if not conf.exists():
        return "no two-node Slurm here: run `bash tests/slurm/two_nodes.sh` as root first"
    p = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=10,
        env={**os.environ, "SLURM_CONF": str(conf)},
    )  # fmt: skip
    if p.stdout.count("idle") + p.stdout.count("mixed") < 2:
        return f"the two Slurm nodes are not up: {p.stdout.strip() or p.stderr.strip()}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_two_nodes_reason() is not None, reason=_two_nodes_reason() or "")
def test_multi_node_ddp_runs_one_torchrun_per_node_and_multi_gpu_checks_it(ws, monkeypatch):
    """The two-node Slurm of tests/slurm/two_nodes.sh (nodes n1 and n2 on this machine, one
    CPU each): gpus: 2 with gpus_per_node: 1 is one job over both nodes, srun starts a torchrun
    on each, they meet in the c10d rendezvous on the first node, and multi_gpu passes."""
    monkeypatch.setenv("SLURM_CONF", str(TWO_NODES / "slurm.conf"))  # cockpit, its job, ls
    p = cockpit(
        ws, "run", "tests/zoo/blobs.yaml", "--set", "gpus=2", "--set", "device=cpu",
        "--stages", "multi_gpu", "--launcher", "slurm", "--slurm", "gpus_per_node=1", "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (run_id,) = ls(ws)
    job = job_of(ws, run_id)
    sbatch = json.loads((ws / run_id / "slurm.json").read_text())["sbatch"]
    assert "--nodes=2" in sbatch and "--ntasks-per-node=1" in sbatch
    steps, deadline = set(), time.monotonic() + 180
    while time.monotonic() < deadline:  # the srun step of the ranks, while it runs
        q = subprocess.run(
            ["squeue", "-h", "-s", "-j", job, "-o", "%i|%N"], capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
        steps |= {line.strip() for line in q.stdout.splitlines() if line.strip()}
        if any(s.startswith(f"{job}.0|") for s in steps) or RunFolder(ws / run_id).summary().get(
            "status"
        ) not in ("queued", "running", None):
            break
        time.sleep(0.2)
    assert f"{job}.0|n[1-2]" in steps, steps  # one step over both nodes
    row = wait_for(ws, run_id, lambda r: r["status"] not in ("queued", "running"), timeout=180)
    assert row["status"] == "passed", row["reason"]
    summary = json.loads((ws / run_id / "summary.json").read_text())
    (stage,) = summary["stages"]
    assert stage["name"] == "multi_gpu" and stage["status"] == "pass"
    assert "2 processes" in stage["reason"] and summary["node"] == "n[1-2]"
    log = (ws / run_id / "engine.log").read_text()
    assert "[ddp] srun --nodes=2" in log and "--rdzv-backend c10d" in log


@pytest.mark.slow
@pytest.mark.skipif(_two_nodes_reason() is not None, reason=_two_nodes_reason() or "")
def test_multi_node_ddp_training_is_killed_on_every_node(ws, monkeypatch):
    """DDP training over the two nodes, then `cockpit kill`: scancel ends the job's every
    process — the engine, srun, both torchruns and their ranks — and the run is killed."""
    import psutil

    monkeypatch.setenv("SLURM_CONF", str(TWO_NODES / "slurm.conf"))
    p = cockpit(
        ws, "run", *BLOBS[:1], "--set", "gpus=2", "--set", "device=cpu", "--stages", "train",
        "--set", "train.steps=1000000", "--launcher", "slurm", "--slurm", "gpus_per_node=1",
        "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (run_id,) = ls(ws)
    run_dir = str((ws / run_id).resolve())
    row = wait_for(ws, run_id, lambda r: r["status"] == "running" and (r["step"] or 0) > 5, 180)
    assert row["node"] == "n[1-2]"

    def procs(ranks_only: bool = False) -> list[psutil.Process]:
        """The run's processes outside the engine: srun, the torchruns, the ranks."""
        out = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            joined = " ".join(cmd)
            ours = "engine.distributed.rank" in joined and run_dir in cmd
            if ours and not (ranks_only and "torch.distributed.run" in joined):
                out.append(proc)
        return out

    assert len(procs(ranks_only=True)) == 2  # one rank on each node
    k = cockpit(ws, "kill", run_id)
    assert k.returncode == 0 and "killed in" in k.stdout, k.stdout + k.stderr
    assert ls(ws)[run_id]["status"] == "killed"
    assert _squeue_state(job_of(ws, run_id)) == "CANCELLED"
    assert procs() == []  # gone on both nodes once Slurm says the job ended


@pytest.mark.slow
@needs_slurm
def test_a_pruned_ddp_run_is_cancelled_by_its_rank_0(ws):
    """Under DDP the pruner runs on rank 0 (a torchrun child): its scancel ends the engine,
    torchrun and both ranks through Slurm, and the run still says pruned. The planted
    hopeless run (lr 1e-9) starts after its two peers have trained (held jobs)."""
    p = cockpit(
        ws, "ablate", "tests/zoo/blobs.yaml", "--grid", "optimizer.lr=1e-2,3e-2,1e-9",
        "--set", "gpus=2", "--set", "device=cpu",
        "--set", "train={steps: 60, eval_every: 10, checkpoint_every: 30}", "--set", PRUNE,
        "--launcher", "slurm", "--slurm", "extra=--hold", "--detach",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lr = {r: RunFolder(ws / r).summary()["overrides"]["optimizer.lr"] for r in ls(ws)}
    jobs = {r: job_of(ws, r) for r in lr}
    (victim,) = [r for r, v in lr.items() if v == 1e-9]
    good = [r for r in lr if r != victim]
    subprocess.run(["scontrol", "release", *(jobs[r] for r in good)], check=True, timeout=10)
    for r in good:
        done = wait_for(ws, r, lambda r: r["status"] not in ("queued", "running"), timeout=240)
        assert done["status"] == "passed", done["reason"]
    subprocess.run(["scontrol", "release", jobs[victim]], check=True, timeout=10)
    row = wait_for(
        ws, victim, lambda r: r["status"] not in ("queued", "running") and r["slurm_state"], 240
    )
    assert row["status"] == "killed" and row["slurm_state"] == "CANCELLED"
    assert row["reason"].startswith("pruned: val_loss") and "of 2 peers" in row["reason"]
    summary = json.loads((ws / victim / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["pruned"]["reason"] == row["reason"]
    assert _squeue_state(jobs[victim]) == "CANCELLED"
