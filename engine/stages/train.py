"""Plain training: ``train.steps`` steps, every batch logged, a random val batch every
``val_every`` steps, full-val metrics every ``eval_every``, checkpoints, no early stop.
Ablations and forks run this stage; a warm fork continues the parent's step count.

With ``gpus`` > 1 the same code runs on every rank (``run_rank``): the model wrapped in DDP,
the train set sharded, rank 0 alone logging and saving; full-val metrics are computed by every
rank on the whole val set (the same numbers, no communication, nobody left in a collective).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from engine import checkpoint
from engine.context import RunContext
from engine.control import Stopped
from engine.loop import LoopResult, train_loop
from engine.metrics import evaluate
from engine.stages.base import Check, Stage, Verdict, fmt
from engine.stages.common import head_mean, nonfinite_reason, tail_mean
from engine.torchfree.tasks import MAIN_METRIC

if TYPE_CHECKING:
    from engine.distributed.rank import Ranks


class TrainStage(Stage):
    name = "train"
    distributed = True

    def run(self, ctx: RunContext) -> Verdict:
        return self.train(ctx, None)

    def run_rank(self, ctx: RunContext, ranks: Ranks) -> dict | None:
        try:
            verdict = self.train(ctx, ranks)
        except Stopped:
            return {"status": "stopped", "pruned": ctx.stop.pruned} if ranks.lead else None
        return {"status": "done", "verdict": verdict.to_json()} if ranks.lead else None

    def train(self, ctx: RunContext, ranks: Ranks | None) -> Verdict:
        s = self.settings
        lead = ranks is None or ranks.lead
        model, optimizer, scheduler, start_step, checks = prepare(ctx)
        val_loader = ctx.val_loader()
        last_eval: dict = {}
        done = {"eval": -1, "checkpoint": -1}  # the step of the last periodic eval/checkpoint

        def periodic(step: int) -> None:
            if s.eval_every and step % s.eval_every == 0:
                last_eval.clear()
                last_eval.update(_evaluate(ctx, model, val_loader))
                done["eval"] = step
                if lead:
                    ctx.log_eval(step, last_eval)
                    ctx.on_eval(step, last_eval)
            if lead and s.checkpoint_every and step % s.checkpoint_every == 0:
                checkpoint.save(ctx.folder, model, optimizer, step, self.name)
                done["checkpoint"] = step

        try:
            result = train_loop(
                ctx,
                model,
                optimizer,
                ranks.train_batches(ctx) if ranks else ctx.train_batches(),
                steps=s.steps,
                seconds=s.seconds,
                val_batches=ctx.val_batches() if s.val_every and lead else None,
                val_every=s.val_every,
                scheduler=scheduler,
                start_step=start_step,
                every=periodic,
                every_n=math.gcd(s.eval_every or 0, s.checkpoint_every or 0),
                log=lead,
                forward=ranks.wrap(model) if ranks else None,
                lockstep=ranks.lockstep() if ranks else None,
            )
        except Stopped as stop:
            if lead and stop.step is not None and stop.step > start_step:
                checkpoint.save(ctx.folder, model, optimizer, stop.step, self.name)
            raise
        end_step = result.last_step or start_step
        if result.stopped == "nonfinite":
            lr = optimizer.param_groups[0]["lr"]
            return Verdict("fail", nonfinite_reason(result, lr), checks, {"steps": result.steps})
        if not lead:
            return Verdict("pass", "")
        if done["checkpoint"] != end_step:
            checkpoint.save(ctx.folder, model, optimizer, end_step, self.name)
        if done["eval"] == end_step:  # the last step was an eval step: one row, not two
            final = dict(last_eval)
        else:
            final = _evaluate(ctx, model, val_loader)
            ctx.log_eval(end_step, final)
        verdict = summarize(result, final, end_step, checks, ctx.task)
        if ranks is not None:
            verdict.reason += f" (DDP: {ranks.world} processes, {ranks.backend})"
            verdict.metrics["world_size"] = ranks.world
        return verdict


def _evaluate(ctx: RunContext, model, val_loader) -> dict:
    """Full-val metrics; a custom training step's mean loss (``engine/stages/custom.py``)."""
    if ctx.custom is not None:
        from engine.stages import custom

        return custom.evaluate(ctx, model, val_loader)
    return evaluate(model, val_loader, ctx.loss_fn, ctx.task, ctx.device)


def prepare(ctx: RunContext) -> tuple:
    """A fresh model, optimizer and schedule — warm from the parent's checkpoint for a warm
    fork: (model, optimizer, scheduler, the step to continue from, [the warm-start check])."""
    model = ctx.build_model()
    optimizer = ctx.build_optimizer(model)
    scheduler = ctx.build_scheduler(optimizer)
    checks: list[Check] = []
    start_step = 0
    if ctx.warm is not None:
        start_step, note = checkpoint.warm_start(ctx.warm, model, optimizer)
        checks.append(Check("warm_start", "pass", f"restored {note} from step {start_step}"))
    return model, optimizer, scheduler, start_step, checks


def summarize(
    result: LoopResult, final: dict, end_step: int, checks: list[Check], task: str
) -> Verdict:
    """The train stage's verdict from its loop and its final full-val evaluation."""
    train = result.train_losses
    vals = result.val_losses
    metrics = {
        "train_loss_first": head_mean(train),
        "train_loss_last": tail_mean(train),
        "val_loss_last": tail_mean(vals) if vals else final["val_loss"],
        "final_val_loss": final["val_loss"],
        "steps": result.steps,
        "end_step": end_step,
        "seconds": result.seconds,
    }
    metrics.update({k: v for k, v in final.items() if k not in ("val_loss", "val_loss_se")})
    main = MAIN_METRIC[task]
    reason = (
        f"trained {result.steps} steps in {result.seconds:.1f} s: train loss "
        f"{fmt(metrics['train_loss_first'])} → {fmt(metrics['train_loss_last'])}, val loss "
        f"{fmt(final['val_loss'])}, {main} {fmt(final.get(main))}"
    )
    return Verdict("pass", reason, checks, metrics)
