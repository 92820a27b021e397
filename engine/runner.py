"""The engine process: walk the ladder for one run folder.

``python -m engine RUN_DIR`` reads ``run.json`` and ``preset.yaml`` from the folder (the
launcher wrote them), waits for a device slot, then runs the stages, rewriting summary.json
as each verdict lands. Exit codes: 0 no stage failed, 1 a stage failed / the run crashed /
it was killed, 2 the preset is wrong (a clear message in summary.json and events.jsonl).

Stopping: SIGTERM, SIGINT or SIGHUP set a flag that the loop checks at every step boundary;
the stage saves what it can and the run ends as ``killed``. Whoever sent the signal kills the
whole process tree after a grace period, so no DataLoader worker outlives us.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from engine.control import StopFlag
from engine.torchfree.ladder import STAGES, stage_settings
from engine.torchfree.preset import (
    Preset,
    PresetError,
    loads,
    override_origin,
    read_preset_text,
    validate,
)
from engine.torchfree.runfolder import (
    JsonlAppender,
    RunFolder,
    is_disk_error,
    release_reserve,
    remove_temp_files,
    write_error,
)
from engine.torchfree.status import Run as RunStatus


def log(msg: str) -> None:
    try:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    except OSError:  # engine.log on a full disk: the summary still gets the reason
        pass


class Runner:
    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.request = folder.request()
        self.summary: dict[str, Any] = folder.summary() or {}
        self.events = JsonlAppender(folder.file("events.jsonl"))
        self.stop = StopFlag()  # the one stop flag: the loop, the queue and the pruner read it
        self.lease = None

    # ---- bookkeeping -------------------------------------------------------------
    def event(self, name: str, **data: Any) -> None:
        self.events.append({"t": round(time.time(), 3), "event": name, **data})

    def save(self, **changes: Any) -> None:
        self.summary.update(changes)
        self.folder.write_summary(self.summary)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stop.request()
        log(f"received {signal.Signals(signum).name}: stopping at the next step boundary")

    # ---- the run -----------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        try:
            self.save(status=RunStatus.QUEUED, pid=os.getpid(), host=socket.gethostname())
            code = self._run()
        except BaseException as e:  # a bug in the engine (or a full disk): log it, record it
            log("engine crashed:\n" + traceback.format_exc())
            self.finish(
                RunStatus.ERROR,
                write_error(e)
                if is_disk_error(e)
                else f"the engine crashed: {type(e).__name__}: {e} (traceback in engine.log)",
            )
            code = 1
        return code

    def _run(self) -> int:
        from engine.torchfree import slots, slurm

        try:
            if slurm.in_job(self.request):  # Slurm allocated the devices: no local queue
                self.lease = slots.slurm_job_lease()
                self.save(**slurm.job_fields())
            else:
                self.lease = slots.acquire(
                    self.folder,
                    self.request,
                    lambda: self.stop.requested,
                    on_wait=lambda place: self.save(status=RunStatus.QUEUED, **place),
                )
        except slots.SlotError as e:
            return self.finish(RunStatus.ERROR, str(e), error_kind="preset")
        if self.lease is None or self.stop.requested:
            return self.finish(RunStatus.KILLED, "stopped while queued")
        os.environ.update(self.lease.env)  # CUDA_VISIBLE_DEVICES before torch is imported
        self.save(
            status=RunStatus.RUNNING,
            started=time.time(),
            queue=None,
            queue_position=None,
            gpus=self.lease.gpus,
            slots=self.lease.describe(),
            gpu_note=self.lease.note or None,
        )
        self.event("run_start", pid=os.getpid(), gpus=self.lease.gpus)
        if self.lease.note:
            log(self.lease.note)
        log(f"run {self.folder.run_id} starting (pid {os.getpid()})")
        try:
            preset = self.load_preset()
            return self.ladder(preset)
        except PresetError as e:
            log(f"preset error: {e}")
            self.event("error", kind="preset", message=str(e))
            self.finish(RunStatus.ERROR, str(e), error_kind="preset")
            return 2
        finally:
            if self.lease is not None:
                self.lease.release()

    def load_preset(self) -> Preset:
        """The resolved preset; messages point at the user's file while it is unchanged."""
        resolved = self.folder.file("preset.yaml")
        text = read_preset_text(resolved)  # a regular file, bounded, UTF-8: else one sentence
        preset = loads(text, resolved)
        source = self.request.get("preset_path")
        if isinstance(source, str) and source and Path(source).is_file():
            try:
                src_text = read_preset_text(Path(source))
            except PresetError:  # changed or replaced since: messages name preset.yaml
                src_text = ""
            if hashlib.sha256(src_text.encode()).hexdigest() == self.request.get("preset_sha256"):
                original = loads(src_text, Path(source))
                overrides = self.request.get("overrides") or {}
                preset = Preset(
                    preset.data,
                    Path(source),
                    original.lines,
                    {k: override_origin(k, v) for k, v in overrides.items()},
                )
        validate(preset)
        folder = self.request.get("preset_dir")
        from engine.targets import add_import_path

        if folder:
            add_import_path(Path(folder))
        return preset

    def ladder(self, preset: Preset) -> int:
        import torch  # noqa: F401 - the first heavy import, after the slot is ours

        from engine.context import RunContext, UserCodeError, resolve_device
        from engine.distributed.common import world_size

        names = list(self.request.get("stages") or preset.stages())
        if world_size(preset) > 1 and not self.request.get("stages") and "multi_gpu" not in names:
            names.append("multi_gpu")  # gpus > 1: the ladder ends by checking DDP itself
        self.save(stages=[], stage_names=names)
        from engine.torchfree import slurm

        steps = stage_settings("train", preset.stage_values("train")).steps
        resume = slurm.resume_plan(self.folder, self.request, names, steps)
        if resume is not None:  # requeued by Slurm: on from our own latest checkpoint
            from engine.torchfree.preset import apply_overrides
            from engine.torchfree.requeue import log_cut

            log_cut(self.folder, resume["step"])  # its steps are logged once, by this attempt

            preset = apply_overrides(preset, {"train.steps": resume["steps"]})
            self.save(resumed_from=resume["step"])
            self.event("resume", step=resume["step"], steps=resume["steps"])
            log(f"requeued: resuming from step {resume['step']}, {resume['steps']} steps left")
        try:
            warm = None  # a warm fork's checkpoint: fixed for the run, like the data
            if resume is not None or self.request.get("warm_from"):
                from engine import checkpoint

                device = resolve_device(preset.get("device"))
                source = resume["path"] if resume is not None else self.request["warm_from"]
                warm = checkpoint.load(source, device)
            ctx = RunContext(preset, self.folder, names, self.request, stop=self.stop, warm=warm)
        except UserCodeError as e:
            self.event("error", kind="data", message=str(e))
            return self.finish(RunStatus.FAILED, f"building the data failed: {e}")
        except PresetError:
            raise
        except Exception as e:
            log("building the data failed:\n" + traceback.format_exc())
            msg = f"building the data failed: {type(e).__name__}: {e} (traceback in engine.log)"
            self.event("error", kind="data", message=msg)
            return self.finish(RunStatus.FAILED, msg)
        from engine.torchfree import pruning

        pruning.attach(ctx, self.request)
        self.folder.write_steps_header()
        from engine.batches import write_batches

        write_batches(ctx)  # batches/{train,val}.json: what the model receives (cockpit show)
        self.save(
            device=str(ctx.device),
            host=socket.gethostname(),  # where it trains: a workspace may be on a shared disk
            task=ctx.task,
            world_size=world_size(preset),
            train_size=len(ctx.data.train),
            val_size=len(ctx.data.val),
        )
        from engine.telemetry import TelemetrySampler

        sampler = TelemetrySampler(self.folder.file("telemetry.jsonl"), ctx.meter, ctx.device)
        sampler.start()
        status, reason = RunStatus.PASSED, ""
        try:
            for i, name in enumerate(names):
                verdict, seconds = self.run_stage(ctx.for_stage(i), name)
                if verdict is None:
                    pruned = self.stop.pruned
                    if pruned:
                        return self.finish(RunStatus.KILLED, pruned["reason"], pruned=pruned)
                    return self.finish(RunStatus.KILLED, f"stopped during {name}")
                record = {"name": name, **verdict.to_json(), "seconds": round(seconds, 2)}
                self.summary["stages"].append(record)
                ctx.verdicts[name] = verdict
                self.event(
                    "stage_end", stage=name, **{k: v for k, v in record.items() if k != "name"}
                )
                self.save(current_stage=None)
                log(f"{name}: {verdict.status} — {verdict.reason}")
                if verdict.status == "fail":
                    crashed = any(c.name == "crash" for c in verdict.checks)
                    status = RunStatus.ERROR if crashed else RunStatus.FAILED
                    reason = f"{name}: {verdict.reason}"
                    break
                if self.stop.requested:
                    return self.finish(RunStatus.KILLED, f"stopped after {name}")
        finally:
            sampler.stop()
        return self.finish(status, reason)

    def run_stage(self, ctx, name: str) -> tuple[Any, float]:
        """(the stage's verdict, seconds), or (None, 0) when the run was stopped during it."""
        from engine.context import UserCodeError
        from engine.control import Stopped
        from engine.distributed.common import world_size
        from engine.stages.base import Check, Verdict, crash_verdict

        spec = STAGES[name]
        module, _, cls = spec.impl.partition(":")
        stage = getattr(importlib.import_module(module), cls)(
            stage_settings(name, ctx.preset.stage_values(name))
        )
        self.event("stage_start", stage=name, index=ctx.stage_index)
        self.save(current_stage=name)
        log(f"{name}: started")
        t0 = time.perf_counter()
        try:
            if stage.distributed and world_size(ctx.preset) > 1:
                from engine.distributed import launch

                result = launch.run_on_ranks(ctx, name)
                crashed = result.get("status") == "crashed"
                verdict = crash_verdict(result) if crashed else stage.from_ranks(ctx, result)
            else:
                verdict = stage.run(ctx)
        except Stopped:
            return None, 0.0
        except PresetError:
            raise
        except UserCodeError as e:
            verdict = Verdict("fail", str(e))
        except Exception as e:
            if self.stop.requested:  # e.g. a DataLoader worker killed by the same signal
                return None, 0.0
            log(f"{name} crashed:\n" + traceback.format_exc())
            where = _user_frame(e)
            verdict = Verdict(
                "fail",
                f"crashed: {type(e).__name__}: {_first_line(e)}{where} (traceback in engine.log)",
                [Check("crash", "fail", f"{type(e).__name__}: {_first_line(e)}{where}")],
            )
        return verdict, time.perf_counter() - t0

    def finish(self, status: str, reason: str, **extra: Any) -> int:
        release_reserve(self.folder.path)  # the room kept for these last words
        try:
            self.save(status=status, reason=reason, ended=time.time(), current_stage=None, **extra)
            self.event("run_end", status=status, reason=reason)
        except OSError as e:  # a full disk: drop our temp files, record why, and go
            remove_temp_files(self.folder.path, os.getpid())
            status, reason = RunStatus.ERROR, write_error(e)
            try:
                self.save(status=status, reason=reason, ended=time.time(), current_stage=None)
            except OSError:
                log(f"could not record the end of the run: {reason}")
        log(f"run {status}" + (f": {reason}" if reason else ""))
        if extra.get("error_kind") == "preset":
            return 2
        return 0 if status == RunStatus.PASSED else 1


def _first_line(e: BaseException) -> str:
    if is_disk_error(e):
        return write_error(e)
    worker = _worker_failure(e)
    if worker:  # the original exception's last line, not "Caught KeyError in DataLoader ..."
        last = worker[1]
        prefix = f"{type(e).__name__}: "
        return last[len(prefix) :] if last.startswith(prefix) else last
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def _user_frame(e: BaseException) -> str:
    """' (in mytask.py:42, forward)' — the innermost frame outside torch and the engine. For
    an exception torch re-raised from a DataLoader worker, the frame comes from the worker's
    traceback text, and the worker is named."""
    worker = _worker_failure(e)
    if worker:
        where, _last, frames = worker
        for f, line, name in reversed(frames):
            if not _ours_or_libraries(f):
                return f" (in {Path(f).name}:{line}, {name}; in {where})"
        return f" (in {where})"
    tb = traceback.extract_tb(e.__traceback__)
    for frame in reversed(tb):
        if _ours_or_libraries(frame.filename):
            continue
        return f" (in {Path(frame.filename).name}:{frame.lineno}, {frame.name})"
    return ""


def _ours_or_libraries(f: str) -> bool:
    return "site-packages" in f or f"{os.sep}engine{os.sep}" in f or f.startswith("<")


_FRAME = re.compile(r'^\s*File "(.+)", line (\d+), in (.+)$')


def _worker_failure(e: BaseException) -> tuple[str, str, list[tuple[str, str, str]]] | None:
    """(which worker, the original exception's last line, its frames) for an exception torch
    re-raised from a DataLoader worker ("Caught KeyError in DataLoader worker process 1.
    Original Traceback ..."), else None."""
    text = str(e).strip()
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    head = lines[0].removeprefix("Caught ").rstrip(".")
    where = head.split(" in ", 1)[1] if " in " in head else "a DataLoader worker"
    frames = [m.groups() for m in map(_FRAME.match, lines) if m]
    return where, lines[-1].strip(), frames


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine RUN_DIR  (cockpit run starts this for you)", file=sys.stderr)
        return 2
    folder = RunFolder(argv[0])
    if not folder.file("run.json").is_file():
        print(f"{argv[0]}: not a run folder (no run.json)", file=sys.stderr)
        return 2
    return Runner(folder).run()
