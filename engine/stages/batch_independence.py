"""No sample's output may depend on another sample's input.

The gradient of (a random projection of) sample i's output with respect to the whole input
batch must be zero outside row i. A view or reshape that mixes the batch dimension, or a
reduction over dim 0, shows up as a leak. Batchnorm in train mode mixes samples by design
(batch statistics), so the check runs in eval mode, and says so; a second check compares each
sample's output in the batch with its output alone.

Token and integer inputs have no input gradient: the gradient check then runs on the output of
the first ``nn.Embedding`` (one row per sample, like the input), and the alone-vs-batch
comparison needs no gradient at all. A model that is random in eval mode (functional dropout)
is measured first and named as such: its outputs differ between any two passes, which says
nothing about mixing the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.context import RunContext
from engine.diagnosis import contracts, randomness
from engine.stages.base import Check, Stage, Verdict, fmt, from_checks
from engine.stages.common import fixed_batch, regularizers


class BatchIndependenceStage(Stage):
    name = "batch_independence"

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        if ctx.custom is not None:
            from engine.stages import custom

            return Verdict(
                "skip",
                f"{custom.skip_reason(ctx)}: the check feeds model(x) one sample at a time, "
                "and the step decides what a model gets",
            )
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
        with torch.no_grad():
            first = model(x)
        problem = contracts.describe_non_tensor(first, ctx.task)
        if problem:
            return Verdict("fail", problem, checks)
        metrics: dict[str, float] = {"batch": b}
        diff = randomness.eval_difference(model, x, first)
        metrics["eval_difference"] = diff
        random = diff > s.eval_tolerance
        if random:
            checks.append(randomness.check_eval_random(diff, s.eval_tolerance))
        wrt, out = self.gradient_probe(model, x)
        if out.shape[0] != b:
            return Verdict(
                "fail",
                f"the model's output has {out.shape[0]} rows for a batch of {b}: "
                "something reshapes across the batch dimension",
                checks,
            )
        if wrt is None:
            checks.append(
                Check(
                    "gradient_isolation",
                    "skip",
                    f"inputs are {str(x.dtype).removeprefix('torch.')} and no nn.Embedding "
                    "takes the batch as its input, so there is no gradient to probe: only the "
                    "alone-vs-batch comparison runs",
                )
            )
            checks.append(self.check_alone(model, x, first, metrics, random))
            return from_checks(
                checks, metrics, f"{b} samples: outputs alone and in the batch agree"
            )
        via = (
            "" if x.is_floating_point() else " (at the embedding output: the inputs are token ids)"
        )
        g = torch.Generator(device="cpu").manual_seed(ctx.seed)
        worst_leak, culprit = 0.0, None
        for i in sorted({0, b - 1}):
            weights = torch.randn(out[i].shape, generator=g).to(out.device, out.dtype)
            (grad,) = torch.autograd.grad((out[i] * weights).sum(), wrt, retain_graph=True)
            per_sample = grad.movedim(self.batch_dim, 0).reshape(b, -1).abs().amax(1)
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
                    f"sample {i}'s output depends on sample {j}'s input{via} (gradient {fmt(leak)} vs "
                    f"{fmt(own)} on its own input): something mixes the batch — a view/reshape across the batch dimension "
                    "(e.g. x.view(-1, …) in the wrong order, a transpose before flatten), an RNN "
                    "fed (batch, seq, ...) without batch_first=True, or a reduction over dim 0",
                )
            )
        else:
            checks.append(
                Check(
                    "gradient_isolation",
                    "pass",
                    f"gradients of samples' outputs stay in their own rows{via} (largest leak "
                    f"{fmt(worst_leak)})",
                )
            )
        checks.append(self.check_alone(model, x, first, metrics, random))
        return from_checks(
            checks, metrics, f"{b} samples: no output depends on another sample's input"
        )

    def gradient_probe(self, model: nn.Module, x: torch.Tensor):
        """(tensor to take gradients at, output): the input itself for float inputs, else the
        first nn.Embedding's output when its input is the token batch (or its transpose)."""
        self.batch_dim = 0
        if x.is_floating_point():
            wrt = x.clone().requires_grad_(True)
            return wrt, model(wrt)
        emb = next(
            (m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))), None
        )
        if emb is None:
            with torch.no_grad():
                return None, model(x)
        captured: list[torch.Tensor] = []

        def hook(mod, inputs, output):
            if captured or not isinstance(output, torch.Tensor):
                return None
            ids = inputs[0] if inputs else None
            if isinstance(ids, torch.Tensor) and ids.shape == x.shape:
                dim = 0
            elif isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape == x.shape[::-1]:
                dim = 1  # a sequence-first model transposed the batch before embedding it
            else:
                return None
            self.batch_dim = dim
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf

        handle = emb.register_forward_hook(hook)
        try:
            out = model(x)
        finally:
            handle.remove()
        if not captured:
            return None, out.detach()
        return captured[0], out

    @torch.no_grad()
    def check_alone(self, model, x, out, metrics: dict, random: bool = False) -> Check:
        """Each sample's output in the batch equals its output alone (eval mode)."""
        if random:
            return Check(
                "alone_vs_batch",
                "skip",
                "the model is random in eval mode: comparing a sample alone and in the batch would "
                "only measure that noise",
            )
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
