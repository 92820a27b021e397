"""Randomness in eval mode, measured: two eval-mode passes on the same input must agree.

``nn.Dropout`` switches off in eval mode; ``F.dropout(x, p)`` (training defaults to True),
``torch.rand``/``randn_like`` noise and random masks in forward do not. A model that is random
in eval mode makes val metrics noisy and predictions irreproducible — and makes a sample's
output differ between two passes, which is not the same thing as mixing the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.stages.base import Check, fmt


def eval_difference(model: nn.Module, x: torch.Tensor, first: torch.Tensor | None = None) -> float:
    """Largest difference between two eval-mode passes on ``x``, relative to the output's
    scale (0 for a deterministic model). ``first`` reuses a pass already made."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = first if first is not None else model(x)
            b = model(x)
    finally:
        model.train(was)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return 0.0
    scale = float(a.detach().abs().amax().clamp(min=1e-12))
    return float((a.detach() - b).abs().amax()) / scale


def check_eval_random(diff: float, tolerance: float) -> Check:
    if diff <= tolerance:
        return Check(
            "eval_deterministic",
            "pass",
            f"two eval-mode passes on the same input agree (difference {fmt(diff)})",
        )
    return Check(
        "eval_deterministic",
        "warn",
        f"the model is random in eval mode: two eval-mode passes on the same input differ by "
        f"{fmt(diff)} (relative) — functional dropout F.dropout(x, p) without "
        "training=self.training, or random noise/masks in forward; use nn.Dropout or pass "
        "training=self.training, and draw noise only when self.training",
    )
