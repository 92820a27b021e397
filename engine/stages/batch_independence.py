"""No sample's output may depend on another sample's input.

The gradient of (a random projection of) sample i's output with respect to the whole input
batch must be zero outside row i. A view or reshape that mixes the batch dimension, or a
reduction over dim 0, shows up as a leak. Batchnorm in train mode mixes samples by design
(batch statistics), so the check runs in eval mode, and says so; a second check compares each
sample's output in the batch with its output alone.
"""

from __future__ import annotations

import torch

from engine.context import RunContext
from engine.stages.base import Check, Stage, Verdict, fmt, from_checks
from engine.stages.common import fixed_batch, regularizers


class BatchIndependenceStage(Stage):
    name = "batch_independence"

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        b = max(2, min(s.batch, len(ctx.data.train)))
        if len(ctx.data.train) < 2:
            return Verdict("skip", "needs at least two train samples")
        x, _ = fixed_batch(ctx, b)
        model = ctx.build_model()
        model.eval()
        checks: list[Check] = []
        bn = regularizers(model)["batchnorm"]
        if bn:
            checks.append(
                Check(
                    "batchnorm",
                    "pass",
                    f"{len(bn)} batchnorm layer{'s' if len(bn) > 1 else ''} mix samples in train mode "
                    "by design (batch statistics); checked in eval mode, where they don't",
                )
            )
        if not x.is_floating_point():
            return Verdict(
                "skip",
                f"inputs are {str(x.dtype).removeprefix('torch.')}, not floats: no input gradient to probe",
                checks,
            )
        x = x.clone().requires_grad_(True)
        out = model(x)
        if out.shape[0] != b:
            return Verdict(
                "fail",
                f"the model's output has {out.shape[0]} rows for a batch of {b}: "
                "something reshapes across the batch dimension",
                checks,
            )
        g = torch.Generator(device="cpu").manual_seed(ctx.seed)
        worst_leak, culprit = 0.0, None
        metrics: dict[str, float] = {"batch": b}
        for i in sorted({0, b - 1}):
            weights = torch.randn(out[i].shape, generator=g).to(out.device, out.dtype)
            (grad,) = torch.autograd.grad((out[i] * weights).sum(), x, retain_graph=True)
            per_sample = grad.reshape(b, -1).abs().amax(1)
            own = float(per_sample[i])
            others = per_sample.clone()
            others[i] = 0
            j = int(others.argmax())
            leak = float(others[j])
            if own == 0 and leak == 0:
                checks.append(
                    Check(
                        f"gradient_sample_{i}",
                        "warn",
                        f"sample {i}'s output has zero gradient with respect to every input: "
                        "the output does not depend on the input at all",
                    )
                )
                continue
            rel = leak / max(own, 1e-30)
            if rel > worst_leak:
                worst_leak, culprit = rel, (i, j, leak, own)
        metrics["leak"] = worst_leak
        if culprit and worst_leak > s.tolerance:
            i, j, leak, own = culprit
            checks.append(
                Check(
                    "gradient_isolation",
                    "fail",
                    f"sample {i}'s output depends on sample {j}'s input (gradient {fmt(leak)} vs {fmt(own)} on "
                    f"its own input): something mixes the batch — a view/reshape across the batch dimension "
                    f"(e.g. x.view(-1, …) in the wrong order, a transpose before flatten) or a reduction over dim 0",
                )
            )
        else:
            checks.append(
                Check(
                    "gradient_isolation",
                    "pass",
                    f"gradients of samples' outputs stay in their own rows (largest leak {fmt(worst_leak)})",
                )
            )
        checks.append(self.check_alone(model, x.detach(), out.detach(), metrics))
        return from_checks(
            checks, metrics, f"{b} samples: no output depends on another sample's input"
        )

    @torch.no_grad()
    def check_alone(self, model, x, out, metrics: dict) -> Check:
        """Each sample's output in the batch equals its output alone (eval mode)."""
        diffs = []
        scale = float(out.abs().amax().clamp(min=1e-12))
        for i in (0, len(x) - 1):
            alone = model(x[i : i + 1])
            diffs.append(float((alone[0] - out[i]).abs().amax()) / scale)
        d = max(diffs)
        metrics["alone_vs_batch"] = d
        if d > 1e-3:
            return Check(
                "alone_vs_batch",
                "fail",
                f"a sample's output changes with its batch-mates (relative difference {fmt(d)} between "
                "batch and alone): the forward pass mixes samples",
            )
        return Check(
            "alone_vs_batch", "pass", f"outputs alone and in the batch agree (difference {fmt(d)})"
        )
