"""Before any training: is the data sane, are the splits clean, is the model set up right?

Checks (each a pass / warn / fail with a sentence): data format, finite inputs, every input
identical, targets inside the model's output range (and output/target shapes for regression),
val read twice gives the same thing (no augmentation on val), train/val overlap, class
imbalance with suggested weights, parameter count, regularizers and tricks switched on, loss
at init against its expected value, parameters that never receive a gradient — and, from
engine/diagnosis/: train vs val input statistics and raw input scale, a model that returns no
tensor, randomness in eval mode, the output's form against the loss (softmax before
CrossEntropyLoss, sigmoid before BCEWithLogitsLoss, ReLU on a regression output, with the floor
each puts under the loss), frozen parameters, parameters the optimizer never sees, and dead or
saturated activations. docs/diagnosis-init.md describes each.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.context import RunContext, UserCodeError
from engine.diagnosis import contracts, datastats, health, randomness
from engine.loop import move
from engine.stages.base import Check, Stage, Verdict, fmt, from_checks
from engine.stages.common import collate, reader_kwargs, tricks_check

_ADVICE = {"tricks_off", "parameters", "class_balance"}


def _sample_indices(n: int, k: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(n, k)].tolist()


def _probe(model: nn.Module, x):
    """The untrained model's output on a probe batch, in eval mode and with the graph kept,
    so the output's last operation (softmax, sigmoid, ReLU...) can be read from it."""
    model.eval()
    try:
        return model(x)
    except Exception as e:
        raise UserCodeError(
            f"the model fails on a batch of train inputs {tuple(x.shape)}: {type(e).__name__}: {e}"
            + _dtype_hint(model, x, e)
        ) from e
    finally:
        model.train()


def _dtype_hint(model: nn.Module, x, error: Exception) -> str:
    """The fix when the inputs' float type is not the weights' (numpy's float64 kept by
    torch.from_numpy, or torch.tensor on a numpy array, against float32 weights)."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if not isinstance(x, torch.Tensor) or weight is None or not x.is_floating_point():
        return ""
    words = str(error).lower()
    if x.dtype == weight.dtype or not ("dtype" in words or "scalar type" in words):
        return ""
    xt, wt = str(x.dtype).removeprefix("torch."), str(weight.dtype).removeprefix("torch.")
    origin = " (numpy's default: torch.from_numpy keeps it)" if x.dtype == torch.float64 else ""
    return (
        f" — the inputs are {xt}{origin} and the weights {wt}: return x.float() from the "
        "dataset (or convert the array with .astype('float32'))"
        if wt == "float32"
        else f" — the inputs are {xt} and the weights {wt}: make them the same dtype"
    )


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


class InitStage(Stage):
    name = "init"

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        if ctx.custom is not None:  # a custom training step: the checks that apply to it
            from engine.stages import custom

            return custom.init_stage(ctx, s)
        task = ctx.task
        checks: list[Check] = []
        metrics: dict[str, float] = {
            "train_size": len(ctx.data.train),
            "val_size": len(ctx.data.val),
        }
        idx = _sample_indices(len(ctx.data.train), s.samples, ctx.seed)
        x, y = collate(ctx.data.train, idx, "train")
        checks.append(contracts.check_format(task, x, y, ctx.loss_fn))
        if any(c.status == "fail" for c in checks):
            return from_checks(checks, metrics, "")
        checks.append(self.check_finite(x, y, task))
        checks.append(self.check_inputs_vary(x))
        checks.append(self.check_val_deterministic(ctx))
        checks.append(self.check_overlap(ctx, metrics))
        checks += self.check_input_stats(ctx, x)

        model = ctx.build_model()
        params = sum(p.numel() for p in model.parameters())
        metrics["params"] = params
        probe_x, probe_y = move((x[: min(len(x), 32)], y[: min(len(y), 32)]), ctx.device)
        out = _probe(model, probe_x)
        problem = contracts.describe_non_tensor(out, task)
        if problem:
            checks.append(Check("model_output", "fail", problem))
            return from_checks(checks, metrics, "")
        diff = randomness.eval_difference(model, probe_x, out)
        metrics["eval_difference"] = diff
        checks.append(randomness.check_eval_random(diff, s.eval_tolerance))
        classes = out.shape[1] if task != "regression" and out.ndim >= 2 else None
        if classes:
            metrics["classes"] = classes
        checks.append(self.check_target_range(ctx, task, out, probe_y, y, classes))
        if any(c.status == "fail" for c in checks):  # the checks below would only crash on it
            return from_checks(checks, metrics, "")
        checks.append(contracts.check_contract(task, ctx.loss_fn, out, probe_y))
        out = out.detach()  # the graph was kept only to read the output's last operation
        targets = datastats.check_target_splits(ctx, task, s)
        if targets is not None:
            checks.append(targets)
        if task != "regression" and (classes or out.ndim == 1):
            checks.append(datastats.check_balance(ctx, task, classes or 1, metrics, s))
            split = datastats.check_split_classes(ctx, task, classes or 1, metrics, s)
            if split is not None:
                # val holding other classes also moves its input statistics: the classes
                # are the cause to name first
                shifted = [i for i, c in enumerate(checks) if c.name == "train_val_inputs"]
                at = shifted[0] if split.status != "pass" and shifted else len(checks)
                checks.insert(at, split)
        checks.append(
            Check(
                "parameters",
                "warn" if params > s.max_params else "pass",
                f"{_human(params)} parameters"
                + (
                    f": start with a model under {_human(s.max_params)} and scale up last"
                    if params > s.max_params
                    else ""
                ),
            )
        )
        optimizer = ctx.build_optimizer(model)
        checks.append(self.check_tricks(ctx, model, optimizer))
        checks.append(health.check_frozen(model, s))
        checks.append(health.check_optimizer(model, optimizer))
        loss_check = self.check_loss_at_init(ctx, model, task, classes, metrics)
        contract = next((c for c in checks if c.name == "loss_contract"), None)
        if contract is not None and contract.status == "fail" and loss_check.status == "warn":
            # the output's form explains the loss: advice about the initialisation would send
            # the person to the wrong line
            loss_check = Check(
                "loss_at_init",
                "warn",
                loss_check.detail.split(":", 1)[0] + ": the output's form above explains it, "
                "not the initialisation",
            )
        checks.append(loss_check)
        activations = health.ActivationProbe(model)
        with activations.hooked():
            checks.append(health.check_gradients(ctx.loss_fn, model, probe_x, probe_y))
        checks.append(activations.check(s))
        # advice (tricks on, a big model, imbalance) yields the reason to a diagnosis
        checks.sort(key=lambda c: c.name in _ADVICE)
        ok = "data, splits, model and gradients look right"
        loss_check = next(c for c in checks if c.name == "loss_at_init")
        return from_checks(
            checks, metrics, f"{loss_check.detail} · {_human(params)} parameters · {ok}"
        )

    def check_input_stats(self, ctx: RunContext, x) -> list[Check]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return []
        idx = _sample_indices(len(ctx.data.val), self.settings.val_samples, ctx.seed + 3)
        try:
            xv, _ = collate(ctx.data.val, idx, "val")
        except UserCodeError:  # val inputs of varying size: nothing to compare unit by unit
            return [Check("train_val_inputs", "skip", "val inputs do not stack into one batch")]
        if not isinstance(xv, torch.Tensor):
            return []
        return [
            datastats.check_splits(x, xv, self.settings),
            datastats.check_scale(x, self.settings),
        ]

    # ---- data --------------------------------------------------------------------
    def check_finite(self, x, y, task: str) -> Check:
        bad = []
        if x.is_floating_point():
            rows = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
            if rows.any():
                bad.append(
                    f"{int(rows.sum())} of {len(x)} inputs contain NaN or inf (first: sample {int(rows.nonzero()[0])})"
                )
        if y.is_floating_point():
            rows = ~torch.isfinite(y.reshape(len(y), -1)).all(1)
            if rows.any():
                bad.append(f"{int(rows.sum())} of {len(y)} targets contain NaN or inf")
        if bad:
            return Check(
                "finite_inputs", "fail", "; ".join(bad) + ": clean or drop them in the dataset"
            )
        return Check("finite_inputs", "pass", f"no NaN or inf in {len(x)} samples")

    def check_inputs_vary(self, x) -> Check:
        if len(x) < 2:
            return Check("inputs_vary", "skip", "only one train sample")
        flat = x.reshape(len(x), -1)
        if bool((flat == flat[:1]).all()):
            return Check(
                "inputs_vary",
                "fail",
                f"all {len(x)} sampled inputs are identical: the dataset returns the same input "
                "for every index (an index ignored in __getitem__?)",
            )
        return Check("inputs_vary", "pass", "inputs differ from sample to sample")

    def check_val_deterministic(self, ctx: RunContext) -> Check:
        idx = _sample_indices(len(ctx.data.val), 8, ctx.seed + 7)
        worst, where = 0.0, None
        for i in idx:
            a, b = ctx.data.val[i], ctx.data.val[i]
            for part, (u, v) in (("input", (a[0], b[0])), ("target", (a[1], b[1]))):
                u, v = torch.as_tensor(u), torch.as_tensor(v)
                if u.shape != v.shape:
                    return Check(
                        "val_deterministic",
                        "fail",
                        f"val sample {i} changes shape between two reads: the val set is augmented "
                        "(random crops?) — build it without random transforms",
                    )
                d = float((u.double() - v.double()).abs().max()) if u.numel() else 0.0
                if d > worst:
                    worst, where = d, (i, part)
        if worst > 0:
            i, part = where
            return Check(
                "val_deterministic",
                "fail",
                f"val sample {i} returns a different {part} each read (max difference {fmt(worst)}): "
                "the val set is augmented — never augment val; build it without random transforms",
            )
        return Check(
            "val_deterministic", "pass", f"{len(idx)} val samples read twice are identical"
        )

    def check_overlap(self, ctx: RunContext, metrics: dict) -> Check:
        n = self.settings.overlap_samples
        tr = _fingerprints(ctx.data.train, n, reader_kwargs(ctx))
        va = _fingerprints(ctx.data.val, n, reader_kwargs(ctx))
        if tr is None or va is None:
            return Check("train_val_overlap", "skip", "inputs are not tensors of one shape")
        shared = sum(1 for k in va if k in tr)
        # only a sample of train was hashed: scale up to estimate the share over all of it
        frac = min(1.0, shared / max(len(va), 1) * len(ctx.data.train) / max(len(tr), 1))
        metrics["overlap_fraction"] = frac
        checked = f"{len(va)} val against {len(tr)} train samples"
        if shared == 0:
            return Check("train_val_overlap", "pass", f"no val input appears in train ({checked})")
        status = "fail" if frac >= 0.05 else "warn"
        estimate = "" if len(tr) >= len(ctx.data.train) else ", estimated over the whole train set"
        return Check(
            "train_val_overlap",
            status,
            f"{shared} of {len(va)} val inputs also appear in train ({checked}; "
            f"{100 * frac:.1f}% of val{estimate}): val metrics will flatter the model — "
            "de-duplicate, and split before augmenting",
        )

    def check_target_range(self, ctx, task: str, out, probe_y, y, classes) -> Check:
        if task == "regression":
            if out.shape != probe_y.shape:
                hint = ""
                if out.ndim == probe_y.ndim + 1 and out.shape[-1] == 1:
                    hint = (
                        f": MSE/L1 losses broadcast {tuple(out.shape)} against {tuple(probe_y.shape)} to "
                        f"({len(out)}, {len(out)}) and learn only the mean — squeeze the output's last dim"
                    )
                return Check(
                    "target_range",
                    "fail",
                    f"model output {tuple(out.shape)} and targets {tuple(probe_y.shape)} differ in shape{hint}",
                )
            return Check("target_range", "pass", f"outputs match targets {tuple(out.shape[1:])}")
        kind = contracts.target_kind(probe_y, ctx.loss_fn)
        if kind == "binary":
            return contracts.binary_shape_check(out, probe_y, contracts.loss_name(ctx.loss_fn))
        if kind == "class_probabilities":
            fits = out.shape == probe_y.shape
            return Check(
                "target_range",
                "pass" if fits else "fail",
                f"class-probability targets {tuple(probe_y.shape)} "
                + ("fit the outputs" if fits else f"do not match the outputs {tuple(out.shape)}"),
            )
        if out.ndim < 2:
            return Check(
                "target_range",
                "fail",
                f"the model outputs shape {tuple(out.shape)}; {task} needs (batch, classes, ...)",
            )
        if task == "segmentation" and out.shape[2:] != probe_y.shape[1:]:
            return Check(
                "target_range",
                "fail",
                f"the model outputs {tuple(out.shape)} but masks are {tuple(probe_y.shape)}: "
                "segmentation needs (B, C, H, W) logits for (B, H, W) masks",
            )
        ignore = getattr(ctx.loss_fn, "ignore_index", None)
        vals = y[y != ignore] if ignore is not None else y.reshape(-1)
        lo, hi = int(vals.min()), int(vals.max())
        if lo < 0 or hi >= classes:
            return Check(
                "target_range",
                "fail",
                f"targets range over {lo}..{hi}, but the model outputs "
                f"{classes} class{'es' if classes != 1 else ''} (ids 0..{classes - 1}): "
                f"set the model's output size to {max(hi + 1, classes)}, or remap the labels",
            )
        return Check(
            "target_range", "pass", f"targets {lo}..{hi} fit the model's {classes} outputs"
        )

    # ---- model -------------------------------------------------------------------
    def check_tricks(self, ctx: RunContext, model: nn.Module, optimizer) -> Check:
        return tricks_check(model, optimizer, ctx.preset.get("scheduler._target_"))

    def check_loss_at_init(self, ctx, model, task: str, classes, metrics: dict) -> Check:
        s = self.settings
        loader = ctx.train_loader(workers=False)
        losses, ys = [], []
        model.eval()
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= s.batches:
                    break
                bx, by = move(batch, ctx.device)
                losses.append(float(ctx.loss_fn(model(bx), by)))
                ys.append(by)
        model.train()
        loss = sum(losses) / len(losses)
        metrics["loss_at_init"] = loss
        name = type(ctx.loss_fn).__name__
        expected, why = contracts.expected_at_init(ctx.loss_fn, task, classes) or (None, "")
        if math.isfinite(loss) and loss < 0:
            return contracts.negative_loss(loss, name)
        if task == "regression" and name in contracts.REGRESSION_LOSSES:
            yy = torch.cat(ys).float()
            centre = yy.mean(0) if name == "MSELoss" else yy.median(0).values
            expected = float(ctx.loss_fn(centre.expand_as(yy), yy))
            metrics["loss_of_mean_predictor"] = expected
            big = loss > 4 * expected + 1e-8
            if not math.isfinite(loss):
                return Check(
                    "loss_at_init",
                    "fail",
                    f"the loss at init is {fmt(loss)}: the model's first outputs are not finite",
                )
            if big:
                return Check(
                    "loss_at_init",
                    "warn",
                    f"loss at init {fmt(loss)} is {loss / max(expected, 1e-12):.0f}× what predicting the "
                    f"target mean gives ({fmt(expected)}): targets average "
                    f"{', '.join(fmt(v) for v in yy.mean(0).reshape(-1)[:3].tolist())} — "
                    "initialise the last bias to it, or normalise the targets",
                )
            return Check(
                "loss_at_init",
                "pass",
                f"loss at init {fmt(loss)} (predicting the target mean: {fmt(expected)})",
            )
        if not math.isfinite(loss):
            return Check(
                "loss_at_init",
                "fail",
                f"the loss at init is {fmt(loss)}: the model's first outputs are not finite",
            )
        if expected is None:
            return Check(
                "loss_at_init",
                "pass",
                f"loss at init {fmt(loss)} ({name}: no expected value to compare)",
            )
        metrics["expected_loss_at_init"] = expected
        off = (loss - expected) / expected
        if abs(off) <= s.loss_tolerance:
            return Check("loss_at_init", "pass", f"loss at init {fmt(loss)} ≈ {why}")
        if off > 0:
            return Check(
                "loss_at_init",
                "warn",
                f"loss at init {fmt(loss)} is {loss / expected:.1f}× the expected {why}: the "
                "model is confidently wrong from the start — scale down the last layer's initial "
                "weights (or zero its bias)",
            )
        return Check(
            "loss_at_init",
            "warn",
            f"loss at init {fmt(loss)} is far below the expected {why}: the untrained model "
            "already predicts well — do the targets leak into the inputs?",
        )


def _fingerprints(dataset, n: int, loader_kwargs: dict) -> dict | None:
    """Hashable fingerprints of up to n inputs: two random projections, rounded."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        xs = tensors[0][:n]
    else:
        from torch.utils.data import DataLoader, Subset

        idx = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).long().unique().tolist()
        try:
            xs = torch.cat(
                [
                    torch.as_tensor(x)
                    for x, _ in DataLoader(Subset(dataset, idx), batch_size=64, **loader_kwargs)
                ]
            )
        except (RuntimeError, TypeError, ValueError):
            return None  # inputs that don't stack (variable sizes): nothing to hash here
    flat = xs.reshape(len(xs), -1).double()
    g = torch.Generator().manual_seed(1234)
    proj = flat @ torch.randn(flat.shape[1], 2, generator=g, dtype=torch.float64)
    return {(float(f"{a:.9g}"), float(f"{b:.9g}")): i for i, (a, b) in enumerate(proj.tolist())}
