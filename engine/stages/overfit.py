"""Overfit one sample, then a handful: with regularizers off, the loss must reach its floor.

Deterministic: the same samples (a seeded choice), the same batch every step, a fresh model
initialised from the preset's seed. Progress is measured towards the loss's floor
(``engine/diagnosis/floors.py``), never as a fraction of a start that may be negative. The
verdict says what the curve shows: still falling when the budget ran out is a warning with the
steps it would need; a plateau at a recognisable floor names the floor and its usual cause;
divergence and oscillation name the step and the learning rate. The step budget is the budget:
``seconds`` only guards against hangs, and a stage it ends says so and warns.

overfit_one also runs two short runs with the same seed: they must give the same losses.
"""

from __future__ import annotations

import math

import torch

from engine.context import RunContext
from engine.diagnosis.floors import (
    Floor,
    below_natural,
    constrained_floors,
    input_blind_floor,
    natural_floor,
    recognise,
)
from engine.diagnosis.updates import UpdateMonitor, UpdateReport, lr_diagnosis, stalled_diagnosis
from engine.loop import Row, train_loop, train_mode
from engine.stages.base import Check, Stage, Verdict, fmt
from engine.stages.common import (
    CurveShape,
    curve_shape,
    fixed_batch,
    nonfinite_reason,
    repeat,
    switch_off_regularizers,
)

UPDATE_STEPS = 5  # optimizer steps whose update/weight ratios are recorded
REPRO_STEPS = 3  # steps of each of the two same-seed runs


class OverfitStage(Stage):
    val_every = 5  # a random val batch every few steps: it should rise here, and that's fine
    seed_check = False

    def run(self, ctx: RunContext) -> Verdict:
        if ctx.custom is not None:  # the step's main loss must reach its floor
            from engine.stages import custom

            return custom.overfit_stage(self, ctx)
        s = self.settings
        n = min(s.samples, len(ctx.data.train))
        what = "one sample" if n == 1 else f"{n} samples"
        model = ctx.build_model()
        switched = switch_off_regularizers(ctx, model)
        optimizer = ctx.build_optimizer(model, lr=s.lr, no_weight_decay=True)
        lr = optimizer.param_groups[0]["lr"]
        batch = fixed_batch(ctx, n)
        x, y = batch
        checks = []
        if switched:
            checks.append(
                Check("regularizers_off", "pass", f"for this stage: {switched}, weight decay 0")
            )
        if not any(p.requires_grad for p in model.parameters()):
            reason = (
                f"every parameter of the model is frozen (requires_grad=False): nothing can learn "
                f"{what} — unfreeze the layers you mean to train"
            )
            checks.append(Check("loss_reaches_zero", "fail", reason))
            return Verdict("fail", reason, checks, {"samples": n})
        out0 = outputs(model, x)
        floor = s.floor if s.floor is not None else natural_floor(ctx.loss_fn, out0, y)
        monitor = UpdateMonitor(model, optimizer, steps=UPDATE_STEPS)
        first: list[float] = []
        under: list[bool] = []

        def reached(row: Row) -> bool:
            if not first:
                first.append(row.train_loss)
            f = floor if floor is not None else 0.0
            if floor is not None and row.train_loss < f - 1e-3 - 1e-3 * abs(f):
                under.append(True)  # below the lowest value the loss can take: stop, say why
                return True
            gap0 = first[0] - f
            return gap0 > 0 and (row.train_loss - f <= s.reach * gap0 or row.train_loss - f < 1e-5)

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
        report = monitor.report()
        start = first[0] if first else math.nan
        losses = [v for v in result.train_losses if math.isfinite(v)]
        last = result.train_losses[-1] if result.rows else math.nan
        metrics = {
            "loss_first": start,
            "loss_last": last,
            "loss_min": min(losses, default=math.nan),
            "loss_floor": floor if floor is not None else math.nan,
            "steps": result.steps,
            "seconds": result.seconds,
            "samples": n,
            **report.to_metrics(),
        }
        checks.append(Check("update_sizes", "pass", report.summary()))
        if result.stopped == "nonfinite":
            reason = nonfinite_reason(result, lr)
            why = lr_diagnosis(report, lr)
            if why:
                reason += f" — {why}"
            checks.append(Check("loss_reaches_zero", "fail", reason))
            return Verdict("fail", reason, checks, metrics)
        out1 = outputs(model, x)
        floors = constrained_floors(ctx.loss_fn, out0, out1, y, floor)
        below = below_natural(ctx.loss_fn, min(losses, default=math.nan), floor, floors)
        if under or below:
            reason = below or f"the loss went below its floor {fmt(floor)}"
            checks.append(Check("loss_reaches_zero", "fail", reason))
            return Verdict("fail", reason, checks, metrics)
        if floor is None and not (start > 0):
            reason = (
                f"the loss starts at {fmt(start)} and the ladder does not know the floor of "
                f"{type(ctx.loss_fn).__name__}: set {self.name}.floor to its lowest possible value"
            )
            checks.append(Check("loss_reaches_zero", "warn", reason))
            return Verdict("warn", reason, checks, metrics)
        f = floor if floor is not None else 0.0
        target = f + s.reach * (start - f)
        shape = curve_shape(result.rows, f, target, reached=result.stopped == "target")
        status, reason = self.verdict(ctx, model, batch, what, shape, result, report, floors, lr)
        checks.append(Check("loss_reaches_zero", status, reason))
        if self.seed_check and status != "fail":
            repro = self.reproducibility(ctx, n)
            checks.append(repro)
            if repro.status == "warn" and status == "pass":
                return Verdict("warn", repro.detail, checks, metrics)
        return Verdict(status, reason, checks, metrics)

    # ---- the verdict, from the curve's evidence ------------------------------------
    def verdict(
        self,
        ctx: RunContext,
        model: torch.nn.Module,
        batch: tuple,
        what: str,
        shape: CurveShape,
        result,
        report: UpdateReport,
        floors: list[Floor],
        lr: float,
    ) -> tuple[str, str]:
        s = self.settings
        to_floor = _to_floor(shape)
        if shape.kind == "reached":
            last = result.train_losses[-1]
            return "pass", (
                f"memorised {what}: train loss {fmt(shape.start)} → {fmt(last)} "
                f"({_to_floor(shape, last)}) in {result.steps} steps, {result.seconds:.1f} s"
            )
        curve = shape.curve()
        if shape.kind == "diverged":
            why = lr_diagnosis(report, lr)
            return "fail", (
                f"diverged on {what}: train loss {curve}, above its start by half again from step "
                f"{shape.since}; lower the learning rate (now {lr:g})"
                + (f" — {why}" if why else "")
                + _lr_find_hint(ctx)
            )
        if shape.kind == "oscillating":
            return "fail", (
                f"the loss oscillates on {what}: {shape.rises} jumps back up by more than a tenth "
                f"of its way down since step {shape.since} ({curve}): the learning rate {lr:g} is "
                f"too high for this model — lower it 3–10×{_lr_find_hint(ctx)}"
            )
        if result.stopped == "seconds":
            return "warn", (
                f"the wall-time guard ({s.seconds:g} s) ended the stage after {result.steps} of "
                f"{s.steps} steps — the machine is slow or busy, which says nothing against the "
                f"model: train loss {curve} ({to_floor}); raise {self.name}.seconds or free the machine"
            )
        if shape.kind in ("falling", "short"):
            more = shape.more_steps
            need = (
                f"; at its current rate it needs about {_round_steps(more)} more steps to reach "
                f"{100 * s.reach:g}% — raise {self.name}.steps to {_round_steps(result.steps + more)}"
                if math.isfinite(more) and more > 0
                else f"; raise {self.name}.steps"
            )
            slow = (
                f" or the learning rate (now {lr:g})"
                if math.isfinite(more) and more > 10 * max(result.steps, 1)
                else ""
            )
            return "warn", (
                f"the step budget ran out while the loss was still falling on {what}: "
                f"{curve}, {to_floor} after {result.steps} steps{need}{slow}"
            )
        # flat or barely moving: evidence first — weights that do not move, a wrecking
        # learning rate, a recognisable floor, an output that ignores the input
        stalled = (
            stalled_diagnosis(report, lr, ctx.preset.get("grad_clip"))
            if shape.kind == "barely"
            else None
        )
        if stalled:
            return (
                "fail",
                f"the loss barely moved on {what}: {curve} in {result.steps} steps; {stalled}"
                + (
                    _lr_find_hint(ctx) if "far too low" in stalled or "rate is 0" in stalled else ""
                ),
            )
        why = lr_diagnosis(report, lr)
        if why:
            return "fail", f"plateaued on {what} ({curve}): {why}{_lr_find_hint(ctx)}"
        named = recognise(shape.end, shape.start, shape.floor, floors)
        if named:
            return "fail", (
                f"plateaued on {what} at {fmt(shape.end)}, the floor {named.name}: {named.cause}"
            )
        special = self.plateau_cause(ctx, model, batch, what, shape)
        if special:
            return "fail", special
        if shape.kind == "barely":
            return "fail", (
                f"the loss barely moved on {what}: {curve} in {result.steps} steps; raise the "
                f"learning rate (now {lr:g}) or check that gradients reach the weights (init "
                f"stage) — {report.summary()}{_lr_find_hint(ctx)}"
            )
        return "fail", (
            f"plateaued on {what}: train loss {curve}, flat over the last steps at {to_floor}: the "
            f"model cannot memorise {what} — more capacity, or another learning rate (now {lr:g}; "
            f"{report.summary()}){_lr_find_hint(ctx)}"
        )

    def plateau_cause(self, ctx, model, batch, what, shape) -> str | None:
        return None

    # ---- two short runs with the same seed -----------------------------------------
    def reproducibility(self, ctx: RunContext, n: int) -> Check:
        if ctx.preset.get("compile"):
            return Check("reproducible", "skip", "skipped under torch.compile (two more compiles)")
        runs = [self._short_run(ctx, n) for _ in range(2)]
        a, b = runs
        if len(a) < 2 or len(b) < 2:
            return Check("reproducible", "skip", "too few finite steps to compare")
        for i, (u, v) in enumerate(zip(a, b)):
            if not _close(u, v):
                part = self._nondeterministic_part(ctx, n)
                return Check(
                    "reproducible",
                    "warn",
                    f"two runs with seed {ctx.seed} differ: train loss {u:.7g} vs {v:.7g} at step "
                    f"{i + 1} — {part}",
                )
        return Check(
            "reproducible",
            "pass",
            f"two runs with seed {ctx.seed} give the same first {len(a)} losses",
        )

    def _short_run(self, ctx: RunContext, n: int) -> list[float]:
        model = ctx.build_model()
        switch_off_regularizers(ctx, model)
        optimizer = ctx.build_optimizer(model, lr=self.settings.lr, no_weight_decay=True)
        batch = fixed_batch(ctx, n)
        result = train_loop(ctx, model, optimizer, repeat(batch), steps=REPRO_STEPS, log=False)
        return [v for v in result.train_losses if math.isfinite(v)]

    def _nondeterministic_part(self, ctx: RunContext, n: int) -> str:
        m1, m2 = ctx.build_model(), ctx.build_model()
        if not all(
            torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values())
        ):
            return (
                "the model's initialisation: two builds with the same seed give different weights "
                "(its constructor draws from a generator torch.manual_seed does not seed — "
                "numpy.random, a seed of its own, the clock)"
            )
        b1, b2 = fixed_batch(ctx, n), fixed_batch(ctx, n)
        if not all(torch.equal(u, v) for u, v in zip(b1, b2) if isinstance(u, torch.Tensor)):
            return (
                "the data: reading the same train samples twice gives different inputs (an "
                "augmentation driven by numpy.random or another unseeded generator)"
            )
        for m in (m1, m2):
            switch_off_regularizers(ctx, m)
        x, y = b1
        outs, grads = [], []
        for m in (m1, m2):
            ctx.seed_everything()
            train_mode(m)
            loss = ctx.loss_fn(m(x), y)
            outs.append(loss.detach())
            loss.backward()
            grads.append([p.grad.detach().clone() for p in m.parameters() if p.grad is not None])
        if not _close(float(outs[0]), float(outs[1])):
            return (
                "the forward pass: with dropout off and the same seed it gives different outputs "
                "(random ops drawing from numpy.random or an unseeded generator)"
            )
        if not all(torch.allclose(g, h, rtol=1e-5, atol=1e-8) for g, h in zip(*grads)):
            return (
                "the backward pass: the same loss gives different gradients — nondeterministic "
                "kernels (on CUDA: scatter_add, index_add, embedding backward; "
                "torch.use_deterministic_algorithms(True) names them)"
            )
        return (
            "the optimizer step or the loss: weights, data, outputs and gradients agree, yet the "
            "runs drift apart after the first step"
        )


class OverfitOneStage(OverfitStage):
    name = "overfit_one"
    seed_check = True


class OverfitFewStage(OverfitStage):
    name = "overfit_few"

    def plateau_cause(self, ctx, model, batch, what, shape) -> str | None:
        x, y = batch
        spread = output_spread(model, x)
        blind = input_blind_floor(ctx.loss_fn, outputs(model, x), y)
        at_blind = blind is not None and abs(shape.end - blind) <= max(
            0.05 * abs(shape.start - shape.floor), 1e-3
        )
        if spread < 1e-3 or at_blind:
            one = ctx.verdicts.get("overfit_one")
            also = (
                " (overfit_one passed: one sample can be fit by a constant)"
                if one is not None and one.status == "pass"
                else ""
            )
            ev = f"output spread across samples {spread:.1e}" + (
                f", loss {fmt(shape.end)} = {fmt(blind)}, the best any input-blind output gets"
                if at_blind
                else ""
            )
            return (
                f"the output does not depend on the input: all {len(x)} samples get the same "
                f"prediction ({ev}), so only their average can be fit{also} — {shape.curve()}; "
                + _blind_cause(ctx, x)
            )
        return None


def _blind_cause(ctx, x) -> str:
    """Where to look when the outputs ignore the inputs: tiny inputs (a scale applied twice)
    look alike to the first layer; else the input is lost in forward."""
    from engine.diagnosis.datastats import tiny
    from engine.torchfree.ladder import stage_settings

    if isinstance(x, torch.Tensor) and x.ndim >= 2:
        spread = tiny(x, stage_settings("init", ctx.preset.stage_values("init")))
        if spread is not None:
            return (
                f"the inputs are tiny (spread {fmt(spread)}), so every sample looks alike next "
                "to the first layer's bias — normalise them to mean 0, spread 1"
            )
    return "look for an input that is dropped, zeroed or detached in forward"


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs on ``x`` in training mode (regularizers are off), without a graph."""
    with torch.no_grad():
        train_mode(model)
        return model(x).detach().float()


@torch.no_grad()
def output_spread(model: torch.nn.Module, x: torch.Tensor) -> float:
    """How much the model's outputs differ across samples, relative to their size."""
    was = model.training
    model.eval()
    out = model(x).float().reshape(len(x), -1)
    model.train(was)
    scale = out.abs().mean().clamp(min=1e-8)
    return float((out - out.mean(0, keepdim=True)).abs().mean() / scale)


def _to_floor(shape: CurveShape, value: float | None = None) -> str:
    gap = (shape.end if value is None else value) - shape.floor
    gap0 = shape.start - shape.floor
    share = 100 * gap / gap0 if gap0 > 0 else math.nan
    if shape.floor == 0:
        return f"{share:.1f}% of its start"
    return f"{share:.1f}% of its start's distance above its floor {fmt(shape.floor)}"


def _round_steps(x: float) -> str:
    if not math.isfinite(x):
        return "∞"
    x = max(1, math.ceil(x))
    if x < 100:
        return str(x)
    mag = 10 ** (len(str(x)) - 2)
    return f"{int(math.ceil(x / mag) * mag):,}"


def _close(u: float, v: float) -> bool:
    return abs(u - v) <= 1e-5 * max(abs(u), abs(v)) + 1e-7


def _lr_find_hint(ctx: RunContext) -> str:
    """Where a verdict blames the learning rate: the stage that measures a good one."""
    preset = ctx.request.get("preset_path") or str(ctx.preset.path)
    return (
        f"; `cockpit run {preset} --stages lr_find` measures one (an LR range test that prints "
        "--set optimizer.lr=... ready to paste)"
    )
