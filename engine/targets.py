"""``_target_`` resolution and instantiation, with errors that name the preset line."""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from engine.torchfree.preset import Preset, PresetError


def add_import_path(folder: Path) -> None:
    """Make the preset's folder importable (``mytask.py`` beside the YAML)."""
    p = str(folder)
    if p not in sys.path:
        sys.path.insert(0, p)


def resolve(preset: Preset, key: str, dotted: str) -> Any:
    """Import ``pkg.mod.attr`` or ``pkg.mod:attr``; PresetError says what is missing."""
    where = f"{key}._target_"
    if ":" in dotted:
        module_name, _, attr_path = dotted.partition(":")
    else:
        module_name, attr_path = _split_longest_module(dotted)
        if module_name is None:
            top = dotted.split(".")[0]
            raise preset.error(
                where,
                f"{where} '{dotted}' cannot be imported: there is no module '{top}' "
                f"(not installed, and no {top}.py beside the preset in {preset.folder}).",
            )
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise preset.error(
            where,
            f"{where} '{dotted}' cannot be imported: no module named '{e.name}' "
            f"(not installed, and no {e.name}.py beside the preset).",
        ) from None
    except Exception as e:  # the user's module itself is broken
        raise preset.error(
            where,
            f"{where} '{dotted}': importing {module_name} failed with {type(e).__name__}: {e}.",
        ) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            match = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f" — did you mean '{match[0]}'?" if match else ""
            raise preset.error(
                where,
                f"{where} '{dotted}' cannot be imported: {getattr(obj, '__name__', module_name)} "
                f"has no attribute '{part}'{hint}",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise preset.error(
            where, f"{where} '{dotted}' is not callable (it is {type(obj).__name__})."
        )
    return obj


def _split_longest_module(dotted: str) -> tuple[str | None, str]:
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            # keep looking only when the missing module is the one we tried (not a dependency)
            if e.name and not name.startswith(e.name) and e.name != name:
                raise
            continue
        return name, ".".join(parts[i:])
    return None, ""


def instantiate(preset: Preset, key: str, *args: Any, **extra: Any) -> Any:
    """Build ``preset[key]``: target(*args, **kwargs); nested ``_target_`` dicts are built too."""
    spec = preset.get(key)
    if spec is None:
        return None
    return _build(preset, key, spec, args, extra)


def _build(preset: Preset, key: str, spec: dict, args: tuple, extra: dict) -> Any:
    fn = resolve(preset, key, spec["_target_"])
    kwargs = {k: _maybe_build(preset, f"{key}.{k}", v) for k, v in spec.items() if k != "_target_"}
    kwargs.update(extra)
    _check_signature(preset, key, fn, args, kwargs)
    if key == "loss":
        kwargs = _weights_as_tensors(kwargs)
    return fn(*args, **kwargs)


_TENSOR_ARGS = ("weight", "pos_weight")  # torch losses take these as tensors, YAML gives lists


def _weights_as_tensors(kwargs: dict) -> dict:
    """``weight: [0.5, 2.0]`` in a preset (what init's imbalance advice suggests) becomes the
    float tensor torch's losses expect."""
    out = dict(kwargs)
    for name in _TENSOR_ARGS:
        value = out.get(name)
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            import torch

            out[name] = torch.tensor(value, dtype=torch.float32)
    return out


def _maybe_build(preset: Preset, key: str, value: Any) -> Any:
    if isinstance(value, dict) and "_target_" in value:
        return _build(preset, key, value, (), {})
    return value


def _check_signature(preset: Preset, key: str, fn: Any, args: tuple, kwargs: dict) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
        message = str(e)
        bad = None
        if "unexpected keyword argument" in message:
            bad = message.split("'")[1]
        if bad:
            match = difflib.get_close_matches(bad, params, n=1, cutoff=0.6)
            hint = f" — did you mean '{match[0]}'?" if match else f"; it takes {', '.join(params)}"
            raise preset.error(
                f"{key}.{bad}", f"{key}: {spec_name(fn)} takes no argument '{bad}'{hint}"
            ) from None
        raise preset.error(
            key, f"{key}: {spec_name(fn)}{sig} cannot be called this way: {message}."
        ) from None


def not_a_loss(obj: Any) -> str:
    """'' when ``obj`` can be the loss (a torch module called with output and target), else
    what it is instead, e.g. 'built a Linear, a layer whose forward takes one input'."""
    from torch import nn

    if isinstance(obj, nn.modules.loss._Loss):
        return ""
    if not isinstance(obj, nn.Module):
        kind = "function" if inspect.isfunction(obj) else type(obj).__name__
        return f"built a {kind}, not a loss"
    try:
        params = list(inspect.signature(obj.forward).parameters.values())
    except (TypeError, ValueError):
        return ""
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return ""
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return (
            f"built a {type(obj).__name__}, a module whose forward takes "
            f"{'one input' if positional else 'no input'} — a layer, not a loss"
        )
    return ""


def spec_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))


__all__ = ["PresetError", "add_import_path", "instantiate", "resolve"]
