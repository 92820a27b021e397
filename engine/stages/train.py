"""Plain training: ``train.steps`` steps, every batch logged, a random val batch every
``val_every`` steps, full-val metrics every ``eval_every``, checkpoints, no early stop.
Ablations and forks run this stage; a warm fork continues the parent's step count."""

from __future__ import annotations

import math

from engine import checkpoint
from engine.context import RunContext, Stopped
from engine.loop import LoopResult, train_loop
from engine.metrics import evaluate
from engine.stages.base import Check, Stage, Verdict, fmt
from engine.stages.common import head_mean, nonfinite_reason, tail_mean
from engine.torchfree.tasks import MAIN_METRIC


class TrainStage(Stage):
    name = "train"

    def run(self, ctx: RunContext) -> Verdict:
        from engine import ddp

        if ddp.world_size(ctx.preset) > 1:  # gpus > 1: train under DDP, one process per GPU
            return ddp.train_verdict(ddp.run_stage(ctx, self.name))
        s = self.settings
        model, optimizer, scheduler, start_step, checks = prepare(ctx)
        val_loader = ctx.val_loader()
        last_eval: dict = {}

        def periodic(step: int) -> None:
            if s.eval_every and step % s.eval_every == 0:
                last_eval.clear()
                last_eval.update(evaluate(model, val_loader, ctx.loss_fn, ctx.task, ctx.device))
                ctx.log_eval(step, last_eval)
                ctx.on_eval(step, last_eval)
            if s.checkpoint_every and step % s.checkpoint_every == 0:
                checkpoint.save(ctx.folder, model, optimizer, step, self.name)

        every = math.gcd(s.eval_every or 0, s.checkpoint_every or 0)
        try:
            result = train_loop(
                ctx,
                model,
                optimizer,
                ctx.train_batches(),
                steps=s.steps,
                seconds=s.seconds,
                val_batches=ctx.val_batches() if s.val_every else None,
                val_every=s.val_every,
                scheduler=scheduler,
                start_step=start_step,
                every=periodic,
                every_n=every,
            )
        except Stopped:
            step = ctx.last_step
            if step > start_step:
                checkpoint.save(ctx.folder, model, optimizer, step, self.name)
            raise
        end_step = result.rows[-1].step if result.rows else start_step
        if result.stopped == "nonfinite":
            return Verdict(
                "fail",
                nonfinite_reason(result, optimizer.param_groups[0]["lr"]),
                checks,
                {"steps": result.steps},
            )
        checkpoint.save(ctx.folder, model, optimizer, end_step, self.name)
        final = evaluate(model, val_loader, ctx.loss_fn, ctx.task, ctx.device)
        ctx.log_eval(end_step, final)
        return summarize(result, final, end_step, checks, ctx.task)


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
