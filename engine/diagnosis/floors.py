"""Loss floors: the lowest value a loss can take on a batch, for the outputs a model can give.

An overfit criterion must measure progress towards the loss's floor, never a fraction of a
start that may be negative (softmax + ``NLLLoss`` lives in [-1, 0]) or offset (label
smoothing, soft targets). Two kinds of floor:

- ``natural_floor``: the loss evaluated at the best output of the kind the loss expects
  (logits for ``CrossEntropyLoss``, log-probabilities for ``NLLLoss``, the target itself for
  regression). 0 for hard labels; the targets' entropy for soft ones or label smoothing.
- ``constrained_floors``: where the model's outputs are structurally limited — rows that are
  already probabilities, values squeezed into (0, 1), never negative — the loss evaluated at
  the best output inside that limit. A plateau at one of these names its bug: a softmax before
  ``CrossEntropyLoss`` cannot go below ln(1 + (C−1)/e), a sigmoid before ``BCEWithLogitsLoss``
  below ln(1 + e⁻¹) = 0.313 on positives, a ReLU on a regression output below the loss of the
  negative targets.

Everything is computed by calling the user's own loss module on a constructed output, so class
weights, ``pos_weight``, reductions and ``ignore_index`` are honoured exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
_TINY = 1e-30


@dataclass
class Floor:
    """A floor the loss cannot go below, what it is and what usually causes it."""

    value: float
    name: str  # "ln(1 + (C−1)/e) = 1.46 for C=10 classes"
    cause: str  # the usual bug and its fix, in words a person acts on


def loss_name(loss_fn: nn.Module) -> str:
    return type(loss_fn).__name__


def _class_dim_targets(loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class-probability targets shaped like ``out`` (class dim 1) from hard or soft labels."""
    classes = out.shape[1]
    if y.dtype.is_floating_point and y.shape == out.shape:
        return y.float()
    yy = y.long()
    ignore = getattr(loss_fn, "ignore_index", -100)
    yy = torch.where(yy == ignore, torch.zeros_like(yy), yy).clamp(0, classes - 1)
    onehot = nn.functional.one_hot(yy, classes).float()
    return onehot.movedim(-1, 1) if onehot.ndim > 2 else onehot


def _as_out(y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    if y.numel() != out.numel():
        return None
    return y.reshape(out.shape).to(out.dtype)


def _value(loss_fn: nn.Module, output: torch.Tensor | None, y: torch.Tensor) -> float | None:
    if output is None:
        return None
    try:
        with torch.no_grad():
            v = float(loss_fn(output, y))
    except Exception:  # a loss that wants something else: no claim
        return None
    return v if math.isfinite(v) else None


def natural_floor(loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor) -> float | None:
    """The loss on this batch at the best output of the kind it expects; None if unknown."""
    out = out.detach().float()
    if isinstance(loss_fn, nn.CrossEntropyLoss) and out.ndim >= 2:
        eps = float(getattr(loss_fn, "label_smoothing", 0.0) or 0.0)
        q = _class_dim_targets(loss_fn, out, y)
        q = q * (1 - eps) + eps / out.shape[1]
        return _value(loss_fn, q.clamp_min(_TINY).log(), y)
    if isinstance(loss_fn, nn.NLLLoss) and out.ndim >= 2:
        return _value(loss_fn, _class_dim_targets(loss_fn, out, y).clamp_min(_TINY).log(), y)
    if isinstance(loss_fn, nn.BCEWithLogitsLoss):
        t = _as_out(y.float(), out)
        return _value(loss_fn, None if t is None else torch.logit(t.clamp(1e-6, 1 - 1e-6)), y)
    if isinstance(loss_fn, nn.BCELoss):
        return _value(loss_fn, _as_out(y.float(), out), y)
    if isinstance(loss_fn, REGRESSION_LOSSES):
        return _value(loss_fn, _as_out(y.float(), out), y)
    if isinstance(loss_fn, nn.KLDivLoss):
        t = _as_out(y.float(), out)
        if t is None:
            return None
        return _value(loss_fn, t if loss_fn.log_target else t.clamp_min(_TINY).log(), y)
    return None


@dataclass
class OutputForm:
    """What the outputs look like, structurally (true at init and after training alike)."""

    probabilities: bool = False  # in [0, 1], rows (dim 1) sum to 1: a softmax
    unit: bool = False  # every value in [0, 1]: a sigmoid
    nonnegative: bool = False  # every value >= 0: a ReLU, softplus, exp...
    exact_zeros: float = 0.0  # share of values exactly 0 (a ReLU clamps exactly)
    symmetric_unit: bool = False  # in [-1, 1] with negatives: a tanh


def output_form(out: torch.Tensor) -> OutputForm:
    out = out.detach().float()
    if out.numel() == 0 or not torch.isfinite(out).all():
        return OutputForm()
    lo, hi = float(out.min()), float(out.max())
    form = OutputForm()
    form.nonnegative = lo >= 0
    form.unit = lo >= 0 and hi <= 1
    form.exact_zeros = float((out == 0).float().mean())
    form.symmetric_unit = lo >= -1 and hi <= 1 and lo < 0
    if out.ndim >= 2 and out.shape[1] >= 2 and form.unit:
        form.probabilities = bool(((out.sum(1) - 1).abs() < 1e-3).all())
    return form


def _both(a: OutputForm, b: OutputForm, attr: str) -> bool:
    return bool(getattr(a, attr) and getattr(b, attr))


def constrained_floors(
    loss_fn: nn.Module,
    out_init: torch.Tensor,
    out_end: torch.Tensor,
    y: torch.Tensor,
    natural: float | None,
) -> list[Floor]:
    """Floors that structural limits of the outputs impose (seen at init and at the end)."""
    a, b = output_form(out_init), output_form(out_end)
    out = out_end.detach().float()
    floors: list[Floor] = []
    name = loss_name(loss_fn)
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) and _both(a, b, "probabilities"):
        q = _class_dim_targets(loss_fn, out, y)
        v = _value(loss_fn, q, y)
        c = out.shape[1]
        if v is not None and isinstance(loss_fn, nn.CrossEntropyLoss):
            floors.append(
                Floor(
                    v,
                    f"ln(1 + (C−1)/e) = {v:.3g} for C={c} classes",
                    "the model's outputs are already probabilities (every row sums to 1) and "
                    "CrossEntropyLoss applies log-softmax itself: a softmax before it cannot "
                    "get lower — return the raw logits (remove the softmax)",
                )
            )
        elif v is not None:
            floors.append(
                Floor(
                    v,
                    f"{v:.3g} (−p of the target class)",
                    "NLLLoss takes log-probabilities but the model gives probabilities (every "
                    "row sums to 1), so the loss is −p(target) in [−1, 0] and its fall means "
                    "little — use log_softmax, or return logits and use CrossEntropyLoss",
                )
            )
    if isinstance(loss_fn, nn.BCEWithLogitsLoss) and _both(a, b, "unit"):
        v = _value(loss_fn, _as_out(y.float(), out), y)
        if v is not None:
            floors.append(
                Floor(
                    v,
                    f"{v:.3g} (ln(1 + e⁻¹) = 0.313 per positive target, ln 2 per negative)",
                    "the outputs lie in [0, 1] — a sigmoid before BCEWithLogitsLoss, which "
                    "applies its own: return the logits (remove the sigmoid), or use BCELoss",
                )
            )
    if isinstance(loss_fn, REGRESSION_LOSSES):
        t = _as_out(y.float(), out)
        if t is not None:
            if _both(a, b, "unit") and (t.min() < 0 or t.max() > 1):
                v = _value(loss_fn, t.clamp(0, 1), y)
                if v is not None:
                    floors.append(
                        Floor(
                            v,
                            f"{v:.3g}, the loss of the targets outside [0, 1]",
                            f"the outputs lie in [0, 1] (a sigmoid on the output) but the targets "
                            f"range over {float(t.min()):.3g}..{float(t.max()):.3g}: remove the "
                            f"final activation (or scale the targets into [0, 1])",
                        )
                    )
            elif _both(a, b, "nonnegative") and t.min() < 0:
                v = _value(loss_fn, t.clamp(min=0), y)
                neg = float((t < 0).float().mean())
                zeros = max(a.exact_zeros, b.exact_zeros)
                what = (
                    f"{100 * zeros:.0f}% exactly 0: a ReLU on the output"
                    if zeros
                    else "a ReLU, softplus or exp on the output"
                )
                if v is not None:
                    floors.append(
                        Floor(
                            v,
                            f"{v:.3g}, the loss of the negative targets",
                            f"the outputs are never negative ({what}) but {100 * neg:.0f}% of the "
                            f"targets are: remove the activation after the last layer",
                        )
                    )
            elif _both(a, b, "symmetric_unit") and (t.min() < -1 or t.max() > 1):
                v = _value(loss_fn, t.clamp(-1, 1), y)
                if v is not None:
                    floors.append(
                        Floor(
                            v,
                            f"{v:.3g}, the loss of the targets outside [−1, 1]",
                            f"the outputs lie in [−1, 1] (a tanh on the output) but the targets "
                            f"range over {float(t.min()):.3g}..{float(t.max()):.3g}: remove the "
                            f"final activation (or scale the targets)",
                        )
                    )
    if natural is not None:
        floors = [f for f in floors if abs(f.value - natural) > 1e-3 * max(1.0, abs(natural))]
    del name
    return floors


def input_blind_floor(
    loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor, iters: int = 60
) -> float | None:
    """The lowest loss an output that ignores the input can get on this batch: one constant
    output (of one sample's shape) for every sample, fitted by L-BFGS on the user's loss."""
    if len(out) < 2:
        return None
    base = out.detach().float().mean(0, keepdim=True)
    c = base.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([c], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(c.expand_as(out), y)
        loss.backward()
        return loss

    try:
        with torch.enable_grad():
            opt.step(closure)
        return _value(loss_fn, c.detach().expand_as(out), y)
    except Exception:
        return None


def recognise(
    plateau: float, start: float, natural: float | None, floors: list[Floor]
) -> Floor | None:
    """The floor a plateau sits on, if one of ``floors`` matches it (within a tenth of the way
    from the start down to the floor, or 2% of its value)."""
    best = None
    for f in floors:
        if natural is not None and f.value <= natural:
            continue
        tol = max(0.1 * abs(start - f.value), 0.02 * abs(f.value), 1e-3)
        if abs(plateau - f.value) <= tol and (
            best is None or abs(plateau - f.value) < abs(plateau - best.value)
        ):
            best = f
    return best


def below_natural(
    loss_fn: nn.Module, lowest: float, natural: float | None, floors: list[Floor]
) -> str | None:
    """A sentence when the loss went below the lowest value it takes on proper inputs."""
    if natural is None:
        return None
    tol = 1e-3 + 1e-3 * abs(natural)
    if lowest >= natural - tol:
        return None
    name = loss_name(loss_fn)
    under = [f for f in floors if f.value < natural - tol]
    if under:
        return (
            f"the loss went to {lowest:.3g}, below {natural:.3g}, the lowest {name} takes on the "
            f"inputs it expects: {under[0].cause}"
        )
    return (
        f"the loss went to {lowest:.3g}, below {natural:.3g}, the lowest {name} takes on the inputs "
        f"it expects: the model's output is not what {name} takes (logits, log-probabilities or "
        f"probabilities?) — check its documentation against the model's last layer"
    )
