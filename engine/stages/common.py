"""Pieces several stages share: regularizers, sample batches, curve evidence."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from engine.context import RunContext, UserCodeError
from engine.data import move
from engine.loop import LoopResult, freeze_batchnorm
from engine.stages.base import Check, fmt


def regularizers(model: nn.Module) -> dict[str, list[str]]:
    """Names of dropout layers with p > 0 and of normalisation layers that use batch stats."""
    out: dict[str, list[str]] = {"dropout": [], "batchnorm": []}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            out["dropout"].append(f"{name or type(m).__name__} (p={m.p:g})")
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out["batchnorm"].append(name or type(m).__name__)
    return out


def switch_off_regularizers(ctx: RunContext, model: nn.Module) -> str:
    """Dropout p=0 and batchnorm frozen (eval: init statistics); returns what was switched off."""
    found = regularizers(model)
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    if found["batchnorm"]:
        freeze_batchnorm(model)  # for this model only: the next stage builds a fresh one
    parts = []
    if found["dropout"]:
        parts.append(f"dropout ×{len(found['dropout'])} set to p=0")
    if found["batchnorm"]:
        parts.append(f"batchnorm ×{len(found['batchnorm'])} frozen")
    return ", ".join(parts)


def reader_kwargs(ctx: RunContext) -> dict:
    """Read samples for checks with the preset's workers: decoding thousands alone is slow."""
    n = ctx.preset.get("num_workers")
    return {"num_workers": n} if n else {}


def collate(dataset: Dataset, indices: list[int], what: str = "train") -> tuple:
    """Stack samples into a batch; a shape mismatch becomes a UserCodeError that says which."""
    items = []
    for i in indices:
        try:
            item = dataset[i]
        except Exception as e:
            raise UserCodeError(f"reading {what} sample {i} failed: {type(e).__name__}: {e}") from e
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise UserCodeError(
                f"{what} sample {i} is a {type(item).__name__}"
                + (f" of {len(item)} items" if isinstance(item, (tuple, list)) else "")
                + "; datasets must yield (input, target) pairs"
            )
        items.append(item)
    try:
        x, y = default_collate(items)
    except Exception as e:
        shapes = sorted({tuple(torch.as_tensor(it[0]).shape) for it in items[:64]})
        raise UserCodeError(
            f"{what} samples cannot be stacked into a batch ({type(e).__name__}); input shapes seen: "
            f"{', '.join(map(str, shapes[:4]))}"
        ) from e
    return x, y


def fixed_batch(ctx: RunContext, n: int) -> tuple:
    subset = ctx.fixed_subset(n)
    return move(collate(ctx.data.train, list(subset.indices)), ctx.device)


def repeat(batch: tuple) -> Iterator:
    return itertools.repeat(batch)


def describe_curve(result: LoopResult, first: float) -> str:
    """'1.61 → 0.92 (min 0.88 at step 140)' from a loop's logged train losses."""
    losses = result.train_losses
    finite = [(r.step, r.train_loss) for r in result.rows if math.isfinite(r.train_loss)]
    if not finite:
        return "no finite train loss was logged"
    step_min, lo = min(finite, key=lambda t: t[1])
    last = losses[-1]
    return f"{fmt(first)} → {fmt(last)} (min {fmt(lo)} at step {step_min})"


def nonfinite_reason(result: LoopResult, lr: float | None) -> str:
    before = [
        r
        for r in result.rows
        if r.step < (result.nonfinite_step or 0) and math.isfinite(r.train_loss)
    ]
    last = (
        f" (last finite value {fmt(before[-1].train_loss)} at step {before[-1].step})"
        if before
        else ""
    )
    what = "train loss" if result.nonfinite_what == "train" else "loss on the random val batch"
    lr_txt = f" (now {lr:g})" if lr else ""
    return (
        f"the {what} became non-finite at step {result.nonfinite_step}{last}: lower the learning "
        f"rate{lr_txt}, clip gradients (grad_clip), or look for log(0) / division by zero in the loss"
    )


def tail_mean(xs: list[float], n: int = 10) -> float:
    tail = [x for x in xs[-n:] if math.isfinite(x)]
    return sum(tail) / len(tail) if tail else math.nan


def head_mean(xs: list[float], n: int = 10) -> float:
    head = [x for x in xs[:n] if math.isfinite(x)]
    return sum(head) / len(head) if head else math.nan


# ---------------------------------------------------------------- what a curve shows


@dataclass
class CurveShape:
    """What a train-loss curve did, measured against the loss's floor.

    ``kind``: reached | falling | plateau | barely | diverged | oscillating | short.
    Gaps are distances to the floor, so a negative or offset loss is judged by its progress,
    never by a fraction of its start."""

    kind: str
    start: float
    end: float  # mean of the last few values
    lowest: float
    lowest_step: int
    floor: float
    progress: float  # share of the way from the start down to the floor, at the end
    steps: int
    more_steps: float = math.nan  # steps still needed at the current rate (kind falling)
    since: int | None = None  # where divergence began / oscillation shows
    rises: int = 0

    def curve(self) -> str:
        return (
            f"{fmt(self.start)} → {fmt(self.end)} (lowest {fmt(self.lowest)} at step "
            f"{self.lowest_step})"
        )


def curve_shape(rows: list, floor: float, target: float, reached: bool = False) -> CurveShape:
    """Classify a train-loss curve: how far it got towards ``floor``, and whether it is still
    falling (then how many more steps it needs to reach ``target`` at its current rate)."""
    pts = [(r.step, r.train_loss) for r in rows if math.isfinite(r.train_loss)]
    if not pts:
        return CurveShape("short", math.nan, math.nan, math.nan, 0, floor, 0.0, 0)
    steps = [s for s, _ in pts]
    losses = [v for _, v in pts]
    start = losses[0]
    n = len(losses)
    tail = losses[-max(3, n // 10) :]
    end = sum(tail) / len(tail)
    lo_step, lo = min(pts, key=lambda t: t[1])
    g0 = max(start - floor, 1e-12)
    progress = (start - end) / g0
    shape = CurveShape("plateau", start, end, lo, lo_step, floor, progress, n)
    if reached:
        shape.kind = "reached"
        return shape
    if n < 6:
        shape.kind = "short"
        return shape
    # rises bigger than a tenth of the way down, in the second half: an unstable step size
    half = losses[n // 2 :]
    rises = [i for i in range(1, len(half)) if half[i] - half[i - 1] > 0.1 * g0]
    shape.rises = len(rises)
    if end - floor > 1.5 * g0:
        shape.kind = "diverged"
        over = next((s for s, v in pts if v - floor > 1.5 * g0), steps[-1])
        shape.since = over
        return shape
    if len(rises) >= 3 and progress < 0.9:
        shape.kind = "oscillating"
        shape.since = steps[n // 2 + rises[0]]
        return shape
    w = max(6, n // 3)
    window = [v - floor for v in losses[-w:]]
    m1 = sum(window[: w // 2]) / (w // 2)
    m2 = sum(window[w // 2 :]) / (w - w // 2)
    spread = max(window) - min(window)
    falling = m2 < 0.95 * m1 and (m1 - m2) > 0.02 * g0 and (m1 - m2) > 0.1 * spread
    if progress < 0.1 and not (falling and progress > 0.02):
        shape.kind = "barely"
        return shape
    if falling:
        shape.kind = "falling"
        need = max(target - floor, 1e-12)
        if m2 > need and m1 > 0 and m2 > 0:
            rate = math.log(m1 / m2) / (w / 2)  # per step, in log space
            shape.more_steps = math.log(m2 / need) / rate if rate > 0 else math.inf
        else:
            shape.more_steps = 0.0
        return shape
    return shape


def tricks_check(model: nn.Module, optimizer, scheduler_target: str | None) -> Check:
    """The recipe starts without dropout, batchnorm, weight decay or an LR schedule: which are on."""
    found = regularizers(model)
    parts = []
    if found["dropout"]:
        parts.append(f"dropout ({', '.join(found['dropout'][:3])})")
    if found["batchnorm"]:
        parts.append(f"batchnorm ×{len(found['batchnorm'])}")
    wd = max((g.get("weight_decay", 0) or 0) for g in optimizer.param_groups)
    if wd:
        parts.append(f"weight decay {wd:g}")
    if scheduler_target:
        parts.append(f"LR schedule ({scheduler_target.rsplit('.', 1)[-1]})")
    if parts:
        return Check(
            "tricks_off",
            "warn",
            f"tricks are on: {'; '.join(parts)} — the recipe starts without them and adds "
            "them back once the ladder passes",
        )
    return Check("tricks_off", "pass", "no dropout, batchnorm, weight decay or LR schedule")
