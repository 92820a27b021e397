"""What runs on each rank of a DDP job: ``python -m engine.distributed.rank RUN_DIR STAGE INDEX``.

torchrun starts one such process per GPU (``engine.distributed.launch`` starts torchrun). Each
joins the process group (NCCL when every rank has a GPU of its own, gloo otherwise), builds the
run's context from the run folder, and calls the stage's ``run_rank(ctx, ranks)``. DDP is
applied by the stage through ``Ranks``: its model wrapped (``wrap``), its sampler sharded
(``train_batches``), its stop decisions shared (``lockstep``) — the loop is the one every stage
uses. Rank 0's result is written to ``ddp/STAGE.json`` for the engine to read.

Each rank records itself in ``workers.jsonl`` (so ``cockpit kill`` finds it even when the
engine is gone) and exits by itself within a second of its torchrun or its engine dying.
"""

from __future__ import annotations

import datetime
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from engine.context import RunContext, resolve_device
from engine.control import StopFlag
from engine.data import EpochIterator
from engine.distributed.common import ENGINE_ENV, TIMEOUT_ENV, record_process, result_path
from engine.loop import READBACK_DEPTH, Lockstep
from engine.torchfree.ladder import STAGES, stage_settings
from engine.torchfree.preset import Preset, loads, validate
from engine.torchfree.runfolder import RunFolder, process_alive, write_json_atomic


class RankLockstep(Lockstep):
    """Stop decisions every rank takes at the same step, without a per-step host sync.

    Each step the ranks' wishes are summed by one all-reduce of three numbers. On the CPU (gloo)
    the sum is there when the call returns; on the GPU it is copied to a pinned host buffer
    behind a CUDA event and read ``READBACK_DEPTH`` steps later, when it has long arrived —
    the same step on every rank, because every rank reads the same exchange."""

    shared = True

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.lag = READBACK_DEPTH if self.cuda else 0
        self.sent: deque[tuple[torch.Tensor, Any]] = deque()

    def decide(self, stop: bool, ended: bool, late: bool) -> tuple[bool, bool, bool]:
        flags = torch.tensor([float(stop), float(ended), float(late)], device=self.device)
        dist.all_reduce(flags)  # SUM: gloo and NCCL both have it
        if not self.cuda:
            a, b, c = flags.tolist()
            return a > 0, b > 0, c > 0
        host = torch.empty(3, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.sent.append((host, event))
        if len(self.sent) <= self.lag:
            return False, False, False
        host, event = self.sent.popleft()
        event.synchronize()  # recorded `lag` steps ago: long done
        a, b, c = host.tolist()
        return a > 0, b > 0, c > 0


@dataclass
class Ranks:
    """This process's place in the DDP job, and how a stage applies DDP to what it trains."""

    rank: int
    local_rank: int
    world: int
    device: torch.device
    backend: str

    @property
    def lead(self) -> bool:
        """Rank 0: it alone logs, evaluates into the run folder and saves checkpoints."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where our own collectives' tensors live: gloo takes no CUDA tensors."""
        return torch.device("cpu") if self.backend == "gloo" else self.device

    def wrap(self, model: torch.nn.Module) -> DistributedDataParallel:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def lockstep(self) -> RankLockstep:
        return RankLockstep(self.comm_device)

    def train_batches(self, ctx: RunContext) -> EpochIterator:
        """This rank's shard of the train set, reshuffled each epoch alike on every rank."""
        data = ctx.data.train
        bs = ctx.preset.get("batch_size")
        sampler = DistributedSampler(
            data,
            num_replicas=self.world,
            rank=self.rank,
            shuffle=True,
            seed=ctx.seed,
            drop_last=True,
        )
        kw = ctx.loader_kwargs()
        return EpochIterator(
            DataLoader(data, batch_size=bs, sampler=sampler, drop_last=len(sampler) >= 2 * bs, **kw)
        )


def join(preset: Preset) -> Ranks:
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
    return Ranks(rank, local, dist.get_world_size(), device, backend)


def _watch_parents() -> None:
    """Exit when torchrun or the engine dies without stopping us, rather than hold the GPU."""
    parent = os.getppid()
    pid, _, created = os.environ.get(ENGINE_ENV, "").partition(":")
    engine = {"pid": int(pid), "create_time": float(created)} if pid else None

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent or (engine is not None and process_alive(engine) is False):
                for child in psutil.Process().children(recursive=True):  # DataLoader workers
                    try:
                        child.kill()
                    except psutil.Error:
                        pass
                os._exit(3)

    threading.Thread(target=watch, name="cockpit-ddp-watchdog", daemon=True).start()


def _load_preset(folder: RunFolder, request: dict) -> Preset:
    from engine.targets import add_import_path

    path = folder.file("preset.yaml")
    preset = loads(path.read_text(), path)
    validate(preset)
    if request.get("preset_dir"):
        add_import_path(Path(request["preset_dir"]))
    return preset


def main(argv: list[str] | None = None) -> int:
    run_dir, stage_name, index = sys.argv[1:] if argv is None else argv
    folder = RunFolder(run_dir)
    request = folder.request()
    rank = int(os.environ.get("RANK", "0"))
    record_process(folder, os.getpid(), f"rank {rank}")
    _watch_parents()
    stop = StopFlag()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.request())
    try:
        from engine import checkpoint
        from engine.torchfree import pruning

        preset = _load_preset(folder, request)
        ranks = join(preset)
        names = folder.summary().get("stage_names") or [stage_name]
        warm = None
        if request.get("warm_from") and stage_name == "train":
            warm = checkpoint.load(request["warm_from"], ranks.device)
        ctx = RunContext(preset, folder, names, request, stop=stop, device=ranks.device, warm=warm)
        ctx = ctx.for_stage(int(index))
        if ranks.lead:
            pruning.attach(ctx, request)
        module, _, cls = STAGES[stage_name].impl.partition(":")
        stage = getattr(importlib.import_module(module), cls)(
            stage_settings(stage_name, preset.stage_values(stage_name))
        )
        result = stage.run_rank(ctx, ranks)
        if result is not None:
            write_json_atomic(result_path(folder, stage_name), {"world": ranks.world, **result})
        return 0
    except Exception as e:
        traceback.print_exc()
        text = str(e).strip().splitlines()
        where = result_path(folder, stage_name).with_name(f"{stage_name}.rank{rank}.error")
        where.write_text(f"rank {rank}: {type(e).__name__}: {text[0] if text else ''}\n")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
