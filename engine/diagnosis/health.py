"""Static optimisation health at init: what can train, what the optimizer moves, what flows.

- frozen parameters (``requires_grad=False``) and their share, by the coarsest frozen module;
- trainable parameters the optimizer never sees (an optimizer built on one layer) — they get
  gradients and never change;
- activations dead or saturated at init, from forward hooks on the activation modules: ReLU
  units that stay at 0 on the whole probe batch, tanh/sigmoid outputs pinned at their limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from engine.stages.base import Check


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _names(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _pct(share: float) -> str:
    """'97', or '99.7' near the ends, so a share short of all never reads as 100."""
    return f"{100 * share:.1f}" if share > 0.99 or share < 0.01 else f"{100 * share:.0f}"


def coarsest(model: nn.Module, chosen: set[int]) -> list[str]:
    """The outermost modules whose parameters all belong to ``chosen`` (ids), named with their
    share: 'backbone (1.2M)'; loose parameters are named themselves."""
    out: list[str] = []
    covered: set[int] = set()

    def walk(prefix: str, mod: nn.Module) -> None:
        params = list(mod.parameters())
        if params and all(id(p) in chosen for p in params) and prefix:
            if not all(id(p) in covered for p in params):
                out.append(f"{prefix} ({_human(sum(p.numel() for p in params))})")
                covered.update(id(p) for p in params)
            return
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in chosen and id(p) not in covered:
                out.append(f"{prefix + '.' if prefix else ''}{name} ({_human(p.numel())})")
                covered.add(id(p))
        for name, child in mod.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return out


def check_frozen(model: nn.Module, settings) -> Check:
    params = list({id(p): p for p in model.parameters()}.values())
    total = sum(p.numel() for p in params)
    frozen = [p for p in params if not p.requires_grad]
    n_frozen = sum(p.numel() for p in frozen)
    if not frozen or total == 0:
        return Check("frozen", "pass", "every parameter is trainable")
    share = n_frozen / total
    where = _names(coarsest(model, {id(p) for p in frozen}))
    if share >= 1.0:
        return Check(
            "frozen",
            "fail",
            f"every parameter is frozen (requires_grad=False: {where}): nothing can train — "
            "unfreeze at least the layers you mean to train",
        )
    trainable = _names(coarsest(model, {id(p) for p in params if p.requires_grad}))
    detail = (
        f"{_pct(share)}% of the parameters ({n_frozen:,} of {total:,}) are frozen "
        f"(requires_grad=False): {where}; only {trainable} train"
    )
    if share < settings.frozen_share:
        return Check("frozen", "pass", detail)
    return Check(
        "frozen",
        "warn",
        detail + " — right for a pretrained backbone you fine-tune on top of; if the model "
        "trains from scratch those layers stay random: set requires_grad=True on them",
    )


def check_optimizer(model: nn.Module, optimizer) -> Check:
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        return Check(
            "optimizer_coverage", "skip", f"{type(optimizer).__name__} has no param_groups"
        )
    seen = {id(p) for g in groups for p in g["params"]}
    params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in params if p.requires_grad]
    missing = [p for p in trainable if id(p) not in seen]
    mine = {id(p) for p in params}
    foreign = [p for g in groups for p in g["params"] if id(p) not in mine]
    opt = type(optimizer).__name__
    if foreign:
        return Check(
            "optimizer_coverage",
            "fail",
            f"the optimizer ({opt}) holds {len(foreign)} tensors that are not this model's "
            "parameters: it was built on another model instance — build it on model.parameters()",
        )
    if not missing:
        return Check(
            "optimizer_coverage",
            "pass",
            f"{opt} updates all {len(trainable)} trainable parameter tensors",
        )
    n_missing = sum(p.numel() for p in missing)
    n_all = sum(p.numel() for p in trainable)
    return Check(
        "optimizer_coverage",
        "fail",
        f"the optimizer ({opt}) leaves out {_pct(n_missing / max(n_all, 1))}% of the trainable "
        f"parameters ({n_missing:,} of {n_all:,}): {_names(coarsest(model, {id(p) for p in missing}))} "
        "get gradients but never change — build it on model.parameters() (or set "
        "requires_grad=False on what you mean to freeze)",
    )


# ---- gradients ----
def check_gradients(loss_fn: nn.Module, model: nn.Module, x, y) -> Check:
    """Every trainable parameter must get a finite, non-zero gradient from one backward pass;
    a layer that ran in forward without one means something detaches the graph."""
    ran: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: ran.add(name))
        for name, m in model.named_modules()
    ]
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        loss_fn(model(x), y).backward()
    except RuntimeError as e:
        if "does not require grad" in str(e):
            return Check(
                "gradients",
                "fail",
                "the loss does not depend on any trainable parameter: the forward pass "
                "detaches the graph (.detach(), .item(), .data, torch.no_grad) or every "
                "parameter is frozen",
            )
        raise
    finally:
        for h in hooks:
            h.remove()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return Check(
            "gradients",
            "fail",
            "the model has no trainable parameters (all requires_grad=False)",
        )
    detached, unused, zero, nonfinite = [], [], [], []
    for n, p in trainable:
        owner = n.rpartition(".")[0]
        if p.grad is None:
            (detached if owner in ran else unused).append(n)
        elif not torch.isfinite(p.grad).all():
            nonfinite.append(n)
        elif not p.grad.any():
            zero.append(n)
    model.zero_grad(set_to_none=True)
    if nonfinite:
        return Check("gradients", "fail", f"non-finite gradients at init in {_names(nonfinite)}")
    if detached:
        layers = _by_layer(detached)
        return Check(
            "gradients",
            "fail",
            f"{_names(layers)} ran in forward but got no gradient: something between "
            f"{'it' if len(layers) == 1 else 'them'} and the loss detaches the graph (.detach(), "
            ".item(), .data, torch.no_grad, a numpy round-trip)",
        )
    if unused:
        return Check(
            "gradients",
            "warn",
            f"{_names(unused)} never receive a gradient: defined but not used in forward",
        )
    if zero:
        return Check(
            "gradients",
            "warn",
            f"{_names(zero)} get an all-zero gradient at init (dead ReLUs, or multiplied by zero?)",
        )
    return Check("gradients", "pass", f"all {len(trainable)} parameter tensors receive a gradient")


def _by_layer(params: list[str]) -> list[str]:
    """'features.weight', 'features.bias' -> ['layer features (weight, bias)']."""
    owners: dict[str, list[str]] = {}
    for name in params:
        owner, _, leaf = name.rpartition(".")
        owners.setdefault(owner, []).append(leaf)
    return [f"layer {o or '(model)'} ({', '.join(leaves)})" for o, leaves in owners.items()]


# ---- activations ---------------------------------------------------------------------------
_RELU = (nn.ReLU, nn.ReLU6)
_SATURATING = {nn.Tanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0), nn.Hardtanh: (-1.0, 1.0)}


class ActivationProbe:
    """Forward hooks on activation modules; statistics are reduced inside the hook (on the
    device) and read once, at the end."""

    def __init__(self, model: nn.Module):
        self.modules = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, _RELU) or type(m) in _SATURATING
        ]
        self.stats: dict[str, list] = {}

    @contextmanager
    def hooked(self) -> Iterator[None]:
        hooks = [m.register_forward_hook(self._hook(name)) for name, m in self.modules]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def _hook(self, name: str):
        def hook(mod, inputs, out):
            if not isinstance(out, torch.Tensor) or out.ndim < 2 or not out.is_floating_point():
                return
            o = out.detach()
            if isinstance(mod, _RELU):
                units = self._alive(o)
                self.stats.setdefault(name, []).append(("relu", units))
            else:
                lo, hi = _SATURATING[type(mod)]
                margin = 0.01 * (hi - lo)
                sat = ((o <= lo + margin) | (o >= hi - margin)).float().mean()
                self.stats.setdefault(name, []).append((type(mod).__name__.lower(), sat))

        return hook

    @staticmethod
    def _alive(o: torch.Tensor) -> torch.Tensor:
        """Share of units (channels, dim 1; for 3-D outputs also the last dim) ever positive."""
        pos = o > 0
        dims = [d for d in range(pos.ndim) if d != 1]
        alive = pos.any(dim=dims).float().mean()
        if pos.ndim == 3:  # (B, T, F) sequences keep features last
            alive = torch.maximum(alive, pos.any(dim=(0, 1)).float().mean())
        return alive

    def check(self, settings) -> Check:
        if not self.modules:
            return Check("activations", "skip", "no ReLU, tanh or sigmoid modules to watch")
        dead, saturated, all_dead = [], [], []
        for name, calls in self.stats.items():
            for kind, value in calls:
                v = float(value)  # one host read per call, after the pass
                if kind == "relu":
                    share = 1 - v
                    if share >= 1.0:
                        all_dead.append(name)
                    elif share >= settings.dead_share:
                        dead.append(f"{name} ({100 * share:.0f}% of units)")
                elif v >= settings.saturated_share:
                    saturated.append(f"{name} ({kind}: {100 * v:.0f}% saturated)")
        watched = f"{len(self.modules)} activation layer{'s' if len(self.modules) > 1 else ''}"
        if all_dead:
            return Check(
                "activations",
                "fail",
                f"every unit of ReLU {_names(sorted(set(all_dead)))} is 0 on the whole probe batch "
                "at init: nothing flows past it, so the output does not depend on the input — check "
                "the initialisation of the layer before it (zero or large negative weights/bias) "
                "and the input scale",
            )
        if dead:
            return Check(
                "activations",
                "warn",
                f"dead ReLUs at init (0 for every probe sample): {_names(sorted(set(dead)))} — a "
                "negative bias or a poor init before them; use the default (Kaiming) init, zero "
                "biases, or normalise the inputs",
            )
        if saturated:
            return Check(
                "activations",
                "warn",
                f"saturated activations at init: {_names(sorted(set(saturated)))} — their gradient "
                "is nearly 0; the weights before them are too large (scale them by "
                "1/sqrt(fan_in), Xavier init) or the inputs are not normalised",
            )
        return Check("activations", "pass", f"{watched}: no dead or saturated units at init")
