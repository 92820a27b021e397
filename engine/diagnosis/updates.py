"""Optimisation health in the first steps, measured without touching the loop.

``UpdateMonitor`` hooks the optimizer (``register_step_pre_hook`` / ``register_step_post_hook``)
for the first K steps and records, per layer, the gradient norm and the update-to-weight ratio
‖Δw‖/‖w‖ (around 1e-3 is healthy; far above 1e-2 the learning rate is too high, far below 1e-5
it is too low or the weights are frozen). Forward hooks on ReLU modules record the share of
dead units (zero for every sample of the batch) at the first forward and after K updates.
Values stay on the device as tensors; ``report()`` reads them once, at the stage's end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

RELUS = (nn.ReLU, nn.ReLU6)


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass
class UpdateReport:
    """What the first steps did, read back on the host."""

    layers: list[str] = field(default_factory=list)
    ratios: list[list[float]] = field(default_factory=list)  # per step, per layer
    grad_norms: list[list[float]] = field(default_factory=list)  # per step, per layer
    dead: dict[str, tuple[float, float]] = field(default_factory=dict)  # layer: (first, after)
    not_in_optimizer: list[str] = field(default_factory=list)  # trainable, never stepped
    frozen_share: float = 0.0  # share of parameters with requires_grad=False
    steps: int = 0

    def first_max(self) -> tuple[str, float]:
        """The layer whose first update was largest relative to its weights."""
        if not self.ratios or not self.layers:
            return "", math.nan
        row = self.ratios[0]
        finite = [(r, n) for r, n in zip(row, self.layers) if math.isfinite(r)]
        if not finite:
            return "", math.nan
        r, n = max(finite)
        return n, r

    def typical(self) -> float:
        """The median update ratio over layers and recorded steps."""
        vals = sorted(r for row in self.ratios for r in row if math.isfinite(r))
        return vals[len(vals) // 2] if vals else math.nan

    def largest(self) -> float:
        vals = [r for row in self.ratios for r in row if math.isfinite(r)]
        return max(vals) if vals else math.nan

    def clipped_to(self, limit: float | None) -> bool:
        """Every recorded step's whole gradient norm sat at ``limit``: clip_grad_norm_ cut it
        each time (the optimizer's hooks see the gradient after the clip)."""
        if not limit or not self.grad_norms:
            return False
        totals = [math.sqrt(sum(g * g for g in row if math.isfinite(g))) for row in self.grad_norms]
        return all(abs(t - limit) <= 0.02 * limit for t in totals)

    def died(self) -> list[tuple[str, float, float]]:
        """ReLU layers where most units died during the first steps."""
        return [(name, a, b) for name, (a, b) in self.dead.items() if b >= 0.8 and b - a >= 0.3]

    def to_metrics(self) -> dict[str, float]:
        _, r = self.first_max()
        return {"update_ratio_first_max": r, "update_ratio_median": self.typical()}

    def summary(self) -> str:
        """'update/weight ratio in the first 5 steps: median 2.1e-03, largest 4.0e-02 (net.0)'"""
        if not self.ratios:
            return "no optimizer step was recorded"
        n, r = self.first_max()
        return (
            f"update/weight ratio ‖Δw‖/‖w‖ in the first {self.steps} steps: median "
            f"{self.typical():.1e}, first step up to {r:.1e} ({n}); healthy is about 1e-3"
        )


class UpdateMonitor:
    """Optimizer and forward hooks for the first ``steps`` steps; ``report()`` at the end."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5):
        self.steps = steps
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        named = list(model.named_parameters())
        total = sum(p.numel() for _, p in named) or 1
        self.frozen_share = sum(p.numel() for _, p in named if not p.requires_grad) / total
        self.not_in_optimizer = sorted(
            {_layer_of(n) for n, p in named if p.requires_grad and id(p) not in in_opt}
        )
        groups: dict[str, list[torch.Tensor]] = {}
        for n, p in named:
            if p.requires_grad and id(p) in in_opt:
                groups.setdefault(_layer_of(n), []).append(p)
        self.layer_names = list(groups)
        self.params = [groups[n] for n in self.layer_names]
        self._before: list[list[torch.Tensor]] | None = None
        self._ratios: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []
        self._dead: dict[str, dict[int, list[torch.Tensor]]] = {}
        self.handles = []
        if self.params:
            self.handles += [
                optimizer.register_step_pre_hook(self._pre),
                optimizer.register_step_post_hook(self._post),
            ]
        for name, m in model.named_modules():
            if self.params and isinstance(m, RELUS):
                self.handles.append(m.register_forward_hook(self._relu_hook(name or "relu")))

    def _relu_hook(self, name: str):
        # keyed by optimizer step: a module applied at several places in forward (one
        # nn.ReLU reused, as in torchvision's blocks) is averaged over its calls
        def hook(module, args, out):
            if not module.training or not isinstance(out, torch.Tensor) or out.ndim < 2:
                return
            with torch.no_grad():
                units = out.detach().transpose(0, 1).reshape(out.shape[1], -1)
                dead = (units <= 0).all(1).float().mean()
            self._dead.setdefault(name, {}).setdefault(len(self._ratios), []).append(dead)

        return hook

    @torch.no_grad()
    def _pre(self, optimizer, args, kwargs) -> None:
        if len(self._ratios) >= self.steps:  # the forward after K updates has been seen
            self.close()
            return
        self._before = [[p.detach().clone() for p in ps] for ps in self.params]
        self._grads.append(
            torch.stack(
                [
                    torch.sqrt(
                        sum(
                            (
                                p.grad.detach().float().pow(2).sum()
                                for p in ps
                                if p.grad is not None
                            ),
                            torch.zeros((), device=ps[0].device),
                        )
                    )
                    for ps in self.params
                ]
            )
        )

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        if self._before is None:
            return
        ratios = []
        for ps, before in zip(self.params, self._before):
            dw = sum((p.detach().float() - b.float()).pow(2).sum() for p, b in zip(ps, before))
            w = sum(b.float().pow(2).sum() for b in before)
            ratios.append(
                torch.where(w > 0, torch.sqrt(dw) / torch.sqrt(w).clamp_min(1e-30), torch.nan)
            )
        self._ratios.append(torch.stack(ratios))
        self._before = None

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def report(self) -> UpdateReport:
        """One read of everything recorded (the only host sync of the monitor)."""
        self.close()
        rep = UpdateReport(
            layers=self.layer_names,
            not_in_optimizer=self.not_in_optimizer,
            frozen_share=self.frozen_share,
            steps=len(self._ratios),
        )
        if self._ratios:
            rep.ratios = torch.stack(self._ratios).cpu().tolist()
            rep.grad_norms = torch.stack(self._grads[: len(self._ratios)]).cpu().tolist()
        for name, by_step in self._dead.items():
            first, last = min(by_step), max(by_step)
            if last > first:
                a = torch.stack(by_step[first]).mean()
                b = torch.stack(by_step[last]).mean()
                rep.dead[name] = tuple(torch.stack([a, b]).cpu().tolist())
        return rep


def lr_diagnosis(rep: UpdateReport, lr: float) -> str | None:
    """A sentence naming the learning rate when the first steps show it is far off."""
    layer, first = rep.first_max()
    died = rep.died()
    if died:
        name, a, b = died[0]
        return (
            f"the learning rate {lr:g} wrecks the network in its first steps: {100 * b:.0f}% of the "
            f"units after {name} died (from {100 * a:.0f}% at init) within {rep.steps} updates, and "
            f"the first update moved {layer} by {first:.2g}× its weights (healthy ~1e-3) — lower "
            f"it 10–100×"
        )
    if math.isfinite(first) and first > 0.5:
        return (
            f"the learning rate {lr:g} is far too high: the first update moved {layer} by "
            f"{first:.2g}× its weights (healthy ~1e-3) — lower it 10–100×"
        )
    return None


def stalled_diagnosis(rep: UpdateReport, lr: float, grad_clip: float | None = None) -> str | None:
    """A sentence when the weights barely change: frozen, lr 0 or far too low, gradients
    clipped to nothing, not optimised."""
    if rep.frozen_share >= 0.999 or (not rep.layers and not rep.not_in_optimizer):
        return (
            "every parameter is frozen (requires_grad=False), so nothing can learn: unfreeze the "
            "layers you mean to train"
        )
    if rep.not_in_optimizer and not rep.layers:
        return (
            f"the optimizer holds none of the trainable parameters ({', '.join(rep.not_in_optimizer[:3])}): "
            "build it from model.parameters() of the model being trained"
        )
    med = rep.typical()
    if lr == 0 or (rep.ratios and med == 0):
        return "no weight changed in the first steps: the learning rate is 0"
    parts = []
    if math.isfinite(med) and med < 1e-5 and rep.clipped_to(grad_clip):
        parts.append(
            f"updates move weights by {med:.1e} of their size per step (healthy ~1e-3) because "
            f"grad_clip {grad_clip:g} cut the gradient's norm to {grad_clip:g} at every one of "
            f"the first {rep.steps} steps: the clip, not the learning rate {lr:g}, holds the "
            "model still — remove grad_clip while the ladder runs (a trick for later), or raise "
            "it to about the gradient's own norm"
        )
    elif math.isfinite(med) and med < 1e-5:
        parts.append(
            f"updates move weights by {med:.1e} of their size per step (healthy ~1e-3): the learning "
            f"rate {lr:g} is far too low — raise it 10–100×"
        )
    if rep.frozen_share >= 0.5:
        parts.append(
            f"{100 * rep.frozen_share:.0f}% of the parameters are frozen (requires_grad=False)"
        )
    if rep.not_in_optimizer:
        parts.append(
            f"layers {', '.join(rep.not_in_optimizer[:3])} are trainable but not in the optimizer"
        )
    return "; ".join(parts) or None
