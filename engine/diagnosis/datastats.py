"""Input statistics: are train and val on the same scale, and is train near normalised?

Per feature for (N, F) tables, per channel (dim 1) for images and other (N, C, ...) inputs.
A val set built without the train set's normalisation (or on a 0-255 scale while train is
normalised) passes every other check and makes every val number meaningless; raw pixels or
unscaled tabular features train slowly or not at all.
"""

from __future__ import annotations

import math

import torch

from engine.diagnosis import contracts
from engine.metrics import collect_targets
from engine.stages.base import Check, fmt
from engine.stages.common import reader_kwargs


def unit_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(mean, std) per feature or channel, and what a unit is called."""
    xx = x.detach().cpu().double()
    if xx.ndim == 1:
        xx = xx[:, None]
    unit = "feature" if xx.ndim == 2 else "channel"
    flat = xx.transpose(0, 1).reshape(xx.shape[1], -1)
    return flat.mean(1), flat.std(1, correction=0), unit


def _pooled(x: torch.Tensor) -> tuple[float, float, float, float]:
    xx = x.detach().cpu().double()
    return float(xx.mean()), float(xx.std(correction=0)), float(xx.min()), float(xx.max())


def _looks(mean: torch.Tensor, std: torch.Tensor, lo: float, hi: float) -> str | None:
    """'normalised', 'in [0, 1]', '0-255' — how a split's inputs look, if recognisable."""
    if float(mean.abs().median()) < 0.5 and 0.4 < float(std.median()) < 2.5:
        return "normalised (mean ≈ 0, spread ≈ 1)"
    if lo >= 0 and hi <= 1:
        return "in [0, 1]"
    if lo >= 0 and 20 < hi <= 255:
        return "on a raw 0-255 scale"
    return None


def check_splits(xt: torch.Tensor, xv: torch.Tensor, settings) -> Check:
    """Train vs val inputs, unit by unit: which split is off and by how much."""
    if not (xt.is_floating_point() and xv.is_floating_point()):
        return Check("train_val_inputs", "skip", "inputs are not floats (tokens or ids)")
    if xt.shape[1:] != xv.shape[1:] or len(xt) < 2 or len(xv) < 2:
        return Check("train_val_inputs", "skip", "train and val inputs differ in shape")
    mt, st, unit = unit_stats(xt)
    mv, sv, _ = unit_stats(xv)
    _, st_all, lo_t, hi_t = _pooled(xt)
    _, sv_all, lo_v, hi_v = _pooled(xv)
    floor = 0.05 * st_all + 1e-12  # constant units (image borders) must not blow up ratios
    scale = (sv_all + 1e-12) / (st_all + 1e-12)
    shift = (mv - mt).abs() / (st + floor)
    shift_med = float(shift.median())
    worst = int(shift.argmax())
    big = max(scale, 1 / scale)
    if big < settings.split_scale_warn and shift_med < settings.split_shift_warn:
        return Check(
            "train_val_inputs",
            "pass",
            f"val inputs match train per {unit} (spread ratio {scale:.2f}, median mean shift "
            f"{shift_med:.2f} train spreads)",
        )
    train_look = _looks(mt, st, lo_t, hi_t)
    val_look = _looks(mv, sv, lo_v, hi_v)
    # a shifted mean alone can be a real drift (a later period as val): it fails only when
    # the spreads differ too
    gross = big >= settings.split_scale_fail or (
        shift_med >= settings.split_shift_fail and big >= settings.split_scale_warn
    )
    n = len(mt)
    tiny = 1e-4 * max(st_all, sv_all)  # a normalised mean of 5e-8 reads as 0

    def num(v: float) -> str:
        return fmt(0.0 if abs(v) < tiny else v)

    numbers = (
        f"mean {num(float(mv.mean()))} vs {num(float(mt.mean()))}, spread {fmt(sv_all)} vs "
        f"{fmt(st_all)} ({scale:.2g}× train's), values {num(lo_v)}..{num(hi_v)} vs "
        f"{num(lo_t)}..{num(hi_t)}"
    )
    if n > 1:
        numbers = (
            f"per {unit}: {numbers}; {unit} {worst} is off most "
            f"({fmt(float(shift[worst]))} train spreads)"
        )
    rescaled = big >= settings.split_scale_warn
    off = "on another scale than" if rescaled else "shifted from"
    if train_look and val_look != train_look:
        who = (
            f"val inputs are {off} train's ({numbers}): train looks {train_look}, val "
            f"{'looks ' + val_look if val_look else 'does not'} — build val with the same "
            "preprocessing as train (the same normalisation, with the train statistics)"
        )
    elif val_look and train_look != val_look:
        who = (
            f"train inputs are {off} val's ({numbers}): val looks {val_look}, train does "
            "not — build train with the same preprocessing as val"
        )
    else:
        who = (
            f"train and val inputs differ ({numbers}): the splits come from different "
            "sources or preprocessing — normalise both with the train statistics"
        )
    if not rescaled:
        who += " (or val drifted from train: a later period, another site)"
    return Check("train_val_inputs", "fail" if gross else "warn", who)


def tiny(xt: torch.Tensor, settings) -> float | None:
    """The pooled spread of float inputs whose every unit stays under ``tiny_scale`` (a
    scale applied twice), else None."""
    if not xt.is_floating_point():
        return None
    mean, std, _ = unit_stats(xt)
    top = float((mean.abs() + std).max())
    return _pooled(xt)[1] if 0 < top < settings.tiny_scale else None


def check_scale(xt: torch.Tensor, settings) -> Check:
    """Raw inputs far from normalised: 0-255 pixels, unscaled tabular features."""
    if not xt.is_floating_point():
        return Check("input_scale", "skip", "inputs are not floats (tokens or ids)")
    mean, std, unit = unit_stats(xt)
    m, s, lo, hi = _pooled(xt)
    top = float((mean.abs() + std).max())
    if top > settings.raw_scale:
        hint = (
            "raw 0-255 pixels? divide by 255, then normalise"
            if lo >= 0 and hi <= 255 and hi > 20
            else "normalise"
        )
        return Check(
            "input_scale",
            "warn",
            f"train inputs are far from normalised: values {fmt(lo)}..{fmt(hi)}, mean {fmt(m)}, "
            f"spread {fmt(s)} ({hint} each {unit} to mean 0, spread 1 with the train statistics): "
            "large inputs saturate activations and need a tiny learning rate (ignore this if "
            "the model normalises its input itself)",
        )
    if 0 < top < settings.tiny_scale:
        hint = (
            "pixels divided by 255 twice? ToTensor already scales to [0, 1]"
            if lo >= 0 and hi <= 1 / 255 + 1e-6
            else "a scale applied twice, or a unit mix-up?"
        )
        return Check(
            "input_scale",
            "warn",
            f"train inputs are tiny: values {fmt(lo)}..{fmt(hi)}, mean {fmt(m)}, spread {fmt(s)} "
            f"({hint}): next to the first layer's bias the samples look almost alike, so the "
            f"model learns like one that ignores its input — normalise each {unit} to mean 0, "
            "spread 1 with the train statistics",
        )
    live = std[std > 1e-8]
    if unit == "feature" and len(live) >= 2:
        ratio = float(live.max() / live.min())
        if ratio > settings.feature_scale_ratio and float(live.max()) > 1:
            i, j = int(std.argmax()), int(torch.where(std > 1e-8, std, math.inf).argmin())
            return Check(
                "input_scale",
                "warn",
                f"feature scales differ by {math.log10(ratio):.0f} orders of magnitude (feature {i} "
                f"spreads {fmt(float(std[i]))}, feature {j} {fmt(float(std[j]))}): standardise each "
                "feature with the train statistics (sklearn's StandardScaler fitted on train)",
            )
    return Check("input_scale", "pass", f"inputs near normalised (mean {fmt(m)}, spread {fmt(s)})")


def check_target_splits(ctx, task: str, settings) -> Check | None:
    """Regression: are val's targets on train's scale? Targets standardised in train only
    (val left in raw units) make every val loss huge whatever the model learns."""
    if task != "regression":
        return None
    kw = reader_kwargs(ctx)
    yt = collect_targets(ctx.data.train, limit=settings.overlap_samples, loader_kwargs=kw)
    yv = collect_targets(ctx.data.val, limit=settings.val_samples, loader_kwargs=kw)
    if not (yt.is_floating_point() and yv.is_floating_point()) or len(yt) < 2 or len(yv) < 2:
        return None
    yt, yv = yt.double().reshape(len(yt), -1), yv.double().reshape(len(yv), -1)
    if yt.shape[1] != yv.shape[1]:
        return None
    mt, st, mv, sv = (float(v) for v in (yt.mean(), yt.std(), yv.mean(), yv.std()))
    ratio = (sv + 1e-12) / (st + 1e-12)
    big = max(ratio, 1 / ratio)
    shift = abs(mv - mt) / (st + 1e-12)
    if big < settings.split_scale_warn and shift < settings.split_shift_fail:
        return Check(
            "train_val_targets",
            "pass",
            f"val targets on train's scale (spread ratio {ratio:.2f}, mean shift {shift:.2f} "
            "train spreads)",
        )
    tiny = 1e-4 * max(st, sv)  # a standardised mean of 5e-9 reads as 0

    def num(v: float) -> str:
        return fmt(0.0 if abs(v) < tiny else v)

    # as for the inputs: a shifted mean alone can be real drift (a later period as val)
    gross = big >= settings.split_scale_fail or (
        shift >= settings.split_shift_fail and big >= settings.split_scale_warn
    )
    return Check(
        "train_val_targets",
        "fail" if gross else "warn",
        f"val targets are on another scale than train's: train mean {num(mt)}, spread "
        f"{fmt(st)}; val mean {num(mv)}, spread {fmt(sv)} ({fmt(ratio)}× train's spread, mean "
        f"{fmt(shift)} train spreads off): "
        + (
            "the targets were normalised in one split only — scale val's targets with train's "
            "mean and spread (or neither split's)"
            if gross
            else "another source or period? compare how the two splits were made"
        ),
    )


def check_split_classes(ctx, task: str, classes: int, metrics: dict, settings) -> Check | None:
    """Do train and val hold the same classes in like shares? A dataset sorted by label and
    cut without shuffling gives val the classes train barely has (or never has)."""
    if task != "classification" or not 2 <= classes <= 100:
        return None
    kw = reader_kwargs(ctx)
    yt = collect_targets(ctx.data.train, limit=settings.overlap_samples, loader_kwargs=kw)
    # enough val samples that sampling noise stays well under the threshold (~40 a class)
    limit = min(settings.overlap_samples, max(settings.val_samples, 40 * classes))
    yv = collect_targets(ctx.data.val, limit=limit, loader_kwargs=kw)
    if yt.is_floating_point() or yv.is_floating_point() or yt.ndim != 1 or yv.ndim != 1:
        return None  # soft labels, one logit per label: no class ids to count
    if not len(yt) or not len(yv):
        return None
    ct = torch.bincount(yt.long().clamp(0, classes - 1), minlength=classes).double()
    cv = torch.bincount(yv.long().clamp(0, classes - 1), minlength=classes).double()
    pt, pv = ct / ct.sum(), cv / cv.sum()
    shift = float(0.5 * (pt - pv).abs().sum())
    metrics["split_class_shift"] = shift
    unseen = [k for k in range(classes) if cv[k] > 0 and ct[k] == 0]
    if shift <= settings.split_class_shift and not unseen:
        return Check(
            "split_classes",
            "pass",
            f"train and val hold the classes in like shares (they differ by {100 * shift:.0f}%)",
        )
    k = int((pv - pt).argmax())  # the class val holds most in excess of train
    detail = (
        f"val's classes are not train's: class {k} is {100 * pv[k]:.0f}% of val and "
        f"{100 * pt[k]:.0f}% of train (the class shares differ by {100 * shift:.0f}%)"
    )
    if unseen:
        detail += (
            f"; class{'es' if len(unseen) > 1 else ''} {', '.join(map(str, unseen[:5]))} "
            f"appear{'' if len(unseen) > 1 else 's'} in val but never in train's "
            f"{len(yt)} samples read"
        )
    detail += (
        ": a dataset sorted by label and cut without shuffling? shuffle before splitting, or "
        "split stratified by label"
    )
    lost = float(pv[unseen].sum()) if unseen else 0.0
    return Check("split_classes", "fail" if lost > 0.5 else "warn", detail)


def check_balance(ctx, task: str, classes: int, metrics: dict, settings) -> Check:
    """Class counts over the train targets (pixels for segmentation), with the weights to use."""
    limit = settings.overlap_samples if task == "classification" else settings.samples
    ys = collect_targets(ctx.data.train, limit=limit, loader_kwargs=reader_kwargs(ctx))
    binary = ys.is_floating_point() and contracts.loss_name(ctx.loss_fn) in contracts.BINARY_LOSSES
    if binary:  # one logit per label: count positives and negatives
        classes = 2
        counts = torch.bincount((ys.reshape(-1) > 0.5).long(), minlength=2).double()
    elif ys.is_floating_point() and ys.ndim >= 2:  # class probabilities: expected counts
        counts = ys.double().reshape(len(ys), ys.shape[1], -1).sum((0, 2))
    else:
        counts = torch.bincount(
            ys.reshape(-1).long().clamp(0, classes - 1), minlength=classes
        ).double()
    seen = counts[counts > 0]
    ratio = float(seen.max() / seen.min()) if len(seen) else 1.0
    metrics["imbalance_ratio"] = ratio
    missing = [i for i in range(classes) if counts[i] == 0]
    unit = "samples" if task == "classification" else "pixels"
    limit = settings.imbalance_ratio if task == "classification" else settings.pixel_imbalance_ratio
    if ratio <= limit and not missing:
        return Check(
            "class_balance", "pass", f"{classes} classes, the largest {ratio:.1f}× the smallest"
        )
    weights = counts.sum() / (classes * counts.clamp(min=1))
    weights = weights / weights[counts > 0].mean()
    w = "[" + ", ".join(f"{v:.2f}" for v in weights.tolist()) + "]"
    share = counts / counts.sum()
    lo_c = int(torch.where(counts > 0, share, torch.full_like(share, 2)).argmin())
    hi_c = int(share.argmax())
    detail = (
        f"classes are imbalanced: class {hi_c} has {100 * share[hi_c]:.1f}% of {unit}, class {lo_c} "
        f"{100 * share[lo_c]:.1f}% ({ratio:.1f}×)"
    )
    if missing:
        detail += f"; class{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing[:5]))} never appear"
    if binary:
        detail += f"; weigh the positives: BCEWithLogitsLoss(pos_weight={float(counts[0] / counts[1].clamp(min=1)):.2f})"
    else:
        detail += (
            f"; suggested loss weights: loss: {{_target_: torch.nn.CrossEntropyLoss, weight: {w}}}"
        )
    return Check("class_balance", "warn", detail)
