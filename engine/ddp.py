"""Multi-GPU training: DistributedDataParallel under torchrun — the engine's side and each rank's.

A run with ``gpus: N > 1`` keeps its one engine process (it holds the slots, answers signals,
writes summary.json and runs the single-process stages on the first of its GPUs). The DDP
parts — the ``train`` stage and the ``multi_gpu`` check — run as

    torchrun --standalone --nnodes 1 --nproc-per-node N -m engine.ddp RUN_DIR STAGE INDEX

one process per GPU: NCCL when every rank has a GPU of its own, gloo otherwise (CPU machines,
CI). ``batch_size`` is per rank, so the global batch is N × batch_size.

Rank 0 alone logs steps, random val batches, evaluations and checkpoints; no collective is
added to a step. What every rank must decide alike — stop now, because of a signal, the
pruner, a non-finite loss or the time budget — is shared every ``CONTROL_EVERY`` steps through
one all-reduce of a single number whose result is read one interval later, so it never waits
on the device either. Full-val metrics are computed by every rank on the whole val set (the
same numbers, no communication, and no rank left waiting in a collective while rank 0 works).

Multi-node: ``$COCKPIT_TORCHRUN_ARGS`` replaces ``--standalone --nnodes 1`` with torchrun's own
rendezvous options (e.g. ``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint host0:29400
--rdzv-id myrun``); ``gpus`` is then per node. Each other node runs the same torchrun command,
which the engine writes to engine.log, on a run folder that every node sees.

Every process started here is recorded in the run's ``workers.jsonl`` (pid, start time, host)
so that ``cockpit kill`` finds the ranks — torchrun puts each in a session of its own — even
when the engine is already gone; and each rank exits by itself within a second of its
torchrun or its engine dying.
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from engine import checkpoint
from engine.context import RunContext, Stopped, resolve_device
from engine.loop import EpochIterator, LoopResult, Readback, Row, move
from engine.metrics import evaluate
from engine.torchfree.preset import Preset, loads, validate
from engine.torchfree.runfolder import (
    JsonlAppender,
    RunFolder,
    StepsTail,
    process_alive,
    read_json,
    write_json_atomic,
)
from engine.stages.base import Check, Verdict
from engine.stages.common import collate, nonfinite_reason, switch_off_regularizers

CONTROL_EVERY = 10  # steps between the ranks' shared stop decisions
TORCHRUN_ARGS_ENV = "COCKPIT_TORCHRUN_ARGS"
TIMEOUT_ENV = "COCKPIT_DDP_TIMEOUT_S"  # collectives' timeout: covers rank 0's checkpoint saves
ENGINE_ENV = "COCKPIT_ENGINE_PROC"  # "pid:create_time" of the engine, for the ranks' watchdog


def world_size(preset: Preset) -> int:
    """Processes per node: the preset's ``gpus`` when above 1, else 1 (no DDP)."""
    gpus = preset.get("gpus")
    return gpus if isinstance(gpus, int) and gpus > 1 else 1


def result_path(folder: RunFolder, stage: str) -> Path:
    return folder.file("ddp") / f"{stage}.json"


def record_process(folder: RunFolder, pid: int, role: str) -> None:
    """One line in workers.jsonl: a process of this run outside the engine's process group."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return
    out = JsonlAppender(folder.file("workers.jsonl"))
    try:
        out.append({"pid": pid, "create_time": created, "host": socket.gethostname(), "role": role})
    finally:
        out.close()


# ---------------------------------------------------------------- the engine's side


def torchrun_command(folder: RunFolder, stage: str, index: int, nproc: int) -> list[str]:
    rendezvous = shlex.split(os.environ.get(TORCHRUN_ARGS_ENV, "")) or [
        "--standalone",
        "--nnodes",
        "1",
    ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        "--nproc-per-node",
        str(nproc),
        "-m",
        "engine.ddp",
        str(folder.path.resolve()),
        stage,
        str(index),
    ]


def run_stage(ctx: RunContext, stage: str) -> dict:
    """Run ``stage`` on every rank and wait; rank 0's result, or ``{"status": "crashed", ...}``.

    A stop request (signal or pruner) is passed on to the ranks; they stop together and this
    raises Stopped. While the ranks train, rank 0's step rows feed this process's wait meter,
    so telemetry keeps its data-wait share."""
    from engine.torchfree import slots

    folder = ctx.folder
    out = result_path(folder, stage)
    out.parent.mkdir(exist_ok=True)
    for old in out.parent.glob(f"{stage}.*"):
        old.unlink()
    nproc = world_size(ctx.preset)
    env = os.environ.copy()
    env["OMP_NUM_THREADS"] = str(
        max(1, torch.get_num_threads() // nproc)
    )  # the ranks share our cores
    me = psutil.Process()
    env[ENGINE_ENV] = f"{me.pid}:{me.create_time()}"
    cmd = torchrun_command(folder, stage, ctx.stage_index, nproc)
    print(f"[ddp] {shlex.join(cmd)}", flush=True)
    # torchrun inherits the slot locks: if this engine dies, the GPUs stay busy until it is gone
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, pass_fds=slots.held_fds())
    record_process(folder, proc.pid, "torchrun")
    steps = StepsTail(folder.file("steps.bin"))
    steps.offset = _whole_records(folder.file("steps.bin"), steps.record)
    signalled = False
    while True:
        try:
            code = proc.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        if ctx.stop_requested and not signalled:
            _stop_ranks(proc)
            signalled = True
        _feed_meter(ctx, steps)
    _feed_meter(ctx, steps)
    result = read_json(out)
    if (result or {}).get("status") == "stopped" or (result is None and ctx.stop_requested):
        if result and result.get("pruned"):
            ctx.pruned = result["pruned"]
        raise Stopped()
    if result is None:
        errors = sorted(out.parent.glob(f"{stage}.rank*.error"))
        detail = errors[0].read_text().strip() if errors else f"torchrun exited with code {code}"
        return {"status": "crashed", "error": detail, "world": nproc}
    return result


def _stop_ranks(proc: subprocess.Popen) -> None:
    """SIGTERM to the ranks themselves: they stop together at their next decision point, rank 0
    saves a checkpoint, and torchrun ends cleanly. Before the ranks exist, torchrun gets it."""
    try:
        ranks = psutil.Process(proc.pid).children()
    except psutil.Error:
        ranks = []
    for rank in ranks:
        try:
            rank.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    if not ranks:
        proc.send_signal(signal.SIGTERM)


def _whole_records(path: Path, record: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    return size - size % record


def _feed_meter(ctx: RunContext, steps: StepsTail) -> None:
    cols = steps.read_new()
    for data_s, step_s in zip(cols["data_s"], cols["step_s"]):
        ctx.meter.add(data_s, step_s)


def verdict_from_json(d: dict) -> Verdict:
    checks = [Check(c["name"], c["status"], c["detail"]) for c in d.get("checks", [])]
    metrics = {k: v for k, v in (d.get("metrics") or {}).items() if v is not None}
    return Verdict(d["status"], d["reason"], checks, metrics)


def crash_verdict(result: dict) -> Verdict:
    reason = (
        f"DDP on {result['world']} processes crashed: {result['error']} (traceback in engine.log)"
    )
    return Verdict("fail", reason, [Check("ddp_runs", "fail", reason)])


def train_verdict(result: dict) -> Verdict:
    """The coordinator's train-stage verdict from rank 0's result."""
    if result.get("status") == "crashed":
        return crash_verdict(result)
    return verdict_from_json(result["verdict"])


# ---------------------------------------------------------------- each rank's side


@dataclass
class RankInfo:
    rank: int
    local_rank: int
    world: int
    device: torch.device
    backend: str

    @property
    def lead(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where our own collectives' tensors live: gloo's all_gather takes no CUDA tensors."""
        return torch.device("cpu") if self.backend == "gloo" else self.device

    def wrap(self, model: torch.nn.Module) -> DistributedDataParallel:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def join(preset: Preset) -> RankInfo:
    """This rank's device and the process group (torchrun's environment says who we are)."""
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    if resolve_device(preset.get("device")).type == "cuda":
        count = torch.cuda.device_count()
        device = torch.device("cuda", local % count)
        torch.cuda.set_device(device)
        # NCCL refuses two ranks on one GPU; gloo takes them (fewer GPUs than ranks)
        backend = "nccl" if count >= local_world else "gloo"
    else:
        device, backend = torch.device("cpu"), "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or 600))
    # NCCL: binding the device up front lets it build its communicator at once, on that GPU
    dist.init_process_group(
        backend, timeout=timeout, device_id=device if backend == "nccl" else None
    )
    return RankInfo(rank, local, dist.get_world_size(), device, backend)


class Lockstep:
    """A stop decision every rank takes at the same step, without a host sync.

    ``exchange(wish)`` all-reduces this rank's wish and returns what the previous exchange
    decided; it is called at the same steps everywhere, so every rank acts alike."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.flag = torch.zeros(1, device=device)
        self.host = torch.zeros(1, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.sent = False

    def exchange(self, wish: bool) -> bool:
        decided = False
        if self.sent:
            if self.event is not None:
                self.event.synchronize()  # recorded CONTROL_EVERY steps ago: long done
            decided = bool(self.host.item() > 0)
        self.flag.fill_(1.0 if wish else 0.0)
        dist.all_reduce(self.flag)  # SUM: gloo and NCCL both have it
        self.host.copy_(self.flag, non_blocking=self.cuda)
        if self.event is not None:
            self.event.record()
        self.sent = True
        return decided


class ShardedEpochs(EpochIterator):
    """Batches of this rank's shard across epochs, reshuffled each epoch alike on every rank."""

    def __next__(self) -> Any:
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.loader.sampler.set_epoch(self.epoch)
            self.it = iter(self.loader)
            return next(self.it)


def sharded_loader(ctx: RunContext, info: RankInfo) -> DataLoader:
    data = ctx.data.train
    bs = ctx.preset.get("batch_size")
    sampler = DistributedSampler(
        data, num_replicas=info.world, rank=info.rank, shuffle=True, seed=ctx.seed, drop_last=True
    )
    return DataLoader(
        data,
        batch_size=bs,
        sampler=sampler,
        drop_last=len(sampler) >= 2 * bs,
        **ctx.loader_kwargs(),
    )


def train(ctx: RunContext, s: Any, info: RankInfo) -> dict | None:
    """The train stage on one rank (settings as TrainSettings); rank 0 returns the result."""
    from engine.stages.train import prepare, summarize

    lead = info.lead
    device = ctx.device
    model, optimizer, scheduler, start_step, checks = prepare(ctx)
    ddp = info.wrap(model)
    batches = ShardedEpochs(sharded_loader(ctx, info))
    val_batches = ctx.val_batches() if lead and s.val_every else None
    val_loader = ctx.val_loader()
    readback = Readback(device) if lead else None
    lockstep = Lockstep(info.comm_device)
    grad_clip = ctx.preset.get("grad_clip")
    result = LoopResult()
    every = math.gcd(s.eval_every or 0, s.checkpoint_every or 0)

    def land(rows: list[Row]) -> None:
        if rows:
            ctx.log_steps(rows)
        result.rows.extend(rows)
        for r in rows:
            bad_val = not math.isnan(r.val_loss) and not math.isfinite(r.val_loss)
            if result.nonfinite_step is None and (not math.isfinite(r.train_loss) or bad_val):
                result.nonfinite_step = r.step
                result.nonfinite_what = "train" if not math.isfinite(r.train_loss) else "val"

    def periodic(step: int) -> None:
        if s.eval_every and step % s.eval_every == 0:
            metrics = evaluate(model, val_loader, ctx.loss_fn, ctx.task, device)
            if lead:
                ctx.log_eval(step, metrics)
                ctx.on_eval(step, metrics)
        if lead and s.checkpoint_every and step % s.checkpoint_every == 0:
            checkpoint.save(ctx.folder, model, optimizer, step, "train")

    model.train()
    step = start_step
    t_start = t_prev = time.perf_counter()
    deadline = t_start + s.seconds if s.seconds else math.inf
    stopped = False
    for i in range(s.steps):
        if i % CONTROL_EVERY == 0:
            late = time.perf_counter() > deadline
            wish = ctx.stop_requested or (lead and (result.nonfinite_step is not None or late))
            if lockstep.exchange(wish):
                stopped = True
                break
        if readback is not None:
            readback.step_started()
        t0 = time.perf_counter()
        x, y = move(next(batches), device)
        t1 = time.perf_counter()
        loss = ctx.loss_fn(ddp(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        vloss = None
        if val_batches is not None and i % s.val_every == 0:
            vx, vy = move(next(val_batches), device)
            model.eval()  # the bare module: a val forward through DDP could sync buffers
            with torch.no_grad():
                vloss = ctx.loss_fn(model(vx), vy)
            model.train()
        step += 1
        now = time.perf_counter()
        if readback is not None:
            land(
                readback.push(
                    step, t1 - t0, now - t_prev, optimizer.param_groups[0]["lr"], loss, vloss
                )
            )
        t_prev = now
        if every and step % every == 0:
            if readback is not None:
                land(readback.flush())
            periodic(step)
            t_prev = time.perf_counter()
    if not lead:
        return None
    land(readback.flush())
    result.seconds = time.perf_counter() - t_start
    result.data_s = sum(r.data_s for r in result.rows)
    if result.nonfinite_step is not None:
        result.stopped = "nonfinite"
        lr = optimizer.param_groups[0]["lr"]
        return {
            "status": "done",
            "world": info.world,
            "verdict": Verdict(
                "fail", nonfinite_reason(result, lr), checks, {"steps": result.steps}
            ).to_json(),
        }
    if stopped and (ctx.stop_requested or time.perf_counter() <= deadline):
        if step > start_step:
            checkpoint.save(ctx.folder, model, optimizer, step, "train")
        return {"status": "stopped", "world": info.world, "pruned": ctx.pruned}
    if stopped:
        result.stopped = "seconds"
    checkpoint.save(ctx.folder, model, optimizer, step, "train")
    final = evaluate(model, val_loader, ctx.loss_fn, ctx.task, device)
    ctx.log_eval(step, final)
    verdict = summarize(result, final, step, checks, ctx.task)
    verdict.reason += f" (DDP: {info.world} processes, {info.backend})"
    verdict.metrics["world_size"] = info.world
    return {"status": "done", "world": info.world, "verdict": verdict.to_json()}


# ---------------------------------------------------------------- the multi_gpu check


@contextmanager
def exact_math(device: torch.device):
    """No TF32 while comparing DDP with one process: the check is about DDP, not precision."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class CheckBatches:
    """The same global batches for one process and for DDP: step t's batch cut into N shards."""

    def __init__(self, ctx: RunContext, world: int):
        self.data = ctx.data.train
        self.batch = ctx.preset.get("batch_size")
        self.world = world
        g = torch.Generator().manual_seed(ctx.seed + 7)
        self.order = torch.randperm(len(self.data), generator=g).tolist()

    def shard(self, step: int, rank: int) -> tuple:
        return self._take((step * self.world + rank) * self.batch, self.batch)

    def whole(self, step: int) -> tuple:
        """Step t's whole global batch: all N shards in rank order."""
        return self._take(step * self.world * self.batch, self.world * self.batch)

    def _take(self, start: int, size: int) -> tuple:
        n = len(self.order)
        return collate(self.data, [self.order[(start + j) % n] for j in range(size)])


def fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Per parameter: its sum and a fixed random projection (float64) — equal iff equal, in practice."""
    rows = []
    for i, p in enumerate(model.parameters()):
        w = torch.rand(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        d = p.detach().double()
        rows.append(torch.stack([d.sum(), (d * w.to(d.device)).sum()]))
    return torch.stack(rows)


def timed_samples_per_s(step, batch: int, n: int, device: torch.device, barrier=None) -> float:
    """Samples per second over ``n`` calls of ``step`` after two warm-up calls."""
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if barrier is not None:
        barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if barrier is not None:
        barrier()
    return batch * n / max(time.perf_counter() - t0, 1e-9)


def check(ctx: RunContext, s: Any, info: RankInfo) -> dict | None:
    """The multi_gpu check on one rank (settings as MultiGpuSettings); rank 0 returns the result."""
    device = ctx.device
    with exact_math(device):
        model = ctx.build_model()
        switch_off_regularizers(ctx, model)  # dropout differs per rank, batch statistics per shard
        ddp = info.wrap(model)
        optimizer = ctx.build_optimizer(model)
        model.train()
        ctx.set_bn_eval_if_requested(model)
        shards = CheckBatches(ctx, info.world)
        grad_clip = ctx.preset.get("grad_clip")
        losses = []
        for t in range(s.steps):
            x, y = move(shards.shard(t, info.rank), device)
            loss = ctx.loss_fn(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            losses.append(loss.detach())
        # equal shards and a mean-reduced loss: the ranks' mean is the loss on the global batch
        trajectory = torch.stack(losses).double().to(info.comm_device)
        dist.all_reduce(trajectory)
        trajectory /= info.world
        mine = fingerprint(model).to(info.comm_device)
        everyone = [torch.empty_like(mine) for _ in range(info.world)]
        dist.all_gather(everyone, mine)
        timing = itertools.cycle([move(shards.shard(t, info.rank), device) for t in range(4)])

        def step() -> None:
            x, y = next(timing)
            optimizer.zero_grad(set_to_none=True)
            ctx.loss_fn(ddp(x), y).backward()
            optimizer.step()

        sps = timed_samples_per_s(step, shards.batch * info.world, s.batches, device, dist.barrier)
    if not info.lead:
        return None
    ref = everyone[0]
    gaps = torch.stack([(other - ref).abs() / ref.abs().clamp(min=1e-12) for other in everyone[1:]])
    per_param = gaps.amax(dim=(0, 2))
    worst = int(per_param.argmax())
    names = [n for n, _ in model.named_parameters()]
    return {
        "status": "done",
        "world": info.world,
        "backend": info.backend,
        "device": device.type,
        "global_batch": shards.batch * info.world,
        "losses": trajectory.tolist(),
        "param_max_diff": float(per_param.max()),
        "param_worst": names[worst],
        "samples_per_s": sps,
    }


# ---------------------------------------------------------------- the rank process


def _watch_parents() -> None:
    """Exit when torchrun or the engine dies without stopping us, rather than hold the GPU."""
    parent = os.getppid()
    engine = os.environ.get(ENGINE_ENV, "")
    pid, _, created = engine.partition(":")
    proc = {"pid": int(pid), "create_time": float(created)} if pid else None

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent or (proc is not None and process_alive(proc) is False):
                for child in psutil.Process().children(recursive=True):  # DataLoader workers
                    try:
                        child.kill()
                    except psutil.Error:
                        pass
                os._exit(3)

    threading.Thread(target=watch, name="cockpit-ddp-watchdog", daemon=True).start()


def load_preset(folder: RunFolder, request: dict) -> Preset:
    from engine.targets import add_import_path

    path = folder.file("preset.yaml")
    preset = loads(path.read_text(), path)
    validate(preset)
    if request.get("preset_dir"):
        add_import_path(Path(request["preset_dir"]))
    return preset


def main(argv: list[str] | None = None) -> int:
    run_dir, stage, index = sys.argv[1:] if argv is None else argv
    folder = RunFolder(run_dir)
    request = folder.request()
    rank = int(os.environ.get("RANK", "0"))
    record_process(folder, os.getpid(), f"rank {rank}")
    _watch_parents()
    ctx: RunContext | None = None
    early_stop = []

    def on_signal(signum: int, frame: Any) -> None:
        early_stop.append(signum)
        if ctx is not None:
            ctx.stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    from engine.torchfree import pruning
    from engine.torchfree.ladder import stage_settings

    try:
        preset = load_preset(folder, request)
        info = join(preset)
        names = folder.summary().get("stage_names") or [stage]
        ctx = RunContext(preset, folder, names, request)
        ctx.device = info.device
        ctx.stage_index = int(index)
        ctx.stop_requested = bool(early_stop)
        if request.get("warm_from") and stage == "train":
            ctx.warm = checkpoint.load(request["warm_from"], info.device)
        if info.lead:
            pruning.attach(ctx, request)
        settings = stage_settings(stage, preset.stage_values(stage))
        result = (train if stage == "train" else check)(ctx, settings, info)
        if result is not None:
            write_json_atomic(result_path(folder, stage), result)
        return 0
    except Exception as e:
        traceback.print_exc()
        text = str(e).strip().splitlines()
        where = result_path(folder, stage).with_name(f"{stage}.rank{rank}.error")
        where.write_text(f"rank {rank}: {type(e).__name__}: {text[0] if text else ''}\n")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
