"""Input statistics: are train and val on the same scale, and is train near normalised?

Per feature for (N, F) tables, per channel (dim 1) for images and other (N, C, ...) inputs.
A val set built without the train set's normalisation (or on a 0-255 scale while train is
normalised) passes every other check and makes every val number meaningless; raw pixels or
unscaled tabular features train slowly or not at all.
"""

from __future__ import annotations

import math

import torch

from engine.stages.base import Check, fmt


def unit_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(mean, std) per feature or channel, and what a unit is called."""
    xx = x.detach().double()
    if xx.ndim == 1:
        xx = xx[:, None]
    unit = "feature" if xx.ndim == 2 else "channel"
    flat = xx.transpose(0, 1).reshape(xx.shape[1], -1)
    return flat.mean(1), flat.std(1, correction=0), unit


def _pooled(x: torch.Tensor) -> tuple[float, float, float, float]:
    xx = x.detach().double()
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
    gross = big >= settings.split_scale_fail or shift_med >= settings.split_shift_fail
    train_look = _looks(mt, st, lo_t, hi_t)
    val_look = _looks(mv, sv, lo_v, hi_v)
    n = len(mt)
    per = f"per {unit}" if n > 1 else ""
    numbers = (
        f"mean {fmt(float(mv.mean()))} vs {fmt(float(mt.mean()))}, spread {fmt(sv_all)} vs "
        f"{fmt(st_all)} ({scale:.2g}× train's), values {fmt(lo_v)}..{fmt(hi_v)} vs "
        f"{fmt(lo_t)}..{fmt(hi_t)}"
    )
    if n > 1:
        numbers += f"; {unit} {worst} is off most ({fmt(float(shift[worst]))} train spreads)"
    if train_look and val_look != train_look:
        who = (
            f"val inputs are on another scale than train ({per} {numbers}): train looks "
            f"{train_look}, val {'looks ' + val_look if val_look else 'does not'} — build val with "
            "the same preprocessing as train (the same normalisation, with the train statistics)"
        )
    elif val_look and train_look != val_look:
        who = (
            f"train inputs are on another scale than val ({per} {numbers}): val looks {val_look}, "
            "train does not — build train with the same preprocessing as val"
        )
    else:
        who = (
            f"train and val inputs differ ({per} {numbers}): the splits come from different "
            "sources or preprocessing — normalise both with the train statistics"
        )
    return Check("train_val_inputs", "fail" if gross else "warn", who)


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
            "large inputs saturate activations and need a tiny learning rate",
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
