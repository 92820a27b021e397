"""Overfit one sample, then a handful: with regularizers off, the loss must reach ~0.

Deterministic: the same samples (a seeded choice), the same batch every step, a fresh model
initialised from the preset's seed. Failing on a handful while one sample passes means the
output does not depend on the input — the stage says so, with the outputs as evidence.
"""

from __future__ import annotations

import math

import torch

from engine.context import RunContext
from engine.loop import Row, train_loop
from engine.stages.base import Check, Stage, Verdict, fmt
from engine.stages.common import (
    describe_curve,
    fixed_batch,
    nonfinite_reason,
    repeat,
    switch_off_regularizers,
    tail_mean,
)


class OverfitStage(Stage):
    val_every = 5  # a random val batch every few steps: it should rise here, and that's fine

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        n = min(s.samples, len(ctx.data.train))
        model = ctx.build_model()
        switched = switch_off_regularizers(ctx, model)
        optimizer = ctx.build_optimizer(model, lr=s.lr, no_weight_decay=True)
        lr = optimizer.param_groups[0]["lr"]
        batch = fixed_batch(ctx, n)
        first: list[float] = []

        def reached(row: Row) -> bool:
            if not first:
                first.append(row.train_loss)
            return row.train_loss <= s.reach * first[0] or row.train_loss < 1e-5

        result = train_loop(
            ctx,
            model,
            optimizer,
            repeat(batch),
            steps=s.steps,
            seconds=s.seconds,
            val_batches=ctx.val_batches(),
            val_every=self.val_every,
            until=reached,
        )
        ctx.bn_eval = False
        start = first[0] if first else math.nan
        losses = result.train_losses
        last = losses[-1] if losses else math.nan
        metrics = {
            "loss_first": start,
            "loss_last": last,
            "loss_min": min((x for x in losses if math.isfinite(x)), default=math.nan),
            "steps": result.steps,
            "seconds": result.seconds,
            "samples": n,
        }
        what = "one sample" if n == 1 else f"{n} samples"
        checks = []
        if switched:
            checks.append(
                Check("regularizers_off", "pass", f"for this stage: {switched}, weight decay 0")
            )
        if result.stopped == "nonfinite":
            return Verdict("fail", nonfinite_reason(result, lr), checks, metrics)
        curve = describe_curve(result, start)
        if result.stopped == "target":
            reason = (
                f"memorised {what}: train loss {fmt(start)} → {fmt(last)} "
                f"({100 * last / start:.1f}% of its start) in {result.steps} steps, {result.seconds:.1f} s"
            )
            checks.append(Check("loss_reaches_zero", "pass", reason))
            return Verdict("pass", reason, checks, metrics)
        budget = f"{result.steps} steps" + (
            f" ({result.seconds:.0f} s budget)" if result.stopped == "seconds" else ""
        )
        reason = self.diagnose(ctx, model, batch, what, curve, budget, start, losses, lr)
        checks.append(Check("loss_reaches_zero", "fail", reason))
        return Verdict("fail", reason, checks, metrics)

    def diagnose(self, ctx, model, batch, what, curve, budget, start, losses, lr) -> str:
        end = tail_mean(losses)
        if end > 1.5 * start:
            return (
                f"diverged on {what}: train loss {curve} in {budget}; lower the learning rate "
                f"(now {lr:g})"
            )
        if end > 0.9 * start:
            return (
                f"the loss barely moved on {what}: {curve} in {budget}; raise the learning rate "
                f"(now {lr:g}) or check that gradients reach the weights (init stage)"
            )
        return (
            f"plateaued on {what}: train loss {curve} in {budget}, short of "
            f"{100 * self.settings.reach:g}% of its start; the model cannot memorise {what} — "
            f"more capacity, a higher learning rate (now {lr:g}), or more steps"
        )


class OverfitOneStage(OverfitStage):
    name = "overfit_one"


class OverfitFewStage(OverfitStage):
    name = "overfit_few"

    def diagnose(self, ctx, model, batch, what, curve, budget, start, losses, lr) -> str:
        base = super().diagnose(ctx, model, batch, what, curve, budget, start, losses, lr)
        one = ctx.verdicts.get("overfit_one")
        spread = output_spread(model, batch[0])
        blind = spread < 1e-3
        if blind:
            return (
                f"the output does not depend on the input: all {len(batch[0])} samples get the "
                f"same prediction (spread {spread:.1e}), so only one can be fit — {curve}; look for an "
                f"input that is dropped, zeroed or detached in forward"
            )
        if one is not None and one.status == "pass":
            return (
                f"overfit_one passed but {what} cannot be memorised ({curve}): the output "
                f"barely depends on the input — check that forward uses x, and the capacity"
            )
        return base


@torch.no_grad()
def output_spread(model: torch.nn.Module, x: torch.Tensor) -> float:
    """How much the model's outputs differ across samples, relative to their size."""
    was = model.training
    model.eval()
    out = model(x).float().reshape(len(x), -1)
    model.train(was)
    scale = out.abs().mean().clamp(min=1e-8)
    return float((out - out.mean(0, keepdim=True)).abs().mean() / scale)
