"""The LR range test: an exponential learning-rate sweep over a short budget, and a
suggestion that noise does not fool.

A fresh model trains ``steps`` steps with the learning rate growing exponentially from
``min_lr`` to ``max_lr`` (a ``LambdaLR`` on the preset's optimizer), every batch logged with its
learning rate (steps.bin's ``lr`` column: the app draws loss against it). The sweep stops once
the smoothed loss exceeds ``diverge`` times its best so far (or turns non-finite).

The suggestion — Lightning's finder takes the steepest point of the raw curve, and noise and
spikes fool it (Lightning issues #1767, #14248, #21141) — is made on a curve that is

1. cut at divergence (nothing after the loss blew up counts),
2. smoothed without lag: a running median (kills single-batch spikes), then a centred local
   linear fit in log-lr (an EMA would shift the curve towards higher learning rates),
3. searched for the *stable descent*: from the last point still near the starting plateau
   down to the smoothed minimum. The suggestion is ``min_gap`` (2×) below the minimum's
   learning rate — at the minimum the loss is about to turn — but never below the descent's
   steepest point (reported too): on a curve that escapes a plateau, as cross-entropy at
   ln C does, the steepest point is the escape, well below the rate that trains best.
4. averaged over ``repeats`` sweeps from different seeds before any of this: a single sweep's
   plateau escape is itself noisy.
"""

from __future__ import annotations

import math
import statistics

import torch

from engine.context import RunContext
from engine.loop import Row, train_loop
from engine.stages.base import Check, Stage, Verdict, fmt


def sweep_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """The learning rate of each step of the sweep (exponential, both ends included)."""
    if steps < 2:
        return [min_lr]
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def _median_filter(ys: list[float], half: int) -> list[float]:
    n = len(ys)
    return [statistics.median(ys[max(0, i - half) : min(n, i + half + 1)]) for i in range(n)]


def _local_fit(xs: list[float], ys: list[float], half: int) -> tuple[list[float], list[float]]:
    """Centred least-squares line over a window around each point: (value, slope) per point."""
    n = len(xs)
    values, slopes = [], []
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        wx, wy = xs[lo:hi], ys[lo:hi]
        mx, my = sum(wx) / len(wx), sum(wy) / len(wy)
        sxx = sum((x - mx) ** 2 for x in wx)
        b = sum((x - mx) * (y - my) for x, y in zip(wx, wy)) / sxx if sxx > 0 else 0.0
        values.append(my + b * (xs[i] - mx))
        slopes.append(b)
    return values, slopes


def suggest(
    lrs: list[float], losses: list[float], diverge: float = 4.0, min_gap: float = 2.0
) -> dict:
    """The suggestion from a sweep's (lr, loss) points; see the module doc for the method.

    Returns ``lr`` (the suggestion, nan when there is none), ``lr_steepest``, ``lr_min_loss``,
    ``loss_min`` (smoothed), ``lr_diverged`` (nan when it never diverged), ``descent_decades``
    (how many decades of learning rate the stable descent spans), ``smoothed`` (the curve) and
    ``problem`` (a sentence when the curve does not allow a suggestion)."""
    points = []
    for lr, loss in zip(lrs, losses):
        if not (math.isfinite(loss) and lr > 0):
            break
        points.append((lr, loss))
    out = {
        "lr": math.nan,
        "lr_steepest": math.nan,
        "lr_min_loss": math.nan,
        "loss_min": math.nan,
        "lr_diverged": lrs[len(points)] if len(points) < len(lrs) else math.nan,
        "descent_decades": 0.0,
        "smoothed": [],
        "problem": "",
    }
    if len(points) < 8:
        out["problem"] = (
            f"only {len(points)} finite losses before the sweep diverged: lower lr_find.min_lr"
        )
        return out
    xs = [math.log10(lr) for lr, _ in points]
    ys = [loss for _, loss in points]
    n = len(xs)
    half = max(2, n // 20)
    values, slopes = _local_fit(xs, _median_filter(ys, half), max(3, n // 12))
    cut = n
    best, at_best = values[0], 0
    for i, v in enumerate(values):
        fell = values[0] - best > 0.05 * abs(values[0])
        if i >= 5 and (v > diverge * best or (fell and i > at_best and v >= values[0])):
            cut = i  # blew up, or climbed back to where it started: nothing after counts
            out["lr_diverged"] = points[i][0]
            break
        if v < best:
            best, at_best = v, i
    values, slopes = values[:cut], slopes[:cut]
    out["smoothed"] = values
    m = min(range(len(values)), key=values.__getitem__)
    out["lr_min_loss"], out["loss_min"] = points[m][0], values[m]
    plateau = statistics.median(values[: max(3, n // 10)])
    drop = plateau - values[m]
    if m < 3 or drop <= 0.05 * abs(plateau):
        out["problem"] = (
            f"the loss did not fall over {fmt(points[0][0])}..{fmt(points[cut - 1][0])} "
            "(smoothed, by less than 5%): check the init stage's gradient check, or widen "
            "lr_find.min_lr / max_lr"
        )
        return out
    # the descent: from the last point still near the starting plateau down to the minimum
    start = max(i for i in range(m + 1) if values[i] >= plateau - 0.1 * drop)
    steep = min(range(start, m + 1), key=slopes.__getitem__)
    out["lr_steepest"] = points[steep][0]
    out["descent_decades"] = xs[m] - xs[start]
    out["lr"] = max(points[steep][0], points[m][0] / min_gap)
    return out


def average(curves: list[list[float]]) -> list[float]:
    """The sweeps' losses averaged step by step, up to the shortest sweep (a sweep stops where
    its loss blew up: the others' later points would hide that)."""
    n = min((len(c) for c in curves), default=0)
    return [sum(c[i] for c in curves) / len(curves) for i in range(n)]


class LrFindStage(Stage):
    name = "lr_find"

    def sweep(self, ctx: RunContext, lrs: list[float], seconds: float | None, start: int):
        """One exponential sweep of a fresh model, stopped early when its loss blows up."""
        s = self.settings
        model = ctx.build_model()
        optimizer = ctx.build_optimizer(model, lr=s.min_lr)
        for group in optimizer.param_groups:  # LambdaLR scales each group's initial lr
            group["lr"] = s.min_lr
        steps = len(lrs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: lrs[min(i, steps - 1)] / s.min_lr
        )
        ema = {"v": 0.0, "n": 0, "best": math.inf}

        def diverged(row: Row) -> bool:  # early stop: the debiased EMA ran far above its best
            ema["n"] += 1
            ema["v"] = 0.9 * ema["v"] + 0.1 * row.train_loss
            v = ema["v"] / (1 - 0.9 ** ema["n"])
            ema["best"] = min(ema["best"], v)
            return ema["n"] > 10 and v > s.diverge * ema["best"]

        return train_loop(
            ctx,
            model,
            optimizer,
            ctx.train_batches(),
            steps=steps,
            seconds=seconds,
            scheduler=scheduler,
            start_step=start,
            until=diverged,
        )

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        if not 0 < s.min_lr < s.max_lr:
            return Verdict(
                "fail",
                f"lr_find needs 0 < min_lr < max_lr, got min_lr {s.min_lr:g} and max_lr "
                f"{s.max_lr:g}; e.g. --set lr_find.min_lr=1e-6 --set lr_find.max_lr=1",
            )
        steps = max(s.steps, 10)
        lrs = sweep_lrs(s.min_lr, s.max_lr, steps)
        preset_lr = ctx.build_optimizer(ctx.build_model()).param_groups[0]["lr"]
        repeats = max(1, s.repeats)
        curves: list[list[float]] = []
        seconds = 0.0
        step = 0
        seed = ctx.seed
        stops: list[str] = []
        try:
            for k in range(repeats):
                ctx.seed = seed + k  # a fresh init and data order per sweep (restored below)
                budget = s.seconds / repeats if s.seconds else None
                result = self.sweep(ctx, lrs, budget, step)
                curves.append(result.train_losses)
                stops.append(result.stopped)
                seconds += result.seconds
                step = result.rows[-1].step if result.rows else step
        finally:
            ctx.seed = seed
        mean_curve = average(curves)
        shortest = min(range(repeats), key=lambda k: len(curves[k]))
        if stops[shortest] in ("target", "nonfinite") and len(mean_curve) < len(lrs):
            mean_curve = [*mean_curve, math.inf]  # that sweep stopped where its loss blew up
        swept = lrs[: len(mean_curve)]
        found = suggest(swept, mean_curve, s.diverge, s.min_gap)
        metrics = {
            "lr_suggested": found["lr"],
            "lr_steepest": found["lr_steepest"],
            "lr_min_loss": found["lr_min_loss"],
            "loss_min": found["loss_min"],
            "lr_diverged": found["lr_diverged"],
            "descent_decades": found["descent_decades"],
            "lr_preset": preset_lr,
            "lr_low": s.min_lr,
            "lr_high": swept[-1] if swept else s.min_lr,
            "steps": sum(len(c) for c in curves),
            "repeats": repeats,
            "seconds": seconds,
        }
        span = f"{repeats}×{len(mean_curve)} steps, lr {s.min_lr:.0e} → {metrics['lr_high']:.1e}"
        if "seconds" in stops:
            found["problem"] = (
                f"the sweep ran out of its {s.seconds:g} s budget at lr {swept[-1]:.1e}: raise "
                f"lr_find.seconds (or lower lr_find.steps / lr_find.repeats) — "
            ) + (found["problem"] or "a suggestion from a cut sweep would be too low")
        if found["problem"]:
            check = Check("suggestion", "warn", found["problem"] + f" ({span})")
            return Verdict("warn", check.detail, [check], metrics)
        lr = float(f"{found['lr']:.2g}")
        metrics["lr_suggested"] = lr
        checks = [
            Check(
                "sweep",
                "pass",
                f"{span}: smoothed loss min {fmt(found['loss_min'])} at lr "
                f"{found['lr_min_loss']:.1e}"
                + (
                    f", diverged at {found['lr_diverged']:.1e}"
                    if math.isfinite(found["lr_diverged"])
                    else ", never diverged"
                ),
            )
        ]
        status = "pass"
        if not math.isfinite(found["lr_diverged"]) and found["lr_min_loss"] >= 0.5 * swept[-1]:
            status = "warn"
            checks.append(
                Check(
                    "range",
                    "warn",
                    f"the loss still fell at the sweep's end ({metrics['lr_high']:.1e}): the best "
                    "rate may be higher; raise lr_find.max_lr or lr_find.steps",
                )
            )
        factor = lr / preset_lr if preset_lr else math.nan
        compare = (
            f"{factor:.2g}× the preset's {preset_lr:g}"
            if math.isfinite(factor) and (factor >= 1.5 or factor <= 1 / 1.5)
            else f"close to the preset's {preset_lr:g}"
        )
        reason = (
            f"suggested learning rate {lr:g} ({s.min_gap:g}× below the smoothed loss's minimum "
            f"at {found['lr_min_loss']:.1e}, steepest descent at {found['lr_steepest']:.1e}"
            + (
                f", divergence at {found['lr_diverged']:.1e}"
                if math.isfinite(found["lr_diverged"])
                else ""
            )
            + f"), {compare}: --set optimizer.lr={lr:g}"
        )
        checks.append(Check("suggestion", status, reason))
        if status == "warn":
            reason = checks[1].detail + f"; so far: --set optimizer.lr={lr:g}"
        return Verdict(status, reason, checks, metrics)
