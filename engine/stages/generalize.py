"""Full data: the model must beat an input-blind baseline on val, by more than noise.

Two comparisons, both against what a model that ignores its input gets:
- the val LOSS must be lower than the input-blind baseline's loss — the loss of the best
  constant output fitted on the train targets (the class prior's cross-entropy; the target
  variance for MSE) — by more than its noise. Comparing with the loss at init would reward a
  model that only calibrated to the class prior;
- the val METRIC must beat the baseline's (the majority class; the train median) by more than
  its confidence interval over the val set (binomial for accuracy, bootstrap otherwise), and
  the reason says it: "accuracy 0.28 ± 0.04 vs 0.255".

The verdict says what the curve shows: still falling at the end of the budget warns with the
steps it needs; a wall-time guard that ends the stage warns; a learning rate scheduled down to
0 or a diverging loss is named with its step. When the model fits its train set but val does
not follow, a controlled test (``engine/diagnosis/labels.py``) asks whether the labels carry
information about the inputs at all.
"""

from __future__ import annotations

import math

import torch

from engine.context import RunContext
from engine.data import move
from engine.diagnosis.labels import label_test
from engine.diagnosis.updates import UpdateMonitor, stalled_diagnosis
from engine.loop import train_loop
from engine.metrics import baseline, collect_targets, evaluate, scores_from_confusion
from engine.stages.base import Check, Stage, Verdict, fmt
from engine.stages.common import (
    curve_shape,
    fixed_batch,
    head_mean,
    nonfinite_reason,
    reader_kwargs,
    tail_mean,
)
from engine.torchfree.tasks import HIGHER_IS_BETTER, MAIN_METRIC

Z = {0.9: 1.645, 0.95: 1.96, 0.99: 2.576}


class GeneralizeStage(Stage):
    name = "generalize"

    def run(self, ctx: RunContext) -> Verdict:
        if ctx.custom is not None:  # the full-val loss must fall; no input-blind baseline
            from engine.stages import custom

            return custom.generalize_stage(self, ctx)
        s = self.settings
        model = ctx.build_model()
        optimizer = ctx.build_optimizer(model)
        scheduler = ctx.build_scheduler(optimizer)
        lr0 = optimizer.param_groups[0]["lr"]
        val_loader = ctx.val_loader()
        evals: list[tuple[int, dict]] = []

        per_sample: list = []  # the last step's per-sample values, for the intervals

        def run_eval(step: int) -> None:
            if step == s.steps:  # the last one: per-sample values too, in the same pass
                m, per = evaluate_samples(model, val_loader, ctx.loss_fn, ctx.task, ctx.device)
                per_sample[:] = [per]
            else:
                m = evaluate(model, val_loader, ctx.loss_fn, ctx.task, ctx.device)
            ctx.log_eval(step, m)
            evals.append((step, m))

        run_eval(0)
        monitor = UpdateMonitor(model, optimizer)
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
        report = monitor.report()
        if result.stopped == "nonfinite":
            return Verdict(
                "fail",
                nonfinite_reason(result, lr) + _lr_note(result, lr0),
                [],
                {"steps": result.steps},
            )
        end_step = result.rows[-1].step if result.rows else 0
        if not (per_sample and evals[-1][0] == end_step):  # ended early: evaluate here
            logged = bool(evals) and evals[-1][0] == end_step
            if logged:
                evals.pop()
            final, per = evaluate_samples(model, val_loader, ctx.loss_fn, ctx.task, ctx.device)
            if not logged:
                ctx.log_eval(end_step, final)
            evals.append((end_step, final))
            per_sample[:] = [per]
        start, end = evals[0][1], evals[-1][1]
        metric = MAIN_METRIC[ctx.task]
        kw = reader_kwargs(ctx)
        train_t = collect_targets(ctx.data.train, loader_kwargs=kw)
        val_t = collect_targets(ctx.data.val, loader_kwargs=kw)
        out_shape = _output_shape(model, ctx)
        classes = None if ctx.task == "regression" else (out_shape[0] if out_shape else None)
        base = baseline(train_t, val_t, ctx.task, classes)
        base_loss = blind_loss(ctx.loss_fn, ctx.task, train_t, val_t, out_shape)
        train = result.train_losses
        metrics = {
            "val_loss_start": start["val_loss"],
            "val_loss_end": end["val_loss"],
            "baseline_val_loss": base_loss,
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
        metric_check, interval = self.check_beats_baseline(
            metric, end, base, per_sample[0], metrics
        )
        checks = [
            self.check_val_loss(end, base_loss, metrics, result.steps),
            metric_check,
            self.check_trend(evals),
        ]
        summary = (
            f"val loss {fmt(start['val_loss'])} → {fmt(end['val_loss'])} in {result.steps} steps "
            f"(input-blind {fmt(base_loss)}); {interval}"
        )
        bad = [c for c in checks[:2] if c.status == "fail"]
        if not bad:
            trend = checks[2]
            if trend.status == "warn":
                return Verdict("warn", trend.detail, checks, metrics)
            return Verdict("pass", summary, checks, metrics)
        status, cause = self.explain(ctx, result, lr0, lr, train, evals, base_loss, checks, report)
        reason = f"{cause}: {bad[0].detail}" if cause else bad[0].detail
        if status == "fail" and len(bad) > 1 and not cause:
            reason += f"; {bad[1].detail}"
        return Verdict(status, reason, checks, metrics)

    # ---- why val does not beat the baseline ----------------------------------------
    def explain(
        self, ctx, result, lr0, lr, train, evals, base_loss, checks, report
    ) -> tuple[str, str]:
        """(status, the cause in words) for a stage whose val checks failed."""
        s = self.settings
        first = head_mean(train)
        shape = curve_shape(result.rows, 0.0 if first > 0 else min(train) - abs(first), first)
        if shape.kind == "diverged":
            return "fail", (
                f"the train loss diverged from step {shape.since} ({shape.curve()}): lower the "
                f"learning rate (now {lr:g})"
            )
        low = _lr_fell_to_zero(result, lr0)
        if low:
            return "fail", low
        if result.stopped == "seconds":
            return "warn", (
                f"the wall-time guard ({s.seconds:g} s) ended the stage after {result.steps} of "
                f"{s.steps} steps — the machine is slow or busy, which says nothing against the "
                f"model; raise generalize.seconds or free the machine"
            )
        falling = _still_falling(result, evals, base_loss, lr, self.name)
        if falling:
            return "warn", falling
        stalled = stalled_diagnosis(report, lr0, ctx.preset.get("grad_clip"))
        if stalled:
            return "fail", f"the model barely learned in {result.steps} steps: {stalled}"
        fell = first - tail_mean(train)
        one = ctx.verdicts.get("overfit_few")
        fits = fell > 0.1 * abs(first) or (one is not None and one.status == "pass")
        checks.append(Check("labels_informative", "skip", "not needed"))
        if not (s.label_test and fits):
            return "fail", ""
        ev = label_test(ctx, train, result.steps, s.seconds)
        if ev.verdict == "uninformative":
            checks[-1] = Check(
                "labels_informative",
                "fail",
                f"the train labels carry no information about the inputs: {ev.numbers()}",
            )
            return "fail", (
                f"the train labels carry no information about the inputs — {ev.numbers()}: the "
                "real labels do no better than shuffled ones. Labels and inputs are not paired: "
                "shuffled separately (two shuffles, or one list shuffled), sorted in another "
                "order, or read with an off-by-one index in __getitem__"
            )
        if ev.verdict == "informative":
            checks[-1] = Check(
                "labels_informative",
                "pass",
                f"the train labels carry information about the inputs: {ev.numbers()}",
            )
            return "fail", (
                f"the model learned the train labels ({ev.numbers()}) but val does not follow: "
                "the val labels do not belong to the val inputs (shuffled or ordered separately, "
                "an off-by-one index), or val comes from another distribution than train"
            )
        checks[-1] = Check("labels_informative", "skip", f"inconclusive: {ev.numbers()}")
        return "fail", ""

    def check_val_loss(self, end: dict, base_loss: float, metrics: dict, steps: int) -> Check:
        l1 = end["val_loss"]
        noise = 2 * end.get("val_loss_se", 0.0)
        metrics["val_loss_noise"] = noise
        if not math.isfinite(l1):
            return Check("val_loss_falls", "fail", f"the val loss became {fmt(l1)}")
        if not math.isfinite(base_loss):
            return Check("val_loss_falls", "skip", "no input-blind loss to compare with")
        need = max(self.settings.margin * abs(base_loss), noise)
        if l1 < base_loss - need:
            return Check(
                "val_loss_falls",
                "pass",
                f"val loss {fmt(l1)} is below {fmt(base_loss)}, the input-blind baseline's "
                f"(noise ±{fmt(noise)})",
            )
        return Check(
            "val_loss_falls",
            "fail",
            f"val loss did not fall below the input-blind baseline's in {steps} steps: "
            f"{fmt(l1)} vs {fmt(base_loss)} for a constant output fitted to the train targets "
            f"(needed {fmt(need)} lower)",
        )

    def check_beats_baseline(
        self, metric: str, end: dict, base: dict, per_sample, metrics: dict
    ) -> tuple[Check, str]:
        got, ref = end.get(metric, math.nan), base.get(metric, math.nan)
        if not (math.isfinite(got) and math.isfinite(ref)):
            return Check(
                "beats_baseline", "skip", f"no {metric} to compare"
            ), f"{metric} {fmt(got)}"
        half = interval(metric, per_sample, got, self.settings.confidence)
        metrics[f"{metric}_ci"] = half
        shown = f"{metric} {fmt(got)} ± {fmt(half)} vs {fmt(ref)} for the input-blind baseline"
        better = got - half > ref if HIGHER_IS_BETTER[metric] else got + half < ref
        blind = (
            "always predicting the majority class"
            if metric != "mae"
            else "always predicting the train median"
        )
        ci = f"{100 * self.settings.confidence:g}% interval over {per_sample.shape[0]} val samples"
        if better:
            return (
                Check("beats_baseline", "pass", f"val {shown} ({blind}; {ci})"),
                shown,
            )
        worse = got + half < ref if HIGHER_IS_BETTER[metric] else got - half > ref
        relation = "is worse than" if worse else "is within noise of"
        return (
            Check(
                "beats_baseline",
                "fail",
                f"val {metric} {fmt(got)} ± {fmt(half)} {relation} {fmt(ref)} for {blind} "
                f"({ci}): the model has not learned to use the input",
            ),
            shown,
        )

    def check_trend(self, evals: list[tuple[int, dict]]) -> Check:
        if len(evals) < 3:
            return Check("val_trend", "skip", "too few evaluations for a trend")
        best_step, best = min(((s, m["val_loss"]) for s, m in evals), key=lambda t: t[1])
        last = evals[-1][1]["val_loss"]
        se = evals[-1][1].get("val_loss_se", 0.0)
        if last > best * 1.1 + 2 * se and best_step != evals[-1][0]:
            return Check(
                "val_trend",
                "warn",
                f"val loss rose from its minimum {fmt(best)} (step {best_step}) to {fmt(last)}: "
                "overfitting begins — more data, augmentation (train only) or regularization",
            )
        return Check("val_trend", "pass", f"val loss lowest at step {best_step} of {evals[-1][0]}")


# ---------------------------------------------------------------- evidence helpers


def _lr_note(result, lr0: float) -> str:
    low = _lr_fell_to_zero(result, lr0)
    return f" ({low})" if low else ""


def _lr_fell_to_zero(result, lr0: float) -> str | None:
    """A sentence when the schedule drove the learning rate to (almost) 0 during the stage."""
    if not result.rows or not lr0 or lr0 <= 0:
        return None
    end = result.rows[-1].lr
    if end > 1e-3 * lr0:
        return None
    at = next((r.step for r in result.rows if r.lr <= 1e-3 * lr0), result.rows[-1].step)
    return (
        f"the learning rate fell from {lr0:g} to {end:.2g} by step {at} of {result.rows[-1].step}: "
        "the LR scheduler (stepped every batch here) ended learning early — its step_size / "
        "T_max / total_iters count batches, not epochs"
    )


def _still_falling(
    result, evals, base_loss: float, lr: float, stage: str = "generalize"
) -> str | None:
    """A sentence when the loss was still falling at the end of the budget: the last full-val
    evaluation the lowest and at least 1% below the one before, with the train loss falling
    by more than its noise over the last third. ``stage`` names the key to raise (the l1
    stage is a generalize stage under another name)."""
    if len(evals) < 2 or not result.rows:
        return None
    (s1, e1), (s2, e2) = evals[-2], evals[-1]
    l1, l2 = e1["val_loss"], e2["val_loss"]
    lowest = min(m["val_loss"] for _, m in evals)
    train = [r.train_loss for r in result.rows if math.isfinite(r.train_loss)]
    if not (l2 <= lowest and l1 - l2 > 0.01 * abs(l1) and s2 > s1 and _noisy_fall(train)):
        return None
    rate = (l1 - l2) / (s2 - s1)
    more = ""
    if math.isfinite(base_loss) and l2 > base_loss:
        need = (l2 - 0.99 * base_loss) / rate
        more = f"; at this rate it needs about {need:,.0f} more steps to beat the input-blind loss {fmt(base_loss)}"
        if need > 10 * result.steps:
            more += f" — or raise the learning rate (now {lr:g})"
    return (
        f"the step budget ran out while the loss was still falling: val loss {fmt(l1)} at step "
        f"{s1} → {fmt(l2)} at step {s2}, the train loss falling too; raise {stage}.steps "
        f"(now {result.steps}){more}"
    )


def _noisy_fall(xs: list[float]) -> bool:
    """Whether a noisy per-batch curve still falls over its last half: a least-squares slope
    below 0 by more than one standard error."""
    tail = xs[len(xs) // 2 :]
    n = len(tail)
    if n < 10:
        return False
    mx, my = (n - 1) / 2, sum(tail) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    slope = sum((i - mx) * (v - my) for i, v in enumerate(tail)) / sxx
    resid = sum((v - my - slope * (i - mx)) ** 2 for i, v in enumerate(tail)) / max(n - 2, 1)
    return slope < 0 and -slope > math.sqrt(resid / sxx)


@torch.no_grad()
def evaluate_samples(model, loader, loss_fn, task: str, device) -> tuple[dict, torch.Tensor]:
    """The same metrics as ``engine.metrics.evaluate`` plus what each val sample contributes
    (correct or not; its absolute error; its confusion matrix), for confidence intervals."""
    was = model.training
    model.eval()
    losses, sizes, per = [], [], []
    cm = None
    for batch in loader:
        x, y = move(batch, device)
        out = model(x)
        b = y.shape[0]
        losses.append(loss_fn(out, y).double())
        sizes.append(b)
        if task == "regression":
            err = (out.reshape(y.shape).double() - y.double()).abs().reshape(b, -1).mean(1)
            per.append(err)
        else:
            c = out.shape[1]
            pred = out.argmax(1).reshape(b, -1)
            t = y.reshape(b, -1).long()
            if task == "classification":
                per.append((pred == t).double().mean(1))
            valid = (t >= 0) & (t < c)
            img = torch.arange(b, device=t.device).unsqueeze(1).expand_as(t)
            idx = (img * c * c + t.clamp(0, c - 1) * c + pred)[valid]
            part = torch.bincount(idx, minlength=b * c * c).reshape(b, c * c)
            if task == "segmentation":
                per.append(part.double())
            tot = part.sum(0).reshape(c, c)
            cm = tot if cm is None else cm + tot
    model.train(was)
    n = sum(sizes)
    stacked = torch.stack(losses).cpu()
    w = torch.tensor(sizes, dtype=torch.float64)
    out = {"val_loss": float((stacked * w).sum() / max(n, 1))}
    if len(losses) > 1:
        out["val_loss_se"] = float(stacked.std() / math.sqrt(len(losses)))
    per_sample = torch.cat(per).cpu() if per else torch.zeros(0)
    if task == "regression":
        out["mae"] = float(per_sample.mean()) if len(per_sample) else math.nan
    elif cm is not None:
        out.update(scores_from_confusion(cm.cpu(), task))
    return out, per_sample


def interval(metric: str, per_sample: torch.Tensor, value: float, confidence: float) -> float:
    """Half-width of the metric's confidence interval over the val samples: binomial for
    accuracy, a bootstrap over samples (images, for mIoU) otherwise."""
    n = per_sample.shape[0]
    if n < 2:
        return math.inf
    z = Z.get(round(confidence, 2), 1.96)
    if metric == "accuracy":
        p = min(max(value, 1.0 / n), 1 - 1.0 / n)
        return z * math.sqrt(p * (1 - p) / n)
    g = torch.Generator().manual_seed(0)
    reps = 300
    idx = torch.randint(n, (reps, n), generator=g)
    if metric == "mae":
        stats = per_sample[idx].mean(1)
    else:  # miou from per-image confusion matrices
        c = round(math.sqrt(per_sample.shape[1]))
        counts = torch.zeros(reps, n, dtype=torch.float64)
        counts.scatter_add_(1, idx, torch.ones(reps, n, dtype=torch.float64))
        cms = (counts @ per_sample).reshape(reps, c, c)
        tp = cms.diagonal(dim1=1, dim2=2)
        union = cms.sum(2) + cms.sum(1) - tp
        iou = tp / union.clamp(min=1)
        present = (union > 0).double()
        stats = (iou * present).sum(1) / present.sum(1).clamp(min=1)
    lo, hi = torch.quantile(
        stats, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=stats.dtype)
    )
    return float((hi - lo) / 2)


def blind_loss(loss_fn, task: str, train_t, val_t, out_shape) -> float:
    """The val loss of the best input-blind output: one constant (a sample's output shape)
    fitted to the train targets — the class prior for cross-entropy, the mean for MSE, the
    median for L1 — evaluated with the user's loss on the val targets."""
    if out_shape is None or len(train_t) == 0 or len(val_t) == 0:
        return math.nan
    try:
        const = _blind_output(loss_fn, task, train_t, out_shape)
        total, n = 0.0, 0
        with torch.no_grad():
            for chunk in torch.split(val_t, 256):
                out = const.expand(len(chunk), *out_shape)
                y = chunk if task != "regression" else chunk.float()
                total += float(loss_fn(out.to(_device(loss_fn)), y.to(_device(loss_fn)))) * len(
                    chunk
                )
                n += len(chunk)
        return total / n
    except Exception:  # a loss that wants something the ladder cannot build: no baseline
        return math.nan


def _device(loss_fn) -> torch.device:
    for t in list(loss_fn.parameters()) + list(loss_fn.buffers()):
        return t.device
    return torch.device("cpu")


def _blind_output(loss_fn, task: str, train_t, out_shape) -> torch.Tensor:
    from torch import nn

    if task != "regression" and isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        c = out_shape[0]
        t = train_t.reshape(-1).long()
        t = t[(t >= 0) & (t < c)]
        prior = (torch.bincount(t, minlength=c).double() + 0.5) / (len(t) + 0.5 * c)
        logp = prior.log().float()
        return logp.reshape(c, *([1] * (len(out_shape) - 1))).expand(*out_shape).contiguous()
    y = train_t.float()
    if y[0].numel() == math.prod(out_shape):
        y = y.reshape(len(y), *out_shape)
        if isinstance(loss_fn, (nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)):
            return y.median(0).values
        mean = y.mean(0)
        if isinstance(loss_fn, nn.BCEWithLogitsLoss):
            return torch.logit(mean.clamp(1e-6, 1 - 1e-6))
        if isinstance(loss_fn, (nn.MSELoss, nn.BCELoss)):
            return mean
    # any other loss: fit the constant with L-BFGS on a sample of the train targets
    sub = train_t[:1024]
    c = torch.zeros(out_shape, requires_grad=True)
    opt = torch.optim.LBFGS([c], max_iter=60, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(c.expand(len(sub), *out_shape), sub)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return c.detach()


def _output_shape(model, ctx: RunContext) -> tuple | None:
    """One sample's output shape (the baseline's constant has it)."""
    x, _ = fixed_batch(ctx, 1)
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(x)
        model.train(was)
    return tuple(out.shape[1:]) if out.ndim >= 1 else None
