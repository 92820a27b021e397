"""Full data: val loss must fall by more than noise, and the val metric must beat an
input-blind baseline (the majority class; the train median for regression)."""

from __future__ import annotations

import math

import torch

from engine.context import RunContext
from engine.loop import train_loop
from engine.metrics import baseline, collect_targets, evaluate
from engine.stages.base import Check, Stage, Verdict, fmt, from_checks
from engine.stages.common import fixed_batch, head_mean, nonfinite_reason, reader_kwargs, tail_mean
from engine.torchfree.tasks import HIGHER_IS_BETTER, MAIN_METRIC


class GeneralizeStage(Stage):
    name = "generalize"

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        model = ctx.build_model()
        optimizer = ctx.build_optimizer(model)
        scheduler = ctx.build_scheduler(optimizer)
        val_loader = ctx.val_loader()
        evals: list[tuple[int, dict]] = []

        def run_eval(step: int) -> None:
            m = evaluate(model, val_loader, ctx.loss_fn, ctx.task, ctx.device)
            ctx.log_eval(step, m)
            evals.append((step, m))

        run_eval(0)
        result = train_loop(
            ctx,
            model,
            optimizer,
            ctx.train_batches(),
            steps=s.steps,
            seconds=s.seconds,
            val_batches=ctx.val_batches(),
            val_every=s.val_every,
            scheduler=scheduler,
            every=run_eval,
            every_n=s.eval_every,
        )
        lr = optimizer.param_groups[0]["lr"]
        if result.stopped == "nonfinite":
            return Verdict("fail", nonfinite_reason(result, lr), [], {"steps": result.steps})
        if not evals or evals[-1][0] != result.rows[-1].step:
            run_eval(result.rows[-1].step)
        start, end = evals[0][1], evals[-1][1]
        metric = MAIN_METRIC[ctx.task]
        classes = None if ctx.task == "regression" else _classes(model, ctx)
        kw = reader_kwargs(ctx)
        base = baseline(
            collect_targets(ctx.data.train, loader_kwargs=kw),
            collect_targets(ctx.data.val, loader_kwargs=kw),
            ctx.task,
            classes,
        )
        train = result.train_losses
        metrics = {
            "val_loss_start": start["val_loss"],
            "val_loss_end": end["val_loss"],
            "train_loss_first": head_mean(train),
            "train_loss_last": tail_mean(train),
            f"{metric}": end.get(metric, math.nan),
            f"baseline_{metric}": base.get(metric, math.nan),
            "steps": result.steps,
            "seconds": result.seconds,
        }
        for k in ("macro_f1", "pixel_acc"):
            if k in end:
                metrics[k] = end[k]
        checks = [
            self.check_val_falls(start, end, metrics, result.steps),
            self.check_beats_baseline(metric, end, base),
            self.check_trend(evals),
        ]
        if (
            checks[0].status == "fail"
            and metrics["train_loss_last"] < 0.5 * metrics["train_loss_first"]
        ):
            checks[0].detail += (
                f" — yet train loss fell {fmt(metrics['train_loss_first'])} → "
                f"{fmt(metrics['train_loss_last'])}: it memorises without learning anything "
                "that transfers (labels misaligned with inputs? train and val from different sources?)"
            )
        return from_checks(
            checks,
            metrics,
            f"val loss {fmt(start['val_loss'])} → {fmt(end['val_loss'])} in {result.steps} steps; "
            f"{metric} {fmt(end.get(metric))} vs {fmt(base.get(metric))} for the input-blind baseline",
        )

    def check_val_falls(self, start: dict, end: dict, metrics: dict, steps: int) -> Check:
        l0, l1 = start["val_loss"], end["val_loss"]
        noise = 2 * max(start.get("val_loss_se", 0.0), end.get("val_loss_se", 0.0))
        need = max(self.settings.margin * l0, noise)
        metrics["val_loss_noise"] = noise
        drop = l0 - l1
        if not math.isfinite(l1):
            return Check("val_loss_falls", "fail", f"the val loss became {fmt(l1)}")
        if drop > need:
            return Check(
                "val_loss_falls",
                "pass",
                f"val loss fell {fmt(l0)} → {fmt(l1)} ({100 * drop / l0:.0f}%, noise ±{fmt(noise)})",
            )
        return Check(
            "val_loss_falls",
            "fail",
            f"val loss did not fall beyond noise in {steps} steps: {fmt(l0)} → {fmt(l1)} "
            f"(needed a fall of {fmt(need)})",
        )

    def check_beats_baseline(self, metric: str, end: dict, base: dict) -> Check:
        got, ref = end.get(metric, math.nan), base.get(metric, math.nan)
        if not (math.isfinite(got) and math.isfinite(ref)):
            return Check("beats_baseline", "skip", f"no {metric} to compare")
        better = got > ref + 0.01 if HIGHER_IS_BETTER[metric] else got < ref * 0.99
        blind = (
            "always predicting the majority class"
            if metric != "mae"
            else "always predicting the train median"
        )
        if better:
            return Check(
                "beats_baseline", "pass", f"val {metric} {fmt(got)} beats {fmt(ref)} for {blind}"
            )
        return Check(
            "beats_baseline",
            "fail",
            f"val {metric} {fmt(got)} is no better than {fmt(ref)} for {blind}: the model "
            "has not learned to use the input",
        )

    def check_trend(self, evals: list[tuple[int, dict]]) -> Check:
        if len(evals) < 3:
            return Check("val_trend", "skip", "too few evaluations for a trend")
        best_step, best = min(((s, m["val_loss"]) for s, m in evals), key=lambda t: t[1])
        last = evals[-1][1]["val_loss"]
        if last > best * 1.1 and best_step != evals[-1][0]:
            return Check(
                "val_trend",
                "warn",
                f"val loss rose from its minimum {fmt(best)} (step {best_step}) to {fmt(last)}: "
                "overfitting begins — more data, augmentation (train only) or regularization",
            )
        return Check("val_trend", "pass", f"val loss lowest at step {best_step} of {evals[-1][0]}")


def _classes(model, ctx: RunContext) -> int | None:
    """How many classes the model outputs (the baseline's confusion matrix needs it)."""
    x, _ = fixed_batch(ctx, 1)
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(x)
        model.train(was)
    return int(out.shape[1]) if out.ndim >= 2 else None
