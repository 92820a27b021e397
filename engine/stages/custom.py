"""The ladder's stages as they apply to a custom training step (``engine/custom_step.py``):
init's checks that can, overfit and generalize on the step's main loss, full-val evaluation
through the step. Checks that need (input, target) pairs and the preset's loss skip, with the
reason (``skip_reason``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine.context import RunContext
from engine.custom_step import _same, collate_any, fixed_batch_any, structure, tensors
from engine.data import move
from engine.loop import TrainStep, train_loop, train_mode
from engine.stages.base import Check, Verdict, fmt, from_checks
from engine.stages.common import (
    curve_shape,
    head_mean,
    nonfinite_reason,
    repeat,
    switch_off_regularizers,
    tail_mean,
    tricks_check,
)


def skip_reason(ctx: RunContext) -> str:
    what = ctx.custom.describe() if ctx.custom is not None else ""
    return f"a custom training step ({what})"


def init_stage(ctx: RunContext, settings: Any) -> Any:
    """init's checks that apply to a custom step: the batch's structure, finite and varying
    tensors, val read twice, parameters per model, tricks, frozen layers, the loss at init and
    parameters that one training step leaves without a gradient."""

    checks: list[Check] = []
    metrics: dict[str, float] = {"train_size": len(ctx.data.train), "val_size": len(ctx.data.val)}
    n = min(len(ctx.data.train), max(2, min(settings.samples, 64)))
    batch = move(collate_any(ctx.data.train, list(range(n))), ctx.device)
    checks.append(Check("batch_format", "pass", f"a batch is a {structure(batch)}"))
    bad = [t for t in tensors(batch) if t.is_floating_point() and not torch.isfinite(t).all()]
    checks.append(
        Check(
            "finite_inputs",
            "fail",
            f"{len(bad)} tensor(s) of the batch hold NaN or inf: clean the data",
        )
        if bad
        else Check("finite_inputs", "pass", f"no NaN or inf in {n} samples")
    )
    firsts = [t for t in tensors(batch) if t.is_floating_point() and len(t) > 1]
    if firsts and all(bool((t == t[:1]).all()) for t in firsts):
        checks.append(
            Check(
                "inputs_vary",
                "fail",
                f"all {n} samples are identical: the dataset returns the same sample for every "
                "index (an index ignored in __getitem__?)",
            )
        )
    worst, where = 0.0, None
    for i in range(min(8, len(ctx.data.val))):
        d = _same(ctx.data.val[i], ctx.data.val[i])
        if d > worst:
            worst, where = d, i
    checks.append(
        Check(
            "val_deterministic",
            "fail",
            f"val sample {where} differs between two reads (max difference {fmt(worst)}): the "
            "val set is augmented — never augment val",
        )
        if worst > 0
        else Check("val_deterministic", "pass", "val samples read twice are identical")
    )
    model = ctx.build_model()
    parts = (
        [(name, m) for name, m in model.items()]
        if isinstance(model, nn.ModuleDict)
        else [("", model)]
    )
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in parts}
    params = sum(sizes.values())
    metrics["params"] = params
    shown = ", ".join(f"{name} {_human(k)}" if name else _human(k) for name, k in sizes.items())
    checks.append(
        Check(
            "parameters",
            "warn" if params > settings.max_params else "pass",
            f"{shown} parameters"
            + (
                f": start with under {_human(settings.max_params)}"
                if params > settings.max_params
                else ""
            ),
        )
    )
    optimizer = ctx.build_optimizer(model)
    checks.append(tricks_check(model, optimizer, ctx.preset.get("scheduler._target_")))
    step = TrainStep(model, optimizer, ctx.loss_fn, device=ctx.device, custom=ctx.custom)
    val_batch = move(collate_any(ctx.data.val, list(range(min(len(ctx.data.val), n)))), ctx.device)
    loss = float(step.val_loss(val_batch))
    metrics["loss_at_init"] = loss
    checks.append(
        Check(
            "loss_at_init", "pass", f"loss at init {fmt(loss)} (a custom step: no expected value)"
        )
        if math.isfinite(loss)
        else Check(
            "loss_at_init",
            "fail",
            f"the loss at init is {fmt(loss)}: the first outputs are not finite",
        )
    )
    train_mode(model)
    step(batch)
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(torch.isfinite(p.grad).all()))
    ]
    if missing:
        layers = sorted({m.rsplit(".", 1)[0] if "." in m else m for m in missing})
        checks.append(
            Check(
                "gradients",
                "fail",
                f"one training step left {len(missing)} parameter(s) without a finite gradient "
                f"({', '.join(layers[:4])}{'…' if len(layers) > 4 else ''}): a model the step "
                "never trains, or a graph detached between it and its loss",
            )
        )
    else:
        checks.append(Check("gradients", "pass", "one training step reaches every parameter"))
    checks.append(
        Check(
            "pairs_and_loss",
            "skip",
            f"{skip_reason(ctx)}: target ranges, class balance, train/val overlap and the expected "
            "loss at init need (input, target) pairs and the preset's loss",
        )
    )
    return from_checks(
        checks,
        metrics,
        f"{shown} parameters · a batch is a {structure(batch)} · loss at init {fmt(loss)}",
    )


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def overfit_stage(stage: Any, ctx: RunContext) -> Any:
    """Overfit one sample (or a few) through the custom step: its main loss must reach the
    floor (``floor``, default 0) within the budget."""

    s = stage.settings
    n = min(s.samples, len(ctx.data.train))
    what = "one sample" if n == 1 else f"{n} samples"
    model = ctx.build_model()
    switched = switch_off_regularizers(ctx, model)
    optimizer = ctx.build_optimizer(model, lr=s.lr, no_weight_decay=True)
    lr = optimizer.param_groups[0]["lr"]
    batch = fixed_batch_any(ctx, n)
    floor = s.floor if s.floor is not None else 0.0
    checks = (
        [Check("regularizers_off", "pass", f"for this stage: {switched}, weight decay 0")]
        if switched
        else []
    )
    first: list[float] = []

    def reached(row) -> bool:
        if not first:
            first.append(row.train_loss)
        gap0 = first[0] - floor
        return gap0 > 0 and row.train_loss - floor <= s.reach * gap0

    result = train_loop(
        ctx, model, optimizer, repeat(batch), steps=s.steps, seconds=s.seconds, until=reached
    )
    start = first[0] if first else math.nan
    last = result.train_losses[-1] if result.rows else math.nan
    metrics = {
        "loss_first": start,
        "loss_last": last,
        "loss_floor": floor,
        "steps": result.steps,
        "seconds": result.seconds,
        "samples": n,
    }
    if result.stopped == "nonfinite":
        reason = (
            nonfinite_reason(result, lr)
            if result.nonfinite_what in ("train", "val")
            else (
                f"the step's loss '{result.nonfinite_what}' became non-finite at step "
                f"{result.nonfinite_step}: lower the learning rate (now {lr:g}) or clip gradients"
            )
        )
        checks.append(Check("loss_reaches_zero", "fail", reason))
        return Verdict("fail", reason, checks, metrics)
    if not start > floor:
        reason = (
            f"the step's loss starts at {fmt(start)}, not above its floor {fmt(floor)}: set "
            f"{stage.name}.floor to the lowest value the loss can take"
        )
        checks.append(Check("loss_reaches_zero", "warn", reason))
        return Verdict("warn", reason, checks, metrics)
    shape = curve_shape(
        result.rows, floor, floor + s.reach * (start - floor), reached=result.stopped == "target"
    )
    if shape.kind == "reached":
        status, reason = (
            "pass",
            (
                f"memorised {what} through the custom step: loss {fmt(start)} → {fmt(last)} in "
                f"{result.steps} steps, {result.seconds:.1f} s"
            ),
        )
    elif shape.kind == "diverged":
        status, reason = (
            "fail",
            (f"diverged on {what}: loss {shape.curve()}; lower the learning rate (now {lr:g})"),
        )
    elif shape.kind in ("falling", "short") or result.stopped == "seconds":
        status, reason = (
            "warn",
            (
                f"the budget ran out while the loss was still falling on {what}: {shape.curve()} "
                f"after {result.steps} steps; raise {stage.name}.steps"
            ),
        )
    else:
        status, reason = (
            "fail",
            (
                f"the custom step's loss did not reach its floor {fmt(floor)} on {what}: "
                f"{shape.curve()} in {result.steps} steps — check that the step trains every model "
                f"it should, or change the learning rate (now {lr:g})"
            ),
        )
    checks.append(Check("loss_reaches_zero", status, reason))
    return Verdict(status, reason, checks, metrics)


def evaluate(
    ctx: RunContext,
    model: nn.Module,
    loader: Any,
    custom: Any = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """The mean main loss over the val loader through the custom step (and its spread)."""

    custom = custom if custom is not None else ctx.custom
    step = TrainStep(model, None, ctx.loss_fn, device=ctx.device, custom=custom)
    was = model.training
    losses, sizes = [], []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = move(batch, ctx.device)
        losses.append(step.val_loss(batch).double())
        t = tensors(batch)
        sizes.append(len(t[0]) if t and t[0].ndim else 1)
    if was:
        train_mode(model)
    else:
        model.eval()
    if not losses:
        return {"val_loss": math.nan}
    stacked = torch.stack(losses).cpu()
    w = torch.tensor(sizes, dtype=torch.float64)
    out = {"val_loss": float((stacked * w).sum() / w.sum())}
    if len(losses) > 1:
        out["val_loss_se"] = float(stacked.std() / math.sqrt(len(losses)))
    return out


def generalize_stage(stage: Any, ctx: RunContext) -> Any:
    """Full data through the custom step: the full-val loss must fall by more than its noise
    (there is no input-blind baseline to beat: the step's loss is its own)."""

    s = stage.settings
    model = ctx.build_model()
    optimizer = ctx.build_optimizer(model)
    scheduler = ctx.build_scheduler(optimizer)
    lr = optimizer.param_groups[0]["lr"]
    val_loader = ctx.val_loader()
    evals: list[tuple[int, dict]] = []

    def run_eval(step: int) -> None:
        m = evaluate(ctx, model, val_loader)
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
    skip = Check(
        "beats_baseline", "skip", f"{skip_reason(ctx)}: no input-blind baseline for its loss"
    )
    if result.stopped == "nonfinite":
        reason = nonfinite_reason(result, lr)
        return Verdict(
            "fail", reason, [Check("val_loss_falls", "fail", reason), skip], {"steps": result.steps}
        )
    end_step = result.last_step or 0
    if not evals or evals[-1][0] != end_step:
        run_eval(end_step)
    start, end = evals[0][1], evals[-1][1]
    noise = 2 * math.hypot(start.get("val_loss_se", 0.0), end.get("val_loss_se", 0.0))
    need = max(s.margin * abs(start["val_loss"]), noise)
    metrics = {
        "val_loss_start": start["val_loss"],
        "val_loss_end": end["val_loss"],
        "val_loss_noise": noise,
        "train_loss_first": head_mean(result.train_losses),
        "train_loss_last": tail_mean(result.train_losses),
        "steps": result.steps,
        "seconds": result.seconds,
    }
    fell = end["val_loss"] < start["val_loss"] - need
    detail = (
        f"val loss {fmt(start['val_loss'])} → {fmt(end['val_loss'])} in {result.steps} steps "
        f"(noise ±{fmt(noise)})"
    )
    if fell:
        check = Check("val_loss_falls", "pass", f"{detail}: the model learned from the data")
        return Verdict("pass", detail, [check, skip], metrics)
    reason = (
        f"{detail}: the val loss did not fall by more than its noise (needed {fmt(need)}) — "
        "the step does not learn anything that carries over to val"
    )
    return Verdict("fail", reason, [Check("val_loss_falls", "fail", reason), skip], metrics)
