"""The training step and the per-batch loop — the only ones in the engine.

Every training stage runs ``train_loop``: one process or one rank of a DDP job alike (DDP is
something applied to the model and the sampler, see ``engine/distributed/rank.py``). Per step:
wait for a batch (timed on the host), one ``TrainStep`` (forward, loss, backward, clip,
optimizer, schedule), a forward pass on a random val batch every ``val_every`` steps, and one
row in steps.bin.

A user's own training step (``step:`` in the preset, several ``models:``, dict batches, a
model that returns its own loss — ``engine/custom_step.py``) replaces forward and loss inside
``TrainStep``, and may step its optimizers itself; the loop stays this one. Its named losses
travel with the row (``Row.losses``) and land in losses.bin.

The host never waits on the device just to log. On CUDA both losses are copied into a pinned
host slot with ``non_blocking=True`` and a CUDA event is recorded behind the copy; the row is
read once the event has fired, usually a step later (``Readback``). The one place the loop
waits on the device is ``Readback.push`` when the device is ``depth`` steps behind: that keeps
the host from running away, and is where a queue of kernels would drain anyway.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.control import Stopped
from engine.data import move

if TYPE_CHECKING:
    from engine.context import RunContext

READBACK_DEPTH = 4  # steps the host may run ahead of the device before it waits


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
    losses: dict[str, float] | None = None  # a custom step's named losses (losses.bin)


@dataclass
class _Pending:
    step: int
    time: float
    data_s: float
    step_s: float
    lr: float
    slot: int
    numbers: dict[str, float] | None = None  # named losses that were host numbers already


def _host_number(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


class Readback:
    """Brings (train loss, val loss, device time) back to the host without a per-step sync.

    A custom step's named losses ride along in the same copy: their names are fixed by the
    first step that has any (a name missing later reads NaN). ``in_order=True`` (DDP ranks)
    releases each row exactly ``depth`` steps after it was pushed, so every rank lands the
    same rows at the same step."""

    def __init__(self, device: torch.device, depth: int = READBACK_DEPTH, in_order: bool = False):
        self.cuda = device.type == "cuda"
        self.depth = depth
        self.in_order = in_order
        self.pending: deque[_Pending] = deque()
        self.names: tuple[str, ...] | None = None  # named losses copied with the two losses
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
        loss,
        vloss,
        named: dict[str, Any] | None = None,
    ) -> list[Row]:
        now = time.time()
        if not self.cuda:  # on the CPU a value is ready when the step returns: nothing to wait on
            v = vloss.detach().item() if vloss is not None else math.nan
            extra = {k: _host_number(x) for k, x in named.items()} if named else None
            return [Row(step, now, loss.detach().item(), v, data_s, step_s, math.nan, lr, extra)]
        if self.names is None and named:
            self.names = tuple(k for k, x in named.items() if isinstance(x, torch.Tensor))
            if self.names and not self.pending:  # room for them beside the two losses
                self.host = torch.empty(
                    (self.depth, 2 + len(self.names)), dtype=torch.float32, pin_memory=True
                )
            elif self.names:  # pragma: no cover - train_loop pushes named losses from step 1
                self.names = ()
        slot = self.next_slot
        v = vloss.detach().float() if vloss is not None else self.nan
        parts = [loss.detach().float(), v]
        numbers = None
        if named:
            parts += [
                x.detach().float() if isinstance(x := named.get(k), torch.Tensor) else self.nan
                for k in self.names or ()
            ]
            # plain numbers never were on the device: they stay on the host
            numbers = {k: float(x) for k, x in named.items() if not isinstance(x, torch.Tensor)}
        elif self.names:
            parts += [self.nan] * len(self.names)
        self.host[slot].copy_(torch.stack(parts), non_blocking=True)
        self.ends[slot].record()
        self.pending.append(_Pending(step, now, data_s, step_s, lr, slot, numbers))
        self.next_slot = (slot + 1) % self.depth
        if len(self.pending) >= self.depth:  # the device is `depth` steps behind: wait here
            self.ends[self.pending[0].slot].synchronize()
            return [self._pop()] + ([] if self.in_order else self._ready())
        return [] if self.in_order else self._ready()

    def _ready(self) -> list[Row]:
        out = []
        while self.pending and self.ends[self.pending[0].slot].query():
            out.append(self._pop())
        return out

    def _pop(self) -> Row:
        p = self.pending.popleft()
        tl, vl, *extra = self.host[p.slot].tolist()
        gpu_s = self.starts[p.slot].elapsed_time(self.ends[p.slot]) / 1000.0
        losses = dict(zip(self.names or (), extra)) if self.names else None
        if p.numbers:
            losses = {**(losses or {}), **p.numbers}
        return Row(p.step, p.time, tl, vl, p.data_s, p.step_s, gpu_s, p.lr, losses)

    def flush(self) -> list[Row]:
        if self.pending:
            self.ends[self.pending[-1].slot].synchronize()
        out = []
        while self.pending:
            out.append(self._pop())
        return out


# ---------------------------------------------------------------- modes a stage can ask for

_FROZEN_BN: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def freeze_batchnorm(model: nn.Module) -> None:
    """Batchnorm layers of this model stay in eval mode (their init statistics) while training."""
    _FROZEN_BN.add(model)


def train_mode(model: nn.Module) -> None:
    """``model.train()``, keeping batchnorm frozen where a stage asked for it."""
    model.train()
    if model in _FROZEN_BN:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for forward and loss: bf16 or fp16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------- the step


class TrainStep:
    """One optimizer step on one batch: forward, loss, backward, clip, step, schedule.

    ``forward`` is what computes the outputs: the model itself, or its DDP wrapper (which
    all-reduces the gradients during backward). fp16 gets a gradient scaler.

    ``custom`` (a ``engine.custom_step.UserStep``) replaces forward and loss: the user's
    ``step:`` callable, a dict batch, a model that returns its own loss. A step that takes
    ``optimizers`` updates them itself (a GAN must), so backward and step are its own; every
    other one returns a loss that ``update`` backpropagates here. Its named losses are left in
    ``named`` after each call."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable,
        *,
        device: torch.device,
        forward: nn.Module | None = None,
        scheduler: Any = None,
        grad_clip: float | None = None,
        precision: str = "fp32",
        custom: Any = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.forward = forward if forward is not None else model
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.device = device
        self.precision = precision
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.custom = custom
        self.named: dict[str, Any] | None = None

    def __call__(self, batch: Any) -> torch.Tensor:
        custom = self.custom
        if custom is not None and custom.updates_itself:  # its own backward and steps
            with autocast(self.device, self.precision):
                loss, self.named = custom.losses(self.forward, batch, self.optimizer, self)
        else:
            with autocast(self.device, self.precision):
                if custom is None:
                    x, y = batch
                    loss = self.loss_fn(self.forward(x), y)
                else:
                    loss, self.named = custom.losses(self.forward, batch)
            self.update(loss)
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    def update(self, loss: torch.Tensor, optimizer: Any = None, parameters: Any = None) -> None:
        """Backward, clip and step: the preset's optimizer and model, or the ones named (a
        custom step that updates several models in turn calls this once per optimizer)."""
        optimizer = optimizer if optimizer is not None else self.optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if self.grad_clip:
                self._clip(parameters)
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(optimizer)
                self._clip(parameters)
            self.scaler.step(optimizer)
            self.scaler.update()

    def _clip(self, parameters: Any) -> None:
        params = parameters if parameters is not None else self.model.parameters()
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    @torch.no_grad()
    def val_loss(self, batch: Any) -> torch.Tensor:
        """The loss on one val batch, in eval mode, through the bare model (a forward through
        DDP could sync buffers); the training mode is restored after. A custom step is called
        without optimizers: it computes its losses and changes nothing."""
        self.model.eval()
        with autocast(self.device, self.precision):
            if self.custom is None:
                x, y = batch
                loss = self.loss_fn(self.model(x), y)
            else:
                loss, _ = self.custom.losses(self.model, batch)
        train_mode(self.model)
        return loss


# ---------------------------------------------------------------- the loop


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

    @property
    def last_step(self) -> int | None:
        return self.rows[-1].step if self.rows else None


class Lockstep:
    """Stop decisions for one process: each wish holds at once. Under DDP every rank must stop
    at the same step; ``engine.distributed.rank.RankLockstep`` shares the wishes instead."""

    shared = False  # True: rows are released in a fixed order, the same step on every rank

    def decide(self, stop: bool, ended: bool, late: bool) -> tuple[bool, bool, bool]:
        """(stop requested, a loss ended the loop, past the time guard) — on any rank."""
        return stop, ended, late


def train_loop(
    ctx: RunContext,
    model: nn.Module,
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
    forward: nn.Module | None = None,
    lockstep: Lockstep | None = None,
    custom: Any = None,
) -> LoopResult:
    """Train for ``steps`` steps (``seconds`` is a guard against hangs), logging every batch.

    Stops early when ``until(row)`` holds or a loss stops being finite; nothing after that
    row is logged. ``every(step)`` runs each ``every_n`` steps (full-val metrics,
    checkpoints). ``log=False`` keeps the rows out of steps.bin (a measurement, not
    training). Under DDP, ``forward`` is the wrapped model and ``lockstep`` makes every
    rank stop at the same step. A stop request raises ``Stopped`` at a step boundary.
    ``custom`` is the step that replaces forward and loss (default: the preset's, if any —
    ``ctx.custom``); its named losses go to losses.bin."""
    device = ctx.device
    custom = custom if custom is not None else getattr(ctx, "custom", None)
    step_fn = TrainStep(
        model,
        optimizer,
        ctx.loss_fn,
        device=device,
        forward=forward,
        scheduler=scheduler,
        grad_clip=ctx.preset.get("grad_clip"),
        precision=ctx.precision,
        custom=custom,
    )
    lockstep = lockstep or Lockstep()
    readback = Readback(device, in_order=lockstep.shared)
    result = LoopResult()
    train_mode(model)
    t_start = time.perf_counter()
    deadline = t_start + seconds if seconds else math.inf

    def land(rows: list[Row]) -> None:
        """Keep the rows that reached the host, up to the first one that ends the loop."""
        kept = []
        for r in rows:
            if result.stopped != "steps":
                break  # decided already: what the device ran after that is not logged
            kept.append(r)
            bad_train = not math.isfinite(r.train_loss)
            bad_named = [k for k, v in (r.losses or {}).items() if not math.isfinite(v)]
            if bad_train or (not math.isnan(r.val_loss) and not math.isfinite(r.val_loss)):
                result.stopped = "nonfinite"
                result.nonfinite_step = r.step
                result.nonfinite_what = "train" if bad_train else "val"
            elif bad_named:
                result.stopped = "nonfinite"
                result.nonfinite_step = r.step
                result.nonfinite_what = bad_named[0]
            elif until is not None and until(r):
                result.stopped = "target"
        if kept:
            result.rows.extend(kept)
            if log:
                ctx.log_steps(kept)
                if any(r.losses for r in kept):
                    ctx.log_losses(kept)

    step = start_step
    t_prev = time.perf_counter()
    for i in range(steps):
        ended = result.stopped in ("nonfinite", "target")
        stop, ended, late = lockstep.decide(
            ctx.stop.requested, ended, time.perf_counter() > deadline
        )
        if stop:
            land(readback.flush())
            raise Stopped(result.last_step)
        if ended and result.stopped == "steps":  # another rank's loss stopped being finite
            result.stopped, result.nonfinite_step = "nonfinite", step
            result.nonfinite_what = "train loss on another rank"
        if ended:
            break
        if late:
            result.stopped = "seconds"
            break
        readback.step_started()
        t0 = time.perf_counter()
        batch = move(next(batches), device)
        t1 = time.perf_counter()
        loss = step_fn(batch)
        vloss = None
        if val_batches is not None and val_every and i % val_every == 0:
            vloss = step_fn.val_loss(move(next(val_batches), device))
        step += 1
        now = time.perf_counter()
        ctx.meter.add(t1 - t0, now - t_prev)
        lr = optimizer.param_groups[0]["lr"]
        land(readback.push(step, t1 - t0, now - t_prev, lr, loss, vloss, step_fn.named))
        t_prev = now
        if every is not None and every_n and step % every_n == 0:
            land(readback.flush())
            every(step)
            t_prev = time.perf_counter()
    land(readback.flush())
    result.seconds = time.perf_counter() - t_start
    result.data_s = sum(r.data_s for r in result.rows)
    return result
