"""Checkpoints written atomically (temp file, fsync, rename), and warm starts from them.

Loading is safe against planted files: only a ``step_<N>.pt`` regular file right inside a
``checkpoints/`` folder is opened, and only with ``torch.load(weights_only=True)`` — tensors,
numbers, strings and containers, never code. A full disk while saving is an ``OSError``
naming the file (not torch's internal error), and the half-written temp file is removed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

from engine.torchfree.preset import PresetError
from engine.torchfree.runfolder import (
    RunFolder,
    confined_checkpoint,
    file_mode,
    write_all,
    write_json_atomic,
)


class CheckpointError(PresetError):
    """A checkpoint that may not or cannot be loaded; the message says which and why."""


class _FdWriter:
    """What torch.save writes through: keeps the OSError (ENOSPC) that torch would otherwise
    turn into 'enforce fail at inline_container.cc'."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            write_all(self.fd, data)
        except OSError as e:
            self.error = e
            raise
        return len(data)

    def flush(self) -> None:
        pass


KEEP = 3  # step checkpoints kept besides the newest


def save(
    folder: RunFolder,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    stage: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    out = folder.file("checkpoints")
    if not out.is_dir():  # as private as the run folder it is in (0700 unless shared)
        out.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(out, stat.S_IMODE(os.stat(folder.path).st_mode))
    name = f"step_{step:09d}.pt"
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__name__ if optimizer is not None else None,
        "step": step,
        "stage": stage,
        **(extra or {}),
    }
    tmp = out / f".{name}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    writer = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode(out))
        try:
            writer = _FdWriter(fd)
            torch.save(state, writer)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out / name)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = writer.error if writer is not None and writer.error is not None else e
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror or str(cause), str(out / name)) from None
        raise
    write_json_atomic(out / "latest.json", {"file": name, "step": step, "stage": stage})
    old = sorted(out.glob("step_*.pt"))[: -KEEP - 1]
    for p in old:
        try:
            p.unlink()
        except OSError:
            pass
    return out / name


def load(path: str | Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint written by ``save``; CheckpointError for anything else."""
    path = Path(path)
    if path.parent.name != "checkpoints":
        raise CheckpointError(
            f"{path}: a warm start loads only from a run's checkpoints folder; refused."
        )
    confined, problem = confined_checkpoint(path.parent.parent, path.name)
    if confined is None:
        raise CheckpointError(f"{problem}.")
    try:
        state = torch.load(confined, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{confined} holds more than tensors and numbers, so it is not loaded "
            f"(weights_only): {first[:200]}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{confined} cannot be read as a checkpoint (truncated or not one): {first[:200]}."
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{confined} is not a cockpit checkpoint (no model state in it).")
    return state


def warm_start(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, str]:
    """Model weights always; optimizer state only where it still fits the new settings.

    Returns (the step to continue from, a sentence on what was restored). Weights that do not
    fit the model raise UserCodeError listing the parameters and their shapes."""
    problem = state_dict_mismatch(state["model"], model.state_dict())
    if problem:
        from engine.context import UserCodeError

        raise UserCodeError(
            f"the parent's checkpoint does not fit this model: {problem}; fork without --warm, "
            "or keep the layers the same"
        )
    model.load_state_dict(state["model"])
    note = "model weights"
    saved = state.get("optimizer")
    if saved is not None:
        current = optimizer.state_dict()
        same_kind = state.get("optimizer_class") in (None, type(optimizer).__name__)
        shapes_fit = len(saved["param_groups"]) == len(current["param_groups"]) and all(
            len(a["params"]) == len(b["params"])
            for a, b in zip(saved["param_groups"], current["param_groups"])
        )
        if same_kind and shapes_fit:
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in current["param_groups"]]
            try:
                optimizer.load_state_dict(saved)
            except (ValueError, KeyError, RuntimeError) as e:
                note += f" (optimizer state not restored: {e})"
            else:
                # keep the new hyperparameters (the point of a fork), restore the moments
                for group, new in zip(optimizer.param_groups, fresh):
                    group.update(new)
                note += " and optimizer state"
        else:
            note += " (optimizer state does not fit the new optimizer: started fresh)"
    return int(state.get("step", 0)), note


def state_dict_mismatch(saved: dict[str, Any], current: dict[str, Any], shown: int = 4) -> str:
    """'' when ``saved`` loads into a model whose state dict is ``current``; else which
    parameters differ in shape, are missing or are unexpected, with their shapes."""

    def shape(t: Any) -> str:
        return "×".join(map(str, tuple(t.shape))) if hasattr(t, "shape") else type(t).__name__

    parts = []
    sized = [
        f"{k} is {shape(saved[k])} in the checkpoint but {shape(current[k])} in the model"
        for k in current
        if k in saved
        and hasattr(saved[k], "shape")
        and tuple(saved[k].shape) != tuple(current[k].shape)
    ]
    missing = [f"{k} ({shape(current[k])})" for k in current if k not in saved]
    extra = [f"{k} ({shape(saved[k])})" for k in saved if k not in current]
    for items, label in (
        (sized, ""),
        (missing, "missing from the checkpoint: "),
        (extra, "in the checkpoint but not in the model: "),
    ):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            parts.append(label + ", ".join(items[:shown]) + more)
    return "; ".join(parts)
