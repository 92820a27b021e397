"""What the model outputs against what the loss expects, read from the outputs themselves.

A softmax before ``CrossEntropyLoss``, a sigmoid before ``BCEWithLogitsLoss``, softmax (not
log-softmax) into ``NLLLoss``, a ReLU on a regression output: each trains, each has a loss floor
that is not 0, and each is visible at init — in the numbers (rows in [0, 1] summing to 1, all
values <= 0 with log-sum-exp 0, nothing below 0) and in the last operation of the forward pass
(the output's ``grad_fn``). This module names the form of the output, the loss's value at init
and, where the pairing is wrong, the floor it puts under the loss and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.stages.base import Check, fmt

# autograd nodes that only move values around: the op before them is the one that shaped them
_PASSTHROUGH = {
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "SqueezeBackward2",
    "SqueezeBackward3",
    "UnsqueezeBackward0",
    "SelectBackward0",
    "SliceBackward0",
    "CloneBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "TBackward0",
    "ExpandBackward0",
    "ToCopyBackward0",
    "AliasBackward0",
}
_FINAL_OPS = {
    "SoftmaxBackward0": "softmax",
    "LogSoftmaxBackward0": "log_softmax",
    "SigmoidBackward0": "sigmoid",
    "ReluBackward0": "relu",
    "Relu6Backward0": "relu6",
    "SoftplusBackward0": "softplus",
    "ExpBackward0": "exp",
    "TanhBackward0": "tanh",
    "HardtanhBackward0": "hardtanh",
    "ClampBackward1": "clamp",
    "ClampMinBackward0": "clamp",
    "AbsBackward0": "abs",
}
CLASS_LOSSES = ("CrossEntropyLoss", "NLLLoss")
BINARY_LOSSES = ("BCEWithLogitsLoss", "BCELoss")
REGRESSION_LOSSES = ("MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss")


def loss_name(loss_fn: nn.Module) -> str:
    return type(loss_fn).__name__


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


# ---- what the model returned ----------------------------------------------------------
def describe_non_tensor(out, task: str) -> str | None:
    """A sentence for a model that returns something other than one tensor; None for a tensor."""
    if isinstance(out, torch.Tensor):
        return None
    need = {
        "classification": "one tensor of logits (batch, classes)",
        "segmentation": "one tensor of logits (batch, classes, H, W)",
        "regression": "one tensor of predictions shaped like the targets",
    }[task]
    kind = type(out).__name__
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        keys = list(out.keys()) if hasattr(out, "keys") else ["logits"]
        return (
            f"the model returns a {kind} ({', '.join(map(str, keys[:4]))}), not a tensor; the loss "
            f"and the ladder need {need}: return outputs.logits from forward (or wrap the model)"
        )
    if isinstance(out, dict):
        shown = ", ".join(f"{k!r}: {_shape(v)}" for k, v in list(out.items())[:4])
        return (
            f"the model returns a dict {{{shown}}}, not a tensor; the loss and the ladder need "
            f"{need}: return the output the loss trains on (e.g. out['logits']) from forward"
        )
    if isinstance(out, (tuple, list)):
        shown = ", ".join(_shape(v) for v in list(out)[:4])
        return (
            f"the model returns a {kind} of {len(out)} ({shown}), not a tensor — auxiliary heads "
            f"(inception's aux logits), a distillation token, an RNN's (output, state)? The loss "
            f"and the ladder need {need}: return only the main output from forward"
        )
    return (
        f"the model returns a {kind}, not a tensor; the loss and the ladder need {need}: "
        "return it from forward"
    )


def _shape(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor {tuple(v.shape)}"
    if isinstance(v, (tuple, list)):
        return f"{type(v).__name__} of {len(v)}"
    return type(v).__name__


def final_op(out: torch.Tensor) -> str | None:
    """The last value-changing operation of the forward pass ('softmax', 'relu', ...)."""
    fn = out.grad_fn
    for _ in range(8):
        if fn is None:
            return None
        name = type(fn).__name__
        if name in _FINAL_OPS:
            return _FINAL_OPS[name]
        if name not in _PASSTHROUGH or not fn.next_functions:
            return None
        fn = fn.next_functions[0][0]
    return None


@dataclass
class OutputForm:
    """What the first outputs look like, along the class dimension (dim 1)."""

    op: str | None
    lo: float
    hi: float
    probabilities: bool  # in [0, 1], summing to 1 along dim 1
    log_probabilities: bool  # <= 0, log-sum-exp 0 along dim 1
    zeros: float  # share of outputs exactly 0 (a ReLU's mark)
    over_batch: str | None = None
    """'probabilities' / 'log-probabilities' when the outputs are normalised along dim 0 —
    across the batch — and not along the classes: a softmax(dim=0), or an implicit dim that
    picked 0 (nn.Softmax() on a 3-D output)."""
    batch: int = 0

    @property
    def unit_interval(self) -> bool:
        return self.lo >= 0.0 and self.hi <= 1.0

    def words(self) -> str:
        if self.probabilities:
            return "probabilities (each row in [0, 1], summing to 1)"
        if self.log_probabilities:
            return "log-probabilities (all <= 0, each row log-sum-exps to 0)"
        return f"values in [{fmt(self.lo)}, {fmt(self.hi)}]"


def output_form(out: torch.Tensor) -> OutputForm:
    o = out.detach().cpu().double()  # a probe batch: small; float64 for exact row sums
    lo, hi = float(o.min()), float(o.max())
    probs = logp = False
    over_batch = None
    if o.ndim >= 2 and o.shape[1] >= 2:
        if lo >= -1e-6 and hi <= 1 + 1e-6:
            probs = bool(((o.sum(1) - 1).abs() < 1e-3).all())
        if hi <= 1e-6:
            logp = bool((torch.logsumexp(o, 1).abs() < 1e-3).all())
        if not (probs or logp) and o.shape[0] >= 2:
            if lo >= -1e-6 and hi <= 1 + 1e-6 and bool(((o.sum(0) - 1).abs() < 1e-3).all()):
                over_batch = "probabilities"
            elif hi <= 1e-6 and bool((torch.logsumexp(o, 0).abs() < 1e-3).all()):
                over_batch = "log-probabilities"
    zeros = float((o == 0).double().mean())
    return OutputForm(final_op(out), lo, hi, probs, logp, zeros, over_batch, int(o.shape[0]))


def over_batch_words(form: OutputForm, name: str, fix: str) -> str:
    """The outputs are normalised across the batch: what that does, and ``fix``."""
    layer = form.op or ("log_softmax" if form.over_batch == "log-probabilities" else "softmax")
    sums = "log-sum-exps to 0" if form.over_batch == "log-probabilities" else "sums to 1"
    return (
        f"the model's {layer} normalises over dim 0 — the batch — not over the classes: each "
        f"class's column {sums} across the {form.batch} samples while no sample's row does, so "
        f"every sample's output depends on the rest of its batch and {name} scores nonsense "
        f"— {fix}"
    )


# ---- targets ----------------------------------------------------------------------------
def target_kind(y: torch.Tensor, loss_fn: nn.Module) -> str:
    """'class_ids' | 'binary' (floats in [0, 1] for a BCE loss) | 'class_probabilities' |
    'floats'."""
    if not y.is_floating_point():
        return "class_ids"
    name = loss_name(loss_fn)
    finite = torch.isfinite(y).all()
    if name in BINARY_LOSSES and finite and y.min() >= 0 and y.max() <= 1:
        return "binary"
    if (
        name == "CrossEntropyLoss"
        and y.ndim >= 2
        and finite
        and y.min() >= 0
        and bool(((y.sum(1) - 1).abs() < 1e-3).all())
    ):
        return "class_probabilities"
    return "floats"


def check_format(task: str, x, y, loss_fn: nn.Module) -> Check:
    """Input/target types and shapes the task and the loss accept — what torch accepts."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return Check(
            "data_format",
            "fail",
            f"samples must be (tensor, tensor) pairs, got ({type(x).__name__}, {type(y).__name__})",
        )
    desc = f"inputs {tuple(x.shape)} {_dtype(x)}, targets {tuple(y.shape)} {_dtype(y)}"
    name = loss_name(loss_fn)
    if task == "regression":
        if not y.is_floating_point():
            return Check(
                "data_format",
                "fail",
                f"regression targets must be floats, got {_dtype(y)}; convert them with .float()",
            )
        return Check("data_format", "pass", desc)
    kind = target_kind(y, loss_fn)
    if name in REGRESSION_LOSSES and kind == "class_ids":
        return Check(
            "data_format",
            "fail",
            f"{name} compares the outputs with the targets element by element, but the targets "
            f"are class ids ({_dtype(y)}, {tuple(y.shape[1:]) or 'one'} per sample) for task: "
            f"{task}: use CrossEntropyLoss (the {task} default: drop `loss:`), or one-hot float "
            "targets if a squared error is what you mean",
        )
    if name in BINARY_LOSSES:
        if kind == "class_ids":
            return Check(
                "data_format",
                "fail",
                f"{name} needs float targets (0./1. per output), got {_dtype(y)}: return "
                "y.float() from the dataset — or use CrossEntropyLoss with class ids",
            )
        if kind != "binary":
            return Check(
                "data_format",
                "fail",
                f"{name} needs targets in [0, 1], got values over {fmt(float(y.min()))}.."
                f"{fmt(float(y.max()))}: for more than two classes use CrossEntropyLoss with class ids",
            )
        return Check("data_format", "pass", f"{desc} (binary targets for {name})")
    if kind == "class_probabilities":
        return Check("data_format", "pass", f"{desc} (class probabilities: soft labels for {name})")
    if y.is_floating_point():
        vals = ", ".join(fmt(v) for v in y.reshape(-1)[:3].tolist())
        return Check(
            "data_format",
            "fail",
            f"{task} targets must be class ids (torch.long), got {_dtype(y)} (values like {vals}): "
            "return torch.long ids, not one-hot or floats (float 0/1 targets go with "
            "BCEWithLogitsLoss and one output per label; class probabilities must sum to 1)",
        )
    if task == "classification" and y.ndim != 1:
        return Check(
            "data_format",
            "fail",
            f"classification targets must be one class id per sample, got shape {tuple(y.shape[1:])} "
            "per sample; one-hot targets? return the index (argmax) instead",
        )
    if task == "segmentation" and y.ndim != 3:
        fix = ""
        if y.ndim == 4 and y.shape[1] == 1:
            fix = ": the mask keeps a channel dim of 1 — return mask.squeeze(0) from the dataset"
        elif y.ndim == 4 and y.shape[-1] in (3, 4):
            fix = (
                f": the mask was read as a colour image ({y.shape[-1]} channels last) — read "
                "it as one channel of class ids (Image.open(path) without .convert('RGB'), or "
                "mask[..., 0] when the channels repeat the id)"
            )
        return Check(
            "data_format",
            "fail",
            f"segmentation targets must be (H, W) masks of class ids, got shape "
            f"{tuple(y.shape[1:])} per sample{fix}",
        )
    return Check("data_format", "pass", desc)


def binary_shape_check(out: torch.Tensor, y: torch.Tensor, name: str) -> Check:
    """BCE losses compare output and target element by element: the shapes must match."""
    if out.shape == y.shape:
        n = 1 if out.ndim == 1 else int(math.prod(out.shape[1:]))
        what = "one logit per sample" if n == 1 else f"{n} outputs per sample"
        return Check(
            "target_range", "pass", f"{what} against {tuple(y.shape[1:]) or 'scalar'} float targets"
        )
    hint = ""
    if out.ndim == y.ndim + 1 and out.shape[-1] == 1:
        hint = ": squeeze the output's last dim (out.squeeze(-1)) or return targets of shape (1,)"
    return Check(
        "target_range",
        "fail",
        f"{name} compares outputs and targets element by element, but the model outputs "
        f"{tuple(out.shape)} for targets {tuple(y.shape)}{hint}",
    )


# ---- the loss against the output ----------------------------------------------------------
def _ce_floor(classes: int) -> float:
    """CrossEntropyLoss on probabilities: best case p(true) = 1, the rest 0."""
    return math.log(1 + (classes - 1) / math.e)


def check_contract(task: str, loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor) -> Check:
    """Does the output's form fit the loss? Names the floor a wrong pairing puts under it."""
    name = loss_name(loss_fn)
    form = output_form(out)
    classes = out.shape[1] if out.ndim >= 2 else 1
    ends = f"the model ends in {form.op}" if form.op else None
    if form.over_batch and name in CLASS_LOSSES and classes >= 2:
        fix = (
            "CrossEntropyLoss applies log-softmax over the classes itself: remove the "
            f"{form.op or 'softmax'} and return raw logits"
            if name == "CrossEntropyLoss"
            else "normalise over the classes: LogSoftmax(dim=1) / F.log_softmax(x, dim=1)"
        )
        return Check("loss_contract", "fail", over_batch_words(form, name, fix))
    if name == "CrossEntropyLoss" and classes >= 2:
        if form.probabilities or (form.op == "sigmoid" and form.unit_interval):
            what = ends or f"the outputs are already {form.words()}"
            layer = form.op or "softmax"
            return Check(
                "loss_contract",
                "fail",
                f"{what} but CrossEntropyLoss applies log-softmax itself: remove the {layer} and "
                f"return raw logits (with it the loss cannot go below ln(1+(C-1)/e) = "
                f"{fmt(_ce_floor(classes))} for {classes} classes, and learning crawls)",
            )
        if form.op in ("relu", "relu6") or (form.lo >= 0 and form.zeros > 0.2):
            return Check(
                "loss_contract",
                "warn",
                f"the logits are never negative ({100 * form.zeros:.0f}% exactly 0: a ReLU on the "
                "output?): CrossEntropyLoss wants unbounded logits — remove the last activation",
            )
    if name == "NLLLoss" and classes >= 2:
        if form.probabilities:
            what = ends or f"the outputs are {form.words()}"
            return Check(
                "loss_contract",
                "fail",
                f"{what}, but NLLLoss expects log-probabilities: with probabilities the loss is "
                "-p(true class), between -1 and 0, negative and with nothing to learn at its floor "
                "— use log_softmax, or drop the softmax and use CrossEntropyLoss",
            )
        if not form.log_probabilities:
            return Check(
                "loss_contract",
                "fail",
                f"NLLLoss expects log-probabilities, but the outputs are raw scores ({form.words()}; "
                "rows do not log-sum-exp to 0): the loss is -score(true class) and falls without "
                "bound — add log_softmax over the class dimension, or use CrossEntropyLoss",
            )
    sigmoid_like = form.op == "sigmoid" or (
        form.unit_interval and form.lo > 0 and out.numel() >= 16
    )
    if name == "BCEWithLogitsLoss" and sigmoid_like:
        what = ends or f"the outputs all lie in ({fmt(form.lo)}, {fmt(form.hi)}) like probabilities"
        best = y.detach().float().clamp(1e-6, 1 - 1e-6)
        s = torch.log(best / (1 - best)).clamp(0, 1).to(out.dtype)
        floor = float(loss_fn(s.reshape(out.shape), y.reshape(out.shape)))
        return Check(
            "loss_contract",
            "fail",
            f"{what} but BCEWithLogitsLoss applies the sigmoid itself: remove the sigmoid and "
            f"return raw logits (with it the loss cannot go below {fmt(floor)} on these targets "
            "— ln(1+1/e) = 0.313 on positives, ln 2 = 0.693 on negatives)",
        )
    if name == "BCELoss" and not form.unit_interval:
        return Check(
            "loss_contract",
            "fail",
            f"BCELoss expects probabilities in [0, 1], but the outputs range over {fmt(form.lo)}.."
            f"{fmt(form.hi)}: use BCEWithLogitsLoss on the raw outputs (or end in a sigmoid)",
        )
    if task == "regression":
        return check_output_range(loss_fn, out, y, form)
    return Check("loss_contract", "pass", f"outputs are {form.words()}, as {name} expects")


def output_range(form: OutputForm) -> tuple[float, float, str] | None:
    """The range the last operation confines outputs to, with the culprit's name."""
    op = form.op
    if op in ("relu", "relu6", "softplus", "exp", "abs") or (
        op == "clamp" and form.lo >= 0 and form.zeros > 0
    ):
        return (
            0.0,
            math.inf,
            {"relu6": "a ReLU6"}.get(op, f"a {op}" if op != "clamp" else "a clamp"),
        )
    if op is None and form.lo >= 0 and form.zeros > 0.2:
        return 0.0, math.inf, "something that clamps at 0 (a ReLU?)"
    if op == "sigmoid":
        return 0.0, 1.0, "a sigmoid"
    if op in ("tanh", "hardtanh"):
        return -1.0, 1.0, f"a {op}"
    return None


def check_output_range(
    loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor, form: OutputForm | None = None
) -> Check:
    """Regression: can the outputs reach the targets at all?"""
    form = form or output_form(out)
    rng = output_range(form)
    name = loss_name(loss_fn)
    if rng is None or out.shape != y.shape:
        return Check("loss_contract", "pass", f"outputs range over {fmt(form.lo)}..{fmt(form.hi)}")
    lo, hi, culprit = rng
    yy = y.detach().to(out.dtype)
    outside = float(((yy < lo) | (yy > hi)).double().mean())
    if outside == 0:
        return Check(
            "loss_contract", "pass", f"targets lie inside the outputs' range ({culprit} at the end)"
        )
    floor = float(loss_fn(yy.clamp(lo, hi), yy))
    centre = yy.mean(0) if name == "MSELoss" else yy.median(0).values
    blind = float(loss_fn(centre.expand_as(yy), yy))
    span = "[0, inf)" if hi == math.inf else f"[{fmt(lo)}, {fmt(hi)}]"
    where = "below 0" if hi == math.inf else f"outside {span}"
    detail = (
        f"the model ends in {culprit}, so it outputs only {span}, but {100 * outside:.0f}% of the "
        f"targets lie {where} (min {fmt(float(yy.min()))}, max {fmt(float(yy.max()))}): {name} "
        f"cannot go below {fmt(floor)} ({100 * floor / max(blind, 1e-12):.0f}% of predicting the mean)"
        " — remove the final activation (or rescale the targets into its range)"
    )
    return Check("loss_contract", "fail" if floor > 0.05 * blind else "warn", detail)


# ---- the loss at init ----------------------------------------------------------------------
def expected_at_init(
    loss_fn: nn.Module, task: str, classes: int | None
) -> tuple[float, str] | None:
    """What a well-initialised model scores before training (uniform classes, zero logits)."""
    name = loss_name(loss_fn)
    if task == "regression":
        return None
    if name in CLASS_LOSSES and classes and classes >= 2:
        if getattr(loss_fn, "weight", None) is not None or getattr(loss_fn, "label_smoothing", 0):
            return None
        return math.log(classes), f"ln {classes} = {math.log(classes):.3f} for {classes} classes"
    plain = (
        getattr(loss_fn, "pos_weight", None) is None and getattr(loss_fn, "weight", None) is None
    )
    if name == "BCEWithLogitsLoss" and plain:
        return math.log(2), "ln 2 = 0.693 for zero logits"
    if name == "BCELoss" and getattr(loss_fn, "weight", None) is None:
        return math.log(2), "ln 2 = 0.693 for probabilities of 0.5"
    return None


def negative_loss(loss: float, name: str) -> Check:
    return Check(
        "loss_at_init",
        "fail",
        f"the loss at init is negative ({fmt(loss)}): {name} has no floor at 0 with these outputs, "
        "so 'the loss fell to a fraction of its start' means nothing — fix the pairing of output "
        "and loss (log-probabilities for NLLLoss, logits for CrossEntropyLoss)",
    )
