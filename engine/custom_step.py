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
from engine.errors import UserCodeError

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
        """Each optimizer's state by name, with their param_groups side by side (what a warm
        start compares with the new optimizers' before it restores anything)."""
        named = {name: opt.state_dict() for name, opt in self._named.items()}
        groups = [g for sd in named.values() for g in sd["param_groups"]]
        return {"param_groups": groups, "state": {}, "optimizers": named}

    def load_state_dict(self, state: dict) -> None:
        named = state.get("optimizers", state)
        for name, opt in self._named.items():
            if name in named:
                opt.load_state_dict(named[name])

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
    return UserCodeError(message)


def build(ctx: RunContext, explicit_loss: bool) -> UserStep | None:
    """The run's custom step, or None for the plain ``loss(model(x), y)``."""
    p = ctx.preset
    several = p.get("models") is not None
    if several or p.get("step") is not None:
        from engine.distributed.common import world_size

        if world_size(p) > 1:
            raise p.error(
                "gpus",
                f"gpus: {p.get('gpus')} trains under DDP, which wraps one model; a preset with "
                f"{'models' if several else 'step'}: runs in one process — set gpus: 1.",
            )
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
