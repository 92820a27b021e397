"""The Slurm launcher: each run's engine is one batch job (``sbatch``), stopped with ``scancel``.

- ``submit``: writes ``slurm.sh`` into the run folder (``exec python -m engine RUN_DIR``, the
  same interpreter and engine package as this cockpit, so both must be on the shared
  filesystem) and submits it with the run's GPUs as ``--gres=gpu:N`` (none for ``gpus: 0`` or
  ``device: cpu``), the run's sbatch options (run.json's ``slurm``: partition, account,
  time, ...), ``--output`` appending to the run's engine.log, and ``slurm.json`` recording the
  job id. An ablation's ``--parallel N`` becomes N job names with ``--dependency=singleton``:
  Slurm itself keeps at most N of the group running, across the whole cluster. A run whose
  ``gpus`` are more than one node has (``gpus_per_node``, else sinfo) asks for whole nodes,
  one task each; the engine on the first runs DDP stages with srun (engine/distributed/launch.py).
- The engine inside the job skips the host's slot queue (Slurm allocated its devices) and
  records the job id and node in summary.json; readers combine the folder with ``squeue``
  (engine/torchfree/slurm.py), so a job that waits, runs, or ended by Slurm's hand shows so.
- ``stop``: ``scancel`` (Slurm sends SIGTERM, the engine ends ``killed`` at its next step
  boundary; SIGKILL after KillWait), from any machine that has Slurm's client tools, then
  waits until Slurm reports the job's processes gone, and marks the folder if the engine
  could not.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cockpit.launchers import LauncherError
from engine.torchfree import slurm as jobs
from engine.torchfree.runfolder import LIVE, RunFolder, write_bytes_private, write_json_atomic

SUBMIT_TIMEOUT_S = 30.0
SCRIPT = "slurm.sh"
STOP_WAIT_S = 90.0  # scancel -> processes gone: the engine's step, then at most KillWait


def check_client() -> None:
    """UsageError unless sbatch is on PATH."""
    if shutil.which("sbatch") is None:
        raise LauncherError(
            "the Slurm launcher needs sbatch on PATH (Slurm's client tools, e.g. Debian's "
            "slurm-client, on a login node of the cluster); use --launcher local, or see docs/slurm.md."
        )


def is_slurm_run(folder: RunFolder) -> bool:
    return folder.file(jobs.SLURM_JSON).exists()


def gpus_of(preset: dict) -> int:
    """GPUs to ask Slurm for: the preset's ``gpus`` (default 1), none for CPU runs."""
    wanted = preset.get("gpus", 1)
    wanted = wanted if isinstance(wanted, int) and not isinstance(wanted, bool) else 1
    if str(preset.get("device") or "auto") == "cpu":
        return 0
    return max(0, wanted)


def ranks_of(preset: dict) -> int:
    """DDP processes of the run in all (the preset's ``gpus`` above 1; 1 without DDP)."""
    gpus = preset.get("gpus", 1)
    return gpus if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 1 else 1


def node_gpus(partition: str | None = None) -> int | None:
    """The most GPUs one node of the partition has, from ``sinfo``'s GRES (``gpu:8``,
    ``gpu:a100:4(S:0-1)``); None when sinfo does not say (no GPUs, no sinfo, no answer)."""
    argv = ["sinfo", "-h", "-o", "%G"] + ([f"--partition={partition}"] if partition else [])
    rc, out, _ = jobs._run(argv)
    if rc != 0:
        return None
    counts = [
        int(m.group(1))
        for m in re.finditer(r"(?:^|,)gpu(?::[^:,(\s]+)?:(\d+)", out, flags=re.MULTILINE)
    ]
    return max(counts) if counts else None


def nodes_of(preset: dict, options: dict) -> tuple[int, int]:
    """(nodes, DDP processes per node) for a run: one node unless its ``gpus`` are more than
    one node has (``gpus_per_node`` in the Slurm options, else what sinfo says of the
    partition's nodes); then as many whole nodes as it takes, the ranks split evenly."""
    ranks = ranks_of(preset)
    per_node = options.get("gpus_per_node")
    if ranks > 1 and not per_node and gpus_of(preset):
        per_node = node_gpus(options.get("partition"))
    if ranks <= 1 or not per_node or ranks <= int(per_node):
        return 1, ranks
    per_node = int(per_node)
    if ranks % per_node:
        raise LauncherError(
            f"gpus: {ranks} does not split evenly over nodes of {per_node} GPUs; ask for a "
            f"multiple of {per_node} (or set slurm: {{gpus_per_node: N}} for this cluster)."
        )
    return ranks // per_node, per_node


def sbatch_argv(folder: RunFolder, request: dict, preset: dict) -> list[str]:
    """The sbatch command line for one run (the script comes last)."""
    options = request.get("slurm") or {}
    nodes, per_node = nodes_of(preset, options)
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={_job_name(folder, request)}",
        f"--output={folder.path.resolve() / 'engine.log'}",
        "--open-mode=append",
        f"--chdir={request.get('cwd') or os.getcwd()}",
        "--export=ALL",
        f"--nodes={nodes}",
    ]
    if nodes > 1:  # one torchrun per node (srun), the engine on the first
        argv.append("--ntasks-per-node=1")
    n = per_node if nodes > 1 else gpus_of(preset)
    if n and gpus_of(preset):
        argv.append(f"--gres=gpu:{n}")  # per node
    if request.get("group_parallel") and request.get("group") and request.get("lane") is not None:
        argv.append("--dependency=singleton")  # the lane's previous job must end first
    for key in ("partition", "account", "time", "qos", "cpus_per_task", "mem", "constraint"):
        if options.get(key):
            argv.append(f"--{key.replace('_', '-')}={options[key]}")
    argv += [str(x) for x in options.get("extra") or []]
    argv.append(str(folder.file(SCRIPT).resolve()))
    return argv


HOLD_OPTIONS = ("-H", "--hold", "--hol", "--ho")
"""sbatch's hold (``-H``/``--hold``, and the prefixes of --hold its getopt_long takes)."""

SHORT_FLAGS = frozenset("HhOQsuVvW")
"""sbatch's short options that take no argument: the letters a bundle such as ``-vH`` may
hold. Any other letter takes an argument (``-I``/``-k`` an optional one) that is the rest of
the bundle, which is then kept as it is."""


def _unhold_bundle(token: str) -> str | None:
    """A bundle of short flags (``-HQ``, ``-vH``) without its H: the token to keep, or None
    when nothing is left. A token that is not only flags (``-pHigh``: partition "High") is
    kept whole."""
    letters = token[1:]
    if not letters or not set(letters) <= SHORT_FLAGS:
        return token
    rest = letters.replace("H", "")
    return f"-{rest}" if rest else None


def without_hold(extra: Any) -> Any:
    """A run's ``extra`` sbatch options without ``--hold``/``-H``, everything else kept in order
    (``extra`` as run.json stores it: a list, or one string as a hand-written one may be).
    What a fork inherits: a held parent must not give a fork that never starts."""
    if isinstance(extra, str):
        extra = shlex.split(extra)
    if not isinstance(extra, list):
        return extra
    kept = []
    for x in extra:
        token = str(x)
        if token in HOLD_OPTIONS:
            continue
        if token.startswith("-") and not token.startswith("--") and len(token) > 2:
            unheld = _unhold_bundle(token)
            if unheld is not None:
                kept.append(unheld if unheld != token else x)
            continue
        kept.append(x)
    return kept


def _job_name(folder: RunFolder, request: dict) -> str:
    if request.get("group_parallel") and request.get("group") and request.get("lane") is not None:
        return f"cockpit-{request['group']}-lane{request['lane']}"
    return f"cockpit-{folder.run_id}"


def script_text(folder: RunFolder) -> str:
    root = str(Path(__file__).resolve().parent.parent.parent)
    run_dir = str(folder.path.resolve())
    return (
        "#!/bin/bash\n"
        f"# written by cockpit: run {folder.run_id}'s engine as a Slurm job\n"
        "export PYTHONUNBUFFERED=1\n"
        f'export PYTHONPATH={shlex.quote(root)}"${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        f"exec {shlex.quote(sys.executable)} -m engine {shlex.quote(run_dir)}\n"
    )


class JobHandle:
    """What ``watch`` and ``ablate`` hold for a Slurm run, in place of a subprocess.Popen:
    ``poll()`` is None while the run is queued or running (folder plus squeue)."""

    pid = None

    def __init__(self, folder: RunFolder, job_id: str):
        self.folder = folder
        self.job_id = job_id
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            state = self.folder.state()
            status = state.get("status")
            if status not in LIVE:
                preset_error = state.get("error_kind") == "preset"
                self.returncode = 0 if status == "passed" else 2 if preset_error else 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"slurm job {self.job_id}", timeout)
            time.sleep(0.5)
        return self.returncode

    def terminate(self) -> None:
        scancel(self.job_id)

    def send_signal(self, _sig: int) -> None:
        scancel(self.job_id)


def submit(folder: RunFolder) -> JobHandle:
    """Submit the run's engine as a batch job; record the job in slurm.json."""
    import yaml

    check_client()
    request = folder.request()
    preset = yaml.safe_load(folder.preset_text() or "{}") or {}
    write_bytes_private(folder.file(SCRIPT), script_text(folder).encode())
    os.chmod(folder.file(SCRIPT), 0o700 | (os.stat(folder.path).st_mode & 0o050))
    try:
        argv = sbatch_argv(folder, request, preset)
    except LauncherError as e:  # e.g. gpus that do not split over whole nodes
        _mark_error(folder, str(e).rstrip("."))
        raise
    try:
        p = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            errors="replace",
        )
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired:
        out, err, rc = "", f"sbatch did not answer within {SUBMIT_TIMEOUT_S:.0f} s", 124
    except OSError as e:
        out, err, rc = "", f"sbatch could not be started: {e}", 126
    match = re.match(r"^\s*(\d+)(?:;(\S+))?\s*$", out or "")
    if rc != 0 or not match:
        why = _last_line(err) or _last_line(out) or f"exit code {rc}"
        hint = ""
        if "gres" in why.lower():
            hint = " (a cluster without GPUs: set gpus: 0, e.g. --set gpus=0)"
        message = f"sbatch refused run {folder.run_id}: {why}{hint}"
        _mark_error(folder, message)
        raise LauncherError(message + ".")
    job_id = match.group(1)
    write_json_atomic(
        folder.file(jobs.SLURM_JSON),
        {
            "job_id": job_id,
            "cluster": match.group(2),
            "submitted": time.time(),
            "sbatch": argv,
        },
    )
    return JobHandle(folder, job_id)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return re.sub(r"^sbatch: error:\s*", "", lines[-1]) if lines else ""


def _mark_error(folder: RunFolder, reason: str) -> None:
    s = folder.summary()
    s.update(status="error", reason=reason, ended=time.time(), current_stage=None)
    try:
        folder.write_summary(s)
    except OSError:
        pass


def scancel(job_id: str, timeout: float = jobs.TIMEOUT_S * 2) -> tuple[bool, str]:
    """(whether scancel accepted, its complaint). A job that already ended is no error."""
    if shutil.which("scancel") is None:
        return False, "scancel is not on PATH"
    try:
        p = subprocess.run(
            ["scancel", str(job_id)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            errors="replace",
        )
    except (subprocess.TimeoutExpired, OSError) as e:
        return False, f"scancel failed: {e}"
    err = _last_line(p.stderr).removeprefix("scancel: error: ")
    return p.returncode == 0 or "already completing or completed" in err.lower(), err


def stop(folder: RunFolder, grace: float = STOP_WAIT_S) -> bool:
    """scancel the run's job and wait (up to ``grace``) until Slurm reports it ended; then the
    folder says killed (the engine's words, or Slurm's). True when the job was queued or
    running."""
    record = jobs.read_record(folder.path)
    if record is None:
        return False
    job_id = record["job_id"]
    found, answered = jobs.query([job_id])
    job = found.get(job_id)
    live = job is not None and job.state in jobs.PENDING | jobs.RUNNING
    if not live:
        return False
    ok, err = scancel(job_id)
    if not ok:
        raise LauncherError(
            f"run {folder.run_id}: scancel {job_id} failed: {err or 'no reason given'}."
        )
    deadline = time.monotonic() + max(grace, 1.0)
    while time.monotonic() < deadline:
        found, answered = jobs.query([job_id])
        job = found.get(job_id)
        if answered and (job is None or job.state in jobs.ENDED):
            break
        time.sleep(0.2)
    # the folder as Slurm ended it: the engine's words plus Slurm's, written back by state()
    jobs.JOBS.forget()
    s = folder.state()
    if s.get("status") in LIVE:  # Slurm did not answer in time: say what we did
        s = folder.summary()
        s.update(
            status="killed",
            reason=f"Slurm job {job_id} cancelled (scancel) by cockpit kill",
            ended=time.time(),
            current_stage=None,
            queue=None,
        )
        folder.write_summary(s)
    return True


def lane_extra(i: int, parallel: int | None) -> dict[str, Any]:
    """run.json fields that put an ablation's i-th run in one of ``parallel`` lanes."""
    return {"lane": i % parallel} if parallel else {}
