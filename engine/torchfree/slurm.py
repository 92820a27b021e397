"""Slurm jobs as the run folder's readers see them — torch-free, standard library only.

A run started by the Slurm launcher (cockpit/launchers/slurm.py) has ``slurm.json`` in its
folder: ``{"job_id": "123", "submitted": <unix time>, "cluster": ..., "options": [...]}``. The
engine inside the job writes the folder as it does locally; this module adds what only Slurm
knows: that the job still waits in the queue (and why), that it runs on which node, and how it
ended when the engine could not say so itself (a time limit, an ``scancel`` from outside, a
preemption, a node failure, the out-of-memory killer).

- ``Jobs`` asks Slurm about every job of a workspace in **one** ``squeue`` call per refresh
  (``TTL_S``), bounded by ``TIMEOUT_S``; jobs ``squeue`` no longer knows (after MinJobAge) are
  looked up with one ``sacct`` call where accounting is configured.
- ``overlay`` combines a summary with its job: pure, so it is tested without Slurm.
- Without ``squeue`` on PATH (or when it fails) nothing changes: the folder is shown as written.
- Inside the job: the engine's fields (``job_fields``), the resume of a requeued run
  (``resume_plan``; ``requeue.py`` cuts the logs back to its checkpoint), and pruning through ``scancel``
  of the job itself (``cancel_pruned``; ``pruned.json`` keeps the decision).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.torchfree.regular import read_regular

SLURM_JSON = "slurm.json"
PRUNED_JSON = "pruned.json"  # a pruned job's decision, written before its own scancel
TTL_S = 2.0  # one squeue call per this many seconds serves every run of a workspace
TIMEOUT_S = 5.0  # a hung slurmctld never hangs `cockpit ls` or the app for longer

PENDING = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
)
RUNNING = frozenset(
    {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "STOPPED", "SUSPENDED"}
)
KILLED = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "REVOKED"})
ERRORS = frozenset({"FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "SPECIAL_EXIT"})
ENDED = KILLED | ERRORS | {"COMPLETED"}

_WORDS = {
    "CANCELLED": "cancelled (scancel)",
    "TIMEOUT": "stopped at its time limit",
    "PREEMPTED": "preempted",
    "DEADLINE": "stopped at its deadline",
    "REVOKED": "revoked (run on another cluster)",
    "FAILED": "failed",
    "NODE_FAIL": "lost with its node (node failure)",
    "BOOT_FAIL": "not started: its node failed to boot",
    "OUT_OF_MEMORY": "killed for running out of memory",
    "SPECIAL_EXIT": "held after a special exit",
    "COMPLETED": "completed",
}


@dataclass(frozen=True)
class Job:
    """One Slurm job as squeue/sacct report it."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, ... (no "by uid" suffix)
    reason: str = ""  # squeue's %r: Resources, Priority, TimeLimit, ... ("" for None)
    nodes: str = ""
    time_limit: str = ""
    exit_code: str = ""

    def words(self) -> str:
        """'Slurm job 12 stopped at its time limit (1:00)' and the like."""
        what = _WORDS.get(self.state, self.state.lower())
        if self.state == "TIMEOUT" and self.time_limit:
            what += f" ({self.time_limit})"
        elif self.state in ERRORS and self.exit_code and self.exit_code not in ("0:0", ""):
            what += f" (exit code {self.exit_code})"
        if self.reason and self.state not in ("TIMEOUT",) and self.reason != "TimeLimit":
            what += f": {self.reason}"
        return f"Slurm job {self.job_id} {what}"


def _state(text: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'RUNNING' stays."""
    return text.strip().split(" ")[0].upper().rstrip("+")


def _reason(text: str) -> str:
    text = text.strip()
    return "" if text in ("None", "(null)", "") else text


SQUEUE_FORMAT = "%i|%T|%r|%N|%l"


def parse_squeue(text: str) -> dict[str, Job]:
    """``squeue -h -t all -o '%i|%T|%r|%N|%l'`` lines -> {job id: Job}; junk lines are skipped."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        parts += [""] * (5 - len(parts))
        job = Job(parts[0], _state(parts[1]), _reason(parts[2]), parts[3].strip(), parts[4].strip())
        jobs[job.job_id] = job
    return jobs


SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Timelimit"


def parse_sacct(text: str) -> dict[str, Job]:
    """``sacct -n -P -X -o JobID,State,ExitCode,NodeList,Timelimit`` lines -> {job id: Job}."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or "." in parts[0]:  # steps (12.batch) are not jobs
            continue
        parts += [""] * (5 - len(parts))
        job = Job(
            parts[0],
            _state(parts[1]),
            "",
            _reason(parts[3]),
            _reason(parts[4]),
            parts[2].strip(),
        )
        jobs[job.job_id] = job
    return jobs


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job ID`` (or ``-o``) -> {Key: value} (values up to the next space)."""
    out = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key and key not in out:
            out[key] = value
    return out


def _run(argv: list[str], timeout: float = TIMEOUT_S) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); 127 when the command is missing, 124 when it timed out."""
    try:
        p = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            errors="replace",
        )
    except FileNotFoundError:
        return 127, "", f"{argv[0]} is not on PATH"
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]} did not answer within {timeout:.0f} s"
    except OSError as e:
        return 126, "", f"{argv[0]}: {e}"
    return p.returncode, p.stdout, p.stderr


def available() -> bool:
    return shutil.which("squeue") is not None


def query(job_ids: list[str], timeout: float = TIMEOUT_S) -> tuple[dict[str, Job], bool]:
    """({job id: Job}, whether Slurm answered). Jobs Slurm no longer knows are missing."""
    if not job_ids:
        return {}, True
    if not available():
        return {}, False
    ids = ",".join(sorted(set(job_ids), key=lambda j: (len(j), j)))
    rc, out, err = _run(["squeue", "-h", "-t", "all", "-j", ids, "-o", SQUEUE_FORMAT], timeout)
    if rc != 0 and "invalid job id" not in err.lower():
        return {}, False
    jobs = parse_squeue(out) if rc == 0 else {}
    missing = [j for j in job_ids if j not in jobs]
    if missing and shutil.which("sacct"):
        rc, out, _ = _run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", SACCT_FIELDS], timeout
        )
        if rc == 0:
            jobs.update({k: v for k, v in parse_sacct(out).items() if k in missing})
    return jobs, True


def read_record(run_dir: Path) -> dict | None:
    """slurm.json with a usable job id, or None (a local run, or a broken file)."""

    try:
        raw = read_regular(Path(run_dir) / SLURM_JSON, 65536)  # a FIFO: OSError, no wait
        rec = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    job = rec.get("job_id")
    if isinstance(job, int) and not isinstance(job, bool):
        job = str(job)
    if not (isinstance(job, str) and job and all(c.isdigit() or c == "_" for c in job)):
        return None
    return {**rec, "job_id": job}


class Jobs:
    """Every Slurm job of a workspace, asked in one call and kept ``TTL_S`` seconds."""

    def __init__(self, ttl: float = TTL_S):
        self.ttl = ttl
        self.lock = threading.Lock()
        self.records: dict[str, str | None] = {}  # run folder -> job id (None: none yet)
        self.settled: set[str] = set()  # run folders whose end Slurm already added
        self.at: dict[str, float] = {}  # workspace -> when asked
        self.answers: dict[str, tuple[dict[str, Job], bool, set[str]]] = {}

    def job_id(self, run_dir: Path) -> str | None:
        """The run's job id; a run without one is looked at again next time (its slurm.json
        may be written a moment after its folder)."""
        key = str(run_dir)
        if self.records.get(key) is None:
            rec = read_record(run_dir)
            self.records[key] = rec["job_id"] if rec else None
        return self.records[key]

    def forget(self) -> None:
        """Drop the answers kept: the next lookup asks Slurm (after an scancel, say)."""
        with self.lock:
            self.answers.clear()
            self.at.clear()

    def settle(self, run_dir: Path) -> None:
        self.settled.add(str(run_dir))

    def lookup(self, run_dir: Path) -> tuple[Job | None, bool]:
        """(the run's job or None when Slurm does not know it, whether Slurm answered)."""
        job_id = self.job_id(run_dir)
        if job_id is None:
            return None, False
        ws = str(Path(run_dir).parent)
        with self.lock:
            now = time.monotonic()
            fresh = ws in self.answers and now - self.at.get(ws, 0.0) < self.ttl
            if not fresh or job_id not in self.answers[ws][2]:
                ids = self._workspace_ids(Path(ws)) | {job_id}
                jobs, ok = query(sorted(ids))
                self.answers[ws], self.at[ws] = (jobs, ok, ids), now
            jobs, ok, _ = self.answers[ws]
        return jobs.get(job_id), ok

    def _workspace_ids(self, ws: Path) -> set[str]:
        ids = set()
        try:
            entries = list(os.scandir(ws))
        except OSError:
            return ids
        for e in entries:
            if e.path in self.settled:
                continue
            with contextlib.suppress(OSError):
                if e.is_dir() and os.path.exists(os.path.join(e.path, SLURM_JSON)):
                    job = self.job_id(Path(e.path))
                    if job is not None:
                        ids.add(job)
        return ids


JOBS = Jobs()


def overlay(
    summary: dict, record: dict, job: Job | None, answered: bool, now: float | None = None
) -> tuple[dict, bool]:
    """(the summary as the run really stands, whether that is news worth writing back).

    - pending in Slurm: ``queued``, with Slurm's reason as the queue text (also a run whose
      job was requeued after it ended: that end belonged to the previous attempt);
    - running: as the engine wrote it (it may still be booting: ``queued``, "starting on N");
    - ended while the folder still says queued/running: ``killed`` (cancelled, time limit,
      preemption, deadline) or ``error`` (failure, node failure, out of memory, or a job that
      completed without the engine recording its end), with Slurm's reason;
    - ended after the engine wrote its end: the end stays; a killed/error run gets Slurm's
      reason in front of its own;
    - unknown to a Slurm that answered, while the folder is live: ``error``;
    - Slurm did not answer (or is not installed here): the summary as written."""
    s = dict(summary)
    s["slurm_job"] = record.get("job_id")
    live = s.get("status") in ("queued", "running")
    if job is not None and job.nodes:
        s["node"] = job.nodes
    if not answered:
        return s, False
    now = time.time() if now is None else now
    if job is None:
        if not live or s.get("slurm_state"):
            return s, False
        submitted = record.get("submitted")
        if isinstance(submitted, (int, float)) and now - submitted < 10:
            return s, False  # a moment after sbatch: give the controller time to list it
        s.update(
            status="error",
            slurm_state="UNKNOWN",
            reason=f"Slurm no longer knows job {record.get('job_id')} and the engine never "
            f"recorded an end (killed with its node?); see engine.log",
            ended=s.get("ended") or now,
            current_stage=None,
        )
        return s, True
    if job.state in PENDING:  # also after a requeue: the previous attempt's end is stale
        why = f" ({job.reason})" if job.reason else ""
        s.update(status="queued", queue=f"Slurm job {job.job_id} pending{why}")
        if not live:
            s.update(reason=None, ended=None, slurm_state=None)
        return s, False
    if job.state in RUNNING:
        if live and s.get("status") == "queued" and not s.get("queue"):
            s["queue"] = f"Slurm job {job.job_id} starting on {job.nodes or 'its node'}"
        return s, False
    if job.state not in ENDED or s.get("slurm_state"):
        return s, False
    s["slurm_state"] = job.state
    pruned = s.get("pruned") if isinstance(s.get("pruned"), dict) else None
    if pruned and job.state in KILLED | {"COMPLETED"}:
        # cancelled by its own pruner (scancel): the end is the pruning rule's, with its words;
        # a job SIGKILLed before the engine wrote it gets them from pruned.json
        if live:
            s.update(status="killed", ended=s.get("ended") or now, current_stage=None, queue=None)
        s["reason"] = pruned.get("reason") or s.get("reason")
        return s, True
    if live:
        status = "killed" if job.state in KILLED else "error"
        reason = job.words()
        if job.state == "COMPLETED":
            reason = (
                f"Slurm job {job.job_id} ended without the engine recording an end; see engine.log"
            )
        s.update(status=status, reason=reason, ended=s.get("ended") or now, current_stage=None)
        s["queue"] = None
    elif s.get("status") in ("killed", "error") and job.state in KILLED | ERRORS:
        own = s.get("reason") or ""
        s["reason"] = job.words() + (f"; {own}" if own else "")
    return s, True


def snapshot_fields(summary: dict) -> dict[str, Any]:
    """What a runs table adds for a Slurm run: the job, its last known state and node."""
    return {
        "slurm_job": summary.get("slurm_job"),
        "slurm_state": summary.get("slurm_state"),
        "node": summary.get("node") or summary.get("slurm_node"),
    }


def job_state(folder: Any, summary: dict) -> dict:
    """RunFolder.state() for a run with slurm.json: the summary combined with its job (see
    ``overlay``). An end only Slurm knows is written back to summary.json (best effort, and
    only when the engine has not rewritten the file meanwhile), so it outlives Slurm's memory
    of the job (MinJobAge)."""
    record = read_record(folder.path)
    if record is None:
        return summary
    if summary.get("slurm_state") and summary.get("status") not in ("queued", "running"):
        JOBS.settle(folder.path)  # its end is recorded: no more questions to Slurm
        return {**summary, "slurm_job": record["job_id"]}
    path = folder.file("summary.json")
    try:
        before = os.stat(path).st_mtime_ns
    except OSError:
        before = None
    job, answered = JOBS.lookup(folder.path)
    if not summary.get("pruned") and summary.get("status") in ("queued", "running", "killed"):
        decision = read_pruned(folder.path)
        if decision is not None:
            summary = {**summary, "pruned": decision}
    s, news = overlay(summary, record, job, answered)
    if news:
        with contextlib.suppress(OSError, ValueError):
            if before is not None and os.stat(path).st_mtime_ns == before:
                folder.write_summary(s)
    return s


def in_job(request: dict, environ: dict | None = None) -> bool:
    """Whether this engine runs as the Slurm job the launcher submitted for its run."""
    env = os.environ if environ is None else environ
    return request.get("launcher") == "slurm" and bool(env.get("SLURM_JOB_ID"))


def job_fields(environ: dict | None = None) -> dict[str, Any]:
    """What the engine records about its job in summary.json: id, node(s), restarts."""
    env = os.environ if environ is None else environ
    restarts = env.get("SLURM_RESTART_COUNT") or "0"
    several = str(env.get("SLURM_JOB_NUM_NODES") or "1") not in ("", "1")
    first = env.get("SLURMD_NODENAME")
    return {
        "slurm_job": env.get("SLURM_JOB_ID"),
        "node": (env.get("SLURM_JOB_NODELIST") if several else None)  # a multi-node job's nodes
        or first
        or env.get("SLURM_JOB_NODELIST"),
        "slurm_restarts": int(restarts) if restarts.isdigit() else 0,
        "slurm_state": None,  # a requeued job's earlier end is not this attempt's
        "reason": None,
        "ended": None,
    }


def resume_plan(
    folder: Any, request: dict, names: list[str], train_steps: int, environ: dict | None = None
) -> dict[str, Any] | None:
    """A requeued job (preempted, or ``scontrol requeue``) of a train-only run continues from
    its own latest checkpoint: {"path", "step", "steps": what is left of ``train.steps``}.

    None when this is the job's first start (SLURM_RESTART_COUNT 0), the run is not a Slurm
    run or not train-only (a ladder's other stages start over), there is no train checkpoint
    of its own yet, or nothing would be left to train. With a plan, the runner first cuts what
    the previous attempt logged after the checkpoint's step (``engine.torchfree.requeue``)."""
    env = os.environ if environ is None else environ
    restarts = env.get("SLURM_RESTART_COUNT") or "0"
    if not (in_job(request, env) and restarts.isdigit() and int(restarts) > 0):
        return None
    if list(names) != ["train"]:
        return None
    ckpt, _problem = folder.checked_checkpoint()
    if ckpt is None or ckpt.get("stage") not in (None, "train"):
        return None
    start = request.get("fork_step") if request.get("warm_from") else 0
    start = start if isinstance(start, int) and not isinstance(start, bool) else 0
    left = start + int(train_steps) - int(ckpt["step"])
    if left <= 0:
        return None
    return {"path": ckpt["path"], "step": int(ckpt["step"]), "steps": left}


# ---------------------------------------------------------------- pruning through Slurm


def read_pruned(run_dir: Path) -> dict | None:
    """The pruning decision the engine wrote before cancelling its own job, or None."""

    try:
        rec = json.loads(read_regular(Path(run_dir) / PRUNED_JSON, 65536))
    except (OSError, ValueError):
        return None
    pruned = rec.get("pruned") if isinstance(rec, dict) else None
    ok = isinstance(pruned, dict) and str(pruned.get("reason") or "").startswith("pruned")
    return pruned if ok else None


def cancel_pruned(
    folder: Any, request: dict, decision: dict, environ: dict | None = None
) -> str | None:
    """A pruned run of a Slurm job ends through Slurm: the decision goes to pruned.json first
    (so the run says ``pruned`` with its reason even when Slurm's SIGKILL comes before the
    engine writes its end), then ``scancel`` of the engine's own job, whose SIGTERM stops it at
    the next step boundary like ``cockpit kill`` does. Every process of the job (torchrun's
    ranks on every node too) ends, and Slurm frees the allocation and records CANCELLED.

    Returns "scancel" when Slurm took the cancel, "self" when the run must stop itself
    (scancel missing or refused on this node: the caller's stop request does it), None for a
    run that is not a Slurm job or was already cancelled for pruning."""
    env = os.environ if environ is None else environ
    if not in_job(request, env):
        return None
    job = str(env.get("SLURM_JOB_ID"))
    path = Path(folder.path) / PRUNED_JSON
    if path.exists():
        return None  # a second decision before the stop landed: one cancel is enough
    record = {"job_id": job, "decided": time.time(), "pruned": decision}
    tmp = path.with_name(f".{PRUNED_JSON}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError as e:
        print(f"pruned: could not write {path} ({e}); stopping without scancel", flush=True)
        return "self"
    rc, _out, err = _run(["scancel", job], TIMEOUT_S * 2)
    if rc == 0:
        print(f"pruned: scancel {job} ({decision.get('reason')})", flush=True)
        return "scancel"
    why = (err.strip().splitlines() or [f"exit code {rc}"])[-1]
    print(f"pruned: scancel {job} failed ({why}); the run stops itself", flush=True)
    return "self"


# ---------------------------------------------------------------- resuming without duplicates
