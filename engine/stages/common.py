"""Pieces several stages share: regularizers, sample batches, curve evidence."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from engine.context import RunContext, UserCodeError
from engine.loop import LoopResult, move
from engine.stages.base import fmt


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
    ctx.bn_eval = bool(found["batchnorm"])
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
