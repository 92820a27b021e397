"""A user's own training step: several models and optimizers, dict batches, models that
return their own loss — and the ladder's stages as they apply to such a step.

The contract (``docs/custom-step.md`` has a complete example):

- ``step: {_target_: mytask.gan_step, **kwargs}`` names a callable
  ``step(models, batch, optimizers=None, **kwargs)``. ``models`` is the preset's ``model``
  (one ``model:``) or an ``nn.ModuleDict`` of the preset's ``models:`` (``models.G``,
  ``models["G"]``); ``batch`` is what the DataLoader yields, on the device (a tuple, a list
  or a dict). It returns the loss: a scalar tensor, an output with ``.loss``, or a dict of
  named scalar losses (``"loss"``, else the first entry, is the step's main loss: the
  ladder judges it; every other entry is logged by name to losses.bin and drawn).
- A step whose signature has ``optimizers`` steps them itself (backward and ``step()`` are
  its own — a GAN must). It is called with ``optimizers=None`` for the random val batch: it
  then returns its losses and changes nothing. A step without ``optimizers`` returns a loss
  with its graph, and the engine's ``TrainStep`` does backward, clip and step. A step may
  also take ``update``: ``update(loss, optimizer, parameters=None)`` is ``TrainStep``'s own
  backward + clip + step (gradient scaler included, under fp16).
- ``models: {G: {...}, D: {...}}`` builds one model per name; ``optimizers: {G: {...}}``
  one optimizer per model (a name it does not list gets ``optimizer:``). The ladder sees
  the ModuleDict as one model and the named optimizers as one optimizer (``Optimizers``).
- No ``step:`` and no ``loss:``: a dict batch is fed as ``model(**batch)``, a tuple batch
  as ``model(x, labels=y)`` when the model's forward takes ``labels`` — and the output's
  ``.loss`` (or ``["loss"]``) is the loss, the Hugging Face convention.

Checks that need (input, target) pairs and the preset's loss (target ranges, class
balance, the expected loss at init, batch independence, the input-blind baseline) skip with
the reason; the rest of the ladder runs on the step's main loss.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import default_collate

from engine import targets
from engine.data import move

if TYPE_CHECKING:
    from engine.context import RunContext


# ---------------------------------------------------------------- several optimizers


class Optimizers(Mapping):
    """Named optimizers that the loop, the stages and checkpoints can treat as one: the
    learning rate logged is the first one's; ``zero_grad``/``step``/``state_dict`` act on
    all. ``optimizers.G`` and ``optimizers["G"]`` both work."""

    def __init__(self, named: dict[str, torch.optim.Optimizer]):
        self._named = dict(named)

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self._named[name]

    def __getattr__(self, name: str) -> torch.optim.Optimizer:
        named = self.__dict__.get("_named", {})
        if name in named:
            return named[name]
        raise AttributeError(name)

    def __iter__(self):
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self._named.values() for g in opt.param_groups]

    @property
    def state(self) -> dict:
        out: dict = {}
        for opt in self._named.values():
            out.update(opt.state)
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self._named.values():
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> None:  # the engine never steps them all at once
        for opt in self._named.values():
            opt.step()

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self._named.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self._named.items():
            if name in state:
                opt.load_state_dict(state[name])

    def register_step_pre_hook(self, hook):  # pragma: no cover - diagnosis hooks, per optimizer
        return [opt.register_step_pre_hook(hook) for opt in self._named.values()]

    def register_step_post_hook(self, hook):  # pragma: no cover
        return [opt.register_step_post_hook(hook) for opt in self._named.values()]


class Schedulers:
    """One LR schedule per named optimizer, stepped together."""

    def __init__(self, named: dict[str, Any]):
        self.named = named

    def step(self) -> None:
        for s in self.named.values():
            s.step()


def build_models(ctx: RunContext) -> nn.ModuleDict:
    """``models:`` — one fresh model per name, in one ModuleDict (seeded once, in order)."""
    spec = ctx.preset.get("models") or {}
    built = {}
    for name in spec:
        model = targets.instantiate(ctx.preset, f"models.{name}")
        if not isinstance(model, nn.Module):
            raise targets.PresetError(
                f"{ctx.preset.where(f'models.{name}')}: models.{name}: "
                f"{ctx.preset.get(f'models.{name}._target_')} built a {type(model).__name__}, "
                "not a torch.nn.Module."
            )
        built[str(name)] = model
    return nn.ModuleDict(built).to(ctx.device)


def build_optimizers(
    ctx: RunContext, models: nn.ModuleDict, lr: float | None, no_weight_decay: bool
) -> Optimizers:
    """One optimizer per model: ``optimizers.<name>``, else the preset's ``optimizer``."""
    named = {}
    for name, model in models.items():
        key = f"optimizers.{name}" if ctx.preset.get(f"optimizers.{name}") else "optimizer"
        extra: dict[str, Any] = {}
        if lr is not None:
            extra["lr"] = lr
        if no_weight_decay:
            fn = targets.resolve(ctx.preset, key, ctx.preset.get(key)["_target_"])
            if "weight_decay" in inspect.signature(fn).parameters:
                extra["weight_decay"] = 0.0
        named[name] = targets.instantiate(ctx.preset, key, model.parameters(), **extra)
    return Optimizers(named)


def build_schedulers(ctx: RunContext, optimizers: Optimizers) -> Schedulers:
    return Schedulers(
        {
            name: targets.instantiate(ctx.preset, "scheduler", opt)
            for name, opt in optimizers.items()
        }
    )


# ---------------------------------------------------------------- the step


def _params(fn: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def _takes(fn: Any, name: str) -> bool:
    return name in _params(fn)


class UserStep:
    """How one batch becomes losses when it is not ``loss_fn(model(x), y)``.

    ``kind``: ``step`` (the preset's callable), ``own_loss`` (the model computes it).
    ``losses(models, batch, optimizers=None, engine_step=None)`` returns
    (main loss tensor, named losses or None)."""

    def __init__(
        self,
        kind: str,
        *,
        fn: Any = None,
        kwargs: dict | None = None,
        what: str = "",
        several: bool = False,
        device: torch.device | None = None,
    ):
        self.kind = kind
        self.fn = fn
        self.kwargs = kwargs or {}
        self.what = what  # for messages: "the step mytask.gan_step"
        self.several = several  # models: (a ModuleDict) rather than one model:
        self.device = device or torch.device("cpu")
        self.updates_itself = fn is not None and _takes(fn, "optimizers")
        self.takes_update = fn is not None and _takes(fn, "update")

    def describe(self) -> str:
        if self.kind == "own_loss":
            return "the model computes its own loss"
        own = "steps its optimizers itself" if self.updates_itself else "the engine steps"
        return f"{self.what} ({own})"

    def losses(
        self, models: Any, batch: Any, optimizers: Any = None, engine_step: Any = None
    ) -> tuple[torch.Tensor, dict[str, Any] | None]:
        if self.kind == "own_loss":
            return self._own_loss(models, batch), None
        kw = dict(self.kwargs)
        if self.updates_itself:
            kw["optimizers"] = optimizers
        if self.takes_update:
            kw["update"] = engine_step.update if engine_step is not None else None
        out = self.fn(models, batch, **kw)
        return self._normalise(out, training=optimizers is not None or not self.updates_itself)

    def _own_loss(self, model: Any, batch: Any) -> torch.Tensor:
        if isinstance(batch, Mapping):
            out = model(**batch)
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            out = model(batch[0], labels=batch[1])
        else:
            raise _error(
                f"the batch is a {type(batch).__name__}; a model that computes its own loss gets a "
                "dict batch as model(**batch) or an (input, labels) pair as model(x, labels=y)"
            )
        loss = _loss_of(out)
        if loss is None:
            raise _error(
                f"the model returned a {type(out).__name__} without a loss (no .loss, no 'loss' "
                "key) and the preset has no loss: key — pass the labels so the model computes "
                "its loss, or add loss: {_target_: ...}"
            )
        return self._check_main(loss, "loss", training=torch.is_grad_enabled())

    def _normalise(self, out: Any, training: bool) -> tuple[torch.Tensor, dict | None]:
        named: dict[str, Any] | None = None
        if isinstance(out, torch.Tensor):
            main_name, main = "loss", out
        elif isinstance(out, Mapping):
            if not out:
                raise _error(f"{self.what} returned an empty dict: return at least one loss")
            main_name = "loss" if "loss" in out else next(iter(out))
            main = out[main_name]
            named = {}
            for k, v in out.items():
                if k == "loss" and main_name == "loss":
                    continue
                if isinstance(v, torch.Tensor) and v.numel() != 1:
                    raise _error(
                        f"{self.what} returned loss '{k}' of shape {tuple(v.shape)}: every loss "
                        "it returns must be one number (a scalar tensor, e.g. .mean())"
                    )
                if not isinstance(v, (torch.Tensor, int, float)) or isinstance(v, bool):
                    raise _error(
                        f"{self.what} returned '{k}' as a {type(v).__name__}: return losses as "
                        "scalar tensors or numbers"
                    )
                named[str(k)] = v.reshape(()) if isinstance(v, torch.Tensor) else v
            named = named or None
        elif _loss_of(out) is not None:
            main_name, main = "loss", _loss_of(out)
        else:
            raise _error(
                f"{self.what} returned a {type(out).__name__}: return the loss (a scalar tensor), "
                "an output with .loss, or a dict of named losses"
            )
        if isinstance(main, (int, float)) and not isinstance(main, bool):
            main = torch.tensor(float(main), device=self.device)
        needs_graph = training and not self.updates_itself and torch.is_grad_enabled()
        return self._check_main(main, main_name, needs_graph), named

    def _check_main(self, loss: Any, name: str, training: bool) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor):
            raise _error(
                f"{self.what or 'the model'}'s loss '{name}' is a {type(loss).__name__}, not a tensor"
            )
        if loss.numel() != 1:
            raise _error(
                f"{self.what or 'the model'}'s loss '{name}' has shape {tuple(loss.shape)}: "
                "return one number (a scalar tensor, e.g. .mean())"
            )
        if training and not loss.requires_grad:
            raise _error(
                f"{self.what or 'the model'}'s loss '{name}' has no gradient (it was detached, "
                "or computed under torch.no_grad / with .item()): return the loss tensor itself "
                "— or, if the step updates the models itself, give it an `optimizers` argument"
            )
        return loss.reshape(())


def _loss_of(out: Any) -> torch.Tensor | None:
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(out, Mapping) and isinstance(out.get("loss"), torch.Tensor):
        return out["loss"]
    return None


def _error(message: str) -> Exception:
    from engine.context import UserCodeError

    return UserCodeError(message)


def build(ctx: RunContext, explicit_loss: bool) -> UserStep | None:
    """The run's custom step, or None for the plain ``loss(model(x), y)``."""
    p = ctx.preset
    several = p.get("models") is not None
    if p.get("step") is not None:
        spec = dict(p.get("step"))
        target = spec.pop("_target_")
        fn = targets.resolve(p, "step", target)
        kwargs = {k: targets._maybe_build(p, f"step.{k}", v) for k, v in spec.items()}
        params = _params(fn)
        positional = [
            n
            for n, q in params.items()
            if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD) and n not in kwargs
        ]
        has_var = any(q.kind is q.VAR_POSITIONAL for q in params.values())
        if params and not has_var and len(positional) < 2:
            raise p.error(
                "step._target_",
                f"step: {target} must take (models, batch) first, then optional optimizers and "
                f"its own keyword arguments; it takes ({', '.join(params)}).",
            )
        for k in kwargs:
            if (
                params
                and k not in params
                and not any(q.kind is q.VAR_KEYWORD for q in params.values())
            ):
                hint = targets.difflib.get_close_matches(k, list(params), n=1, cutoff=0.6)
                raise p.error(
                    f"step.{k}",
                    f"step: {target} takes no argument '{k}'"
                    + (
                        f" — did you mean '{hint[0]}'?"
                        if hint
                        else f"; it takes {', '.join(params)}"
                    ),
                )
        return UserStep(
            "step",
            fn=fn,
            kwargs=kwargs,
            what=f"the step {target}",
            several=several,
            device=ctx.device,
        )
    if several:
        raise p.error(
            "models",
            "models: several models need a step: {_target_: mytask.my_step} that says how a batch "
            "trains them (see docs/custom-step.md).",
        )
    if explicit_loss:
        return None
    sample = _first_sample(ctx)
    if isinstance(sample, Mapping):
        return UserStep("own_loss", device=ctx.device)
    target = p.get("model._target_")
    try:
        cls = targets.resolve(p, "model", target)
    except Exception:
        return None
    forward = getattr(cls, "forward", cls)
    if _takes(forward, "labels"):
        return UserStep("own_loss", device=ctx.device)
    return None


def _first_sample(ctx: RunContext) -> Any:
    try:
        return ctx.data.train[0]
    except Exception:
        return None  # init's checks will name the failure


# ---------------------------------------------------------------- batches and structure


def collate_any(dataset: Any, indices: list[int], what: str = "train") -> Any:
    """Samples stacked into one batch, whatever their structure (tuples, dicts)."""
    items = []
    for i in indices:
        try:
            items.append(dataset[i])
        except Exception as e:
            raise _error(f"reading {what} sample {i} failed: {type(e).__name__}: {e}") from e
    try:
        return default_collate(items)
    except Exception as e:
        raise _error(
            f"{what} samples cannot be stacked into a batch ({type(e).__name__}: {e}): every "
            "sample must have the same structure and tensor shapes"
        ) from e


def fixed_batch_any(ctx: RunContext, n: int) -> Any:
    subset = ctx.fixed_subset(n)
    return move(collate_any(ctx.data.train, list(subset.indices)), ctx.device)


def structure(batch: Any) -> str:
    """'dict of image (8, 1, 24, 24) float32, mask (8, 24, 24) int64' for messages."""
    if isinstance(batch, torch.Tensor):
        return f"{tuple(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if isinstance(batch, Mapping):
        return "dict of " + ", ".join(f"{k} {structure(v)}" for k, v in batch.items())
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__} of " + ", ".join(structure(v) for v in batch)
    return type(batch).__name__


def tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [t for v in batch.values() for t in tensors(v)]
    if isinstance(batch, (tuple, list)):
        return [t for v in batch for t in tensors(v)]
    return []


def _same(a: Any, b: Any) -> float:
    """Largest difference between two samples' tensors (inf when the structure differs)."""
    ta, tb = tensors(a), tensors(b)
    if len(ta) != len(tb):
        return math.inf
    worst = 0.0
    for u, v in zip(ta, tb):
        if u.shape != v.shape:
            return math.inf
        if u.numel():
            worst = max(worst, float((u.double() - v.double()).abs().max()))
    return worst


# ---------------------------------------------------------------- the stages, for a custom step


def skip_reason(ctx: RunContext) -> str:
    what = ctx.custom.describe() if ctx.custom is not None else ""
    return f"a custom training step ({what})"


def init_stage(ctx: RunContext, settings: Any) -> Any:
    """init's checks that apply to a custom step: the batch's structure, finite and varying
    tensors, val read twice, parameters per model, tricks, frozen layers, the loss at init and
    parameters that one training step leaves without a gradient."""
    from engine.loop import TrainStep, train_mode
    from engine.stages.base import Check, fmt, from_checks
    from engine.stages.common import regularizers

    checks: list[Check] = []
    metrics: dict[str, float] = {"train_size": len(ctx.data.train), "val_size": len(ctx.data.val)}
    n = min(len(ctx.data.train), max(2, min(settings.samples, 64)))
    batch = move(collate_any(ctx.data.train, list(range(n))), ctx.device)
    checks.append(Check("batch_format", "pass", f"a batch is a {structure(batch)}"))
    bad = [t for t in tensors(batch) if t.is_floating_point() and not torch.isfinite(t).all()]
    checks.append(
        Check(
            "finite_inputs",
            "fail",
            f"{len(bad)} tensor(s) of the batch hold NaN or inf: clean the data",
        )
        if bad
        else Check("finite_inputs", "pass", f"no NaN or inf in {n} samples")
    )
    firsts = [t for t in tensors(batch) if t.is_floating_point() and len(t) > 1]
    if firsts and all(bool((t == t[:1]).all()) for t in firsts):
        checks.append(
            Check(
                "inputs_vary",
                "fail",
                f"all {n} samples are identical: the dataset returns the same sample for every "
                "index (an index ignored in __getitem__?)",
            )
        )
    worst, where = 0.0, None
    for i in range(min(8, len(ctx.data.val))):
        d = _same(ctx.data.val[i], ctx.data.val[i])
        if d > worst:
            worst, where = d, i
    checks.append(
        Check(
            "val_deterministic",
            "fail",
            f"val sample {where} differs between two reads (max difference {fmt(worst)}): the "
            "val set is augmented — never augment val",
        )
        if worst > 0
        else Check("val_deterministic", "pass", "val samples read twice are identical")
    )
    model = ctx.build_model()
    parts = (
        [(name, m) for name, m in model.items()]
        if isinstance(model, nn.ModuleDict)
        else [("", model)]
    )
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in parts}
    params = sum(sizes.values())
    metrics["params"] = params
    shown = ", ".join(f"{name} {_human(k)}" if name else _human(k) for name, k in sizes.items())
    checks.append(
        Check(
            "parameters",
            "warn" if params > settings.max_params else "pass",
            f"{shown} parameters"
            + (
                f": start with under {_human(settings.max_params)}"
                if params > settings.max_params
                else ""
            ),
        )
    )
    optimizer = ctx.build_optimizer(model)
    found = regularizers(model)
    tricks = []
    if found["dropout"]:
        tricks.append(f"dropout ({', '.join(found['dropout'][:3])})")
    if found["batchnorm"]:
        tricks.append(f"batchnorm ×{len(found['batchnorm'])}")
    wd = max((g.get("weight_decay", 0) or 0) for g in optimizer.param_groups)
    if wd:
        tricks.append(f"weight decay {wd:g}")
    checks.append(
        Check(
            "tricks_off",
            "warn",
            f"tricks are on: {'; '.join(tricks)} — the recipe adds them back once the ladder passes",
        )
        if tricks
        else Check("tricks_off", "pass", "no dropout, batchnorm or weight decay")
    )
    step = TrainStep(model, optimizer, ctx.loss_fn, device=ctx.device, custom=ctx.custom)
    val_batch = move(collate_any(ctx.data.val, list(range(min(len(ctx.data.val), n)))), ctx.device)
    loss = float(step.val_loss(val_batch))
    metrics["loss_at_init"] = loss
    checks.append(
        Check(
            "loss_at_init", "pass", f"loss at init {fmt(loss)} (a custom step: no expected value)"
        )
        if math.isfinite(loss)
        else Check(
            "loss_at_init",
            "fail",
            f"the loss at init is {fmt(loss)}: the first outputs are not finite",
        )
    )
    train_mode(model)
    step(batch)
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(torch.isfinite(p.grad).all()))
    ]
    if missing:
        layers = sorted({m.rsplit(".", 1)[0] if "." in m else m for m in missing})
        checks.append(
            Check(
                "gradients",
                "fail",
                f"one training step left {len(missing)} parameter(s) without a finite gradient "
                f"({', '.join(layers[:4])}{'…' if len(layers) > 4 else ''}): a model the step "
                "never trains, or a graph detached between it and its loss",
            )
        )
    else:
        checks.append(Check("gradients", "pass", "one training step reaches every parameter"))
    checks.append(
        Check(
            "pairs_and_loss",
            "skip",
            f"{skip_reason(ctx)}: target ranges, class balance, train/val overlap and the expected "
            "loss at init need (input, target) pairs and the preset's loss",
        )
    )
    return from_checks(
        checks,
        metrics,
        f"{shown} parameters · a batch is a {structure(batch)} · loss at init {fmt(loss)}",
    )


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def overfit_stage(stage: Any, ctx: RunContext) -> Any:
    """Overfit one sample (or a few) through the custom step: its main loss must reach the
    floor (``floor``, default 0) within the budget."""
    from engine.loop import train_loop
    from engine.stages.base import Check, Verdict, fmt
    from engine.stages.common import curve_shape, nonfinite_reason, repeat, switch_off_regularizers

    s = stage.settings
    n = min(s.samples, len(ctx.data.train))
    what = "one sample" if n == 1 else f"{n} samples"
    model = ctx.build_model()
    switched = switch_off_regularizers(ctx, model)
    optimizer = ctx.build_optimizer(model, lr=s.lr, no_weight_decay=True)
    lr = optimizer.param_groups[0]["lr"]
    batch = fixed_batch_any(ctx, n)
    floor = s.floor if s.floor is not None else 0.0
    checks = (
        [Check("regularizers_off", "pass", f"for this stage: {switched}, weight decay 0")]
        if switched
        else []
    )
    first: list[float] = []

    def reached(row) -> bool:
        if not first:
            first.append(row.train_loss)
        gap0 = first[0] - floor
        return gap0 > 0 and row.train_loss - floor <= s.reach * gap0

    result = train_loop(
        ctx, model, optimizer, repeat(batch), steps=s.steps, seconds=s.seconds, until=reached
    )
    start = first[0] if first else math.nan
    last = result.train_losses[-1] if result.rows else math.nan
    metrics = {
        "loss_first": start,
        "loss_last": last,
        "loss_floor": floor,
        "steps": result.steps,
        "seconds": result.seconds,
        "samples": n,
    }
    if result.stopped == "nonfinite":
        reason = (
            nonfinite_reason(result, lr)
            if result.nonfinite_what in ("train", "val")
            else (
                f"the step's loss '{result.nonfinite_what}' became non-finite at step "
                f"{result.nonfinite_step}: lower the learning rate (now {lr:g}) or clip gradients"
            )
        )
        checks.append(Check("loss_reaches_zero", "fail", reason))
        return Verdict("fail", reason, checks, metrics)
    if not start > floor:
        reason = (
            f"the step's loss starts at {fmt(start)}, not above its floor {fmt(floor)}: set "
            f"{stage.name}.floor to the lowest value the loss can take"
        )
        checks.append(Check("loss_reaches_zero", "warn", reason))
        return Verdict("warn", reason, checks, metrics)
    shape = curve_shape(
        result.rows, floor, floor + s.reach * (start - floor), reached=result.stopped == "target"
    )
    if shape.kind == "reached":
        status, reason = (
            "pass",
            (
                f"memorised {what} through the custom step: loss {fmt(start)} → {fmt(last)} in "
                f"{result.steps} steps, {result.seconds:.1f} s"
            ),
        )
    elif shape.kind == "diverged":
        status, reason = (
            "fail",
            (f"diverged on {what}: loss {shape.curve()}; lower the learning rate (now {lr:g})"),
        )
    elif shape.kind in ("falling", "short") or result.stopped == "seconds":
        status, reason = (
            "warn",
            (
                f"the budget ran out while the loss was still falling on {what}: {shape.curve()} "
                f"after {result.steps} steps; raise {stage.name}.steps"
            ),
        )
    else:
        status, reason = (
            "fail",
            (
                f"the custom step's loss did not reach its floor {fmt(floor)} on {what}: "
                f"{shape.curve()} in {result.steps} steps — check that the step trains every model "
                f"it should, or change the learning rate (now {lr:g})"
            ),
        )
    checks.append(Check("loss_reaches_zero", status, reason))
    return Verdict(status, reason, checks, metrics)


def evaluate(
    ctx: RunContext,
    model: nn.Module,
    loader: Any,
    custom: Any = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """The mean main loss over the val loader through the custom step (and its spread)."""
    from engine.loop import TrainStep, train_mode

    custom = custom if custom is not None else ctx.custom
    step = TrainStep(model, None, ctx.loss_fn, device=ctx.device, custom=custom)
    was = model.training
    losses, sizes = [], []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = move(batch, ctx.device)
        losses.append(step.val_loss(batch).double())
        t = tensors(batch)
        sizes.append(len(t[0]) if t and t[0].ndim else 1)
    if was:
        train_mode(model)
    else:
        model.eval()
    if not losses:
        return {"val_loss": math.nan}
    stacked = torch.stack(losses).cpu()
    w = torch.tensor(sizes, dtype=torch.float64)
    out = {"val_loss": float((stacked * w).sum() / w.sum())}
    if len(losses) > 1:
        out["val_loss_se"] = float(stacked.std() / math.sqrt(len(losses)))
    return out


def generalize_stage(stage: Any, ctx: RunContext) -> Any:
    """Full data through the custom step: the full-val loss must fall by more than its noise
    (there is no input-blind baseline to beat: the step's loss is its own)."""
    from engine.loop import train_loop
    from engine.stages.base import Check, Verdict, fmt
    from engine.stages.common import head_mean, nonfinite_reason, tail_mean

    s = stage.settings
    model = ctx.build_model()
    optimizer = ctx.build_optimizer(model)
    scheduler = ctx.build_scheduler(optimizer)
    lr = optimizer.param_groups[0]["lr"]
    val_loader = ctx.val_loader()
    evals: list[tuple[int, dict]] = []

    def run_eval(step: int) -> None:
        m = evaluate(ctx, model, val_loader)
        ctx.log_eval(step, m)
        evals.append((step, m))

    run_eval(0)
    result = train_loop(
        ctx,
        model,
        optimizer,
        ctx.train_batches(),
        steps=s.steps,
        seconds=s.seconds,
        val_batches=ctx.val_batches(),
        val_every=s.val_every,
        scheduler=scheduler,
        every=run_eval,
        every_n=s.eval_every,
    )
    skip = Check(
        "beats_baseline", "skip", f"{skip_reason(ctx)}: no input-blind baseline for its loss"
    )
    if result.stopped == "nonfinite":
        reason = nonfinite_reason(result, lr)
        return Verdict(
            "fail", reason, [Check("val_loss_falls", "fail", reason), skip], {"steps": result.steps}
        )
    end_step = result.last_step or 0
    if not evals or evals[-1][0] != end_step:
        run_eval(end_step)
    start, end = evals[0][1], evals[-1][1]
    noise = 2 * math.hypot(start.get("val_loss_se", 0.0), end.get("val_loss_se", 0.0))
    need = max(s.margin * abs(start["val_loss"]), noise)
    metrics = {
        "val_loss_start": start["val_loss"],
        "val_loss_end": end["val_loss"],
        "val_loss_noise": noise,
        "train_loss_first": head_mean(result.train_losses),
        "train_loss_last": tail_mean(result.train_losses),
        "steps": result.steps,
        "seconds": result.seconds,
    }
    fell = end["val_loss"] < start["val_loss"] - need
    detail = (
        f"val loss {fmt(start['val_loss'])} → {fmt(end['val_loss'])} in {result.steps} steps "
        f"(noise ±{fmt(noise)})"
    )
    if fell:
        check = Check("val_loss_falls", "pass", f"{detail}: the model learned from the data")
        return Verdict("pass", detail, [check, skip], metrics)
    reason = (
        f"{detail}: the val loss did not fall by more than its noise (needed {fmt(need)}) — "
        "the step does not learn anything that carries over to val"
    )
    return Verdict("fail", reason, [Check("val_loss_falls", "fail", reason), skip], metrics)
