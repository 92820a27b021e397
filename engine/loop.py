"""The per-batch training loop every training stage shares.

Per step: wait for a batch (timed on the host), forward, backward, optimizer step, a forward
pass on a random val batch, and one row in steps.bin. On CUDA the host never waits on the
device just to log: both losses are copied into a pinned host slot with ``non_blocking=True``
and a CUDA event is recorded behind the copy; the row is written when the event has fired,
usually a step later (``Readback``). The only per-step host sync is none; the loop blocks only
when the device is ``depth`` steps behind, which also keeps the host from running away.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.context import RunContext, Stopped


@dataclass
class Row:
    """One step's values once they are on the host."""

    step: int
    time: float
    train_loss: float
    val_loss: float
    data_s: float
    step_s: float
    gpu_s: float
    lr: float


@dataclass
class _Pending:
    step: int
    time: float
    data_s: float
    step_s: float
    lr: float
    slot: int
    start: Any
    end: Any


class Readback:
    """Brings (train loss, val loss, device time) back to the host without a per-step sync."""

    def __init__(self, device: torch.device, depth: int = 4):
        self.cuda = device.type == "cuda"
        self.depth = depth
        self.pending: deque[_Pending] = deque()
        if self.cuda:
            self.host = torch.empty((depth, 2), dtype=torch.float32, pin_memory=True)
            self.nan = torch.full((), math.nan, device=device)
            self.starts = [torch.cuda.Event(enable_timing=True) for _ in range(depth)]
            self.ends = [torch.cuda.Event(enable_timing=True) for _ in range(depth)]
            self.next_slot = 0

    def step_started(self) -> None:
        if self.cuda:
            self.starts[self.next_slot].record()

    def push(
        self,
        step: int,
        data_s: float,
        step_s: float,
        lr: float,
        loss: torch.Tensor,
        vloss: torch.Tensor | None,
    ) -> list[Row]:
        now = time.time()
        if not self.cuda:
            v = vloss.detach().item() if vloss is not None else math.nan
            return [Row(step, now, loss.detach().item(), v, data_s, step_s, math.nan, lr)]
        slot = self.next_slot
        pair = torch.stack(
            [loss.detach().float(), (vloss.detach().float() if vloss is not None else self.nan)]
        )
        self.host[slot].copy_(pair, non_blocking=True)
        self.ends[slot].record()
        self.pending.append(
            _Pending(step, now, data_s, step_s, lr, slot, self.starts[slot], self.ends[slot])
        )
        self.next_slot = (slot + 1) % self.depth
        ready = self.ready()
        if (
            len(self.pending) >= self.depth
        ):  # the device is `depth` steps behind: wait for the oldest
            self.pending[0].end.synchronize()
            ready += self.ready()
        return ready

    def ready(self) -> list[Row]:
        out = []
        while self.pending and (not self.cuda or self.pending[0].end.query()):
            p = self.pending.popleft()
            tl, vl = self.host[p.slot].tolist()
            gpu_s = p.start.elapsed_time(p.end) / 1000.0
            out.append(Row(p.step, p.time, tl, vl, p.data_s, p.step_s, gpu_s, p.lr))
        return out

    def flush(self) -> list[Row]:
        if self.pending:
            self.pending[-1].end.synchronize()
        return self.ready()


class ForeverSampler(torch.utils.data.Sampler):
    """Endless random permutations of range(n): the random val batch of every step."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        while True:
            yield from torch.randperm(self.n, generator=self.g).tolist()

    def __len__(self) -> int:  # pragma: no cover - DataLoader asks only for sized samplers
        return 2**62


class EpochIterator:
    """Batches from a DataLoader across epochs (re-iterated: persistent_workers matters)."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        self.it = iter(loader)
        self.epoch = 0

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = iter(self.loader)
            return next(self.it)


@dataclass
class LoopResult:
    """What a loop did: the values it logged, why it stopped, where the time went."""

    rows: list[Row] = field(default_factory=list)
    stopped: str = "steps"  # steps | seconds | target | nonfinite
    nonfinite_step: int | None = None
    nonfinite_what: str = ""
    seconds: float = 0.0
    data_s: float = 0.0

    @property
    def train_losses(self) -> list[float]:
        return [r.train_loss for r in self.rows]

    @property
    def val_losses(self) -> list[float]:
        return [r.val_loss for r in self.rows if not math.isnan(r.val_loss)]

    @property
    def steps(self) -> int:
        return len(self.rows)


def move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    return batch


def train_loop(
    ctx: RunContext,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator,
    *,
    steps: int,
    seconds: float | None = None,
    val_batches: Iterator | None = None,
    val_every: int = 1,
    scheduler: Any = None,
    start_step: int = 0,
    until: Callable[[Row], bool] | None = None,
    every: Callable[[int], None] | None = None,
    every_n: int = 0,
    log: bool = True,
) -> LoopResult:
    """Train for ``steps`` steps (or ``seconds``), logging every batch; stops early when
    ``until(row)`` holds or a loss stops being finite. ``every(step)`` runs each ``every_n``
    steps (full-val metrics, checkpoints). ``log=False`` keeps the rows out of steps.bin
    (a measurement, not training: the speed stage)."""
    device = ctx.device
    loss_fn = ctx.loss_fn
    readback = Readback(device)
    result = LoopResult()
    grad_clip = ctx.preset.get("grad_clip")
    model.train()
    ctx.set_bn_eval_if_requested(model)
    t_start = time.perf_counter()
    deadline = t_start + seconds if seconds else math.inf

    def land(rows: list[Row]) -> bool:
        """Log rows that reached the host; True when the loop should stop."""
        if not rows:
            return False
        if log:
            ctx.log_steps(rows)
        result.rows.extend(rows)
        for r in rows:
            if not math.isfinite(r.train_loss) or (
                not math.isnan(r.val_loss) and not math.isfinite(r.val_loss)
            ):
                result.stopped = "nonfinite"
                result.nonfinite_step = r.step
                result.nonfinite_what = "train" if not math.isfinite(r.train_loss) else "val"
                return True
            if until is not None and until(r):
                result.stopped = "target"
                return True
        return False

    step = start_step
    t_prev = time.perf_counter()
    for i in range(steps):
        if ctx.stop_requested:
            land(readback.flush())
            raise Stopped()
        readback.step_started()
        t0 = time.perf_counter()
        x, y = move(next(batches), device)
        t1 = time.perf_counter()
        out = model(x)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        vloss = None
        if val_batches is not None and val_every and (i % val_every == 0):
            vx, vy = move(next(val_batches), device)
            model.eval()
            with torch.no_grad():
                vloss = loss_fn(model(vx), vy)
            model.train()
            ctx.set_bn_eval_if_requested(model)
        step += 1
        now = time.perf_counter()
        data_s = t1 - t0
        ctx.meter.add(data_s, now - t_prev)
        stop = land(
            readback.push(step, data_s, now - t_prev, optimizer.param_groups[0]["lr"], loss, vloss)
        )
        t_prev = now
        if stop:
            break
        if every is not None and every_n and step % every_n == 0:
            land(readback.flush())
            every(step)
            t_prev = time.perf_counter()
        if now > deadline:
            result.stopped = "seconds"
            break
    land(readback.flush())
    result.seconds = time.perf_counter() - t_start
    result.data_s = sum(r.data_s for r in result.rows)
    return result
