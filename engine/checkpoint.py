"""Checkpoints written atomically (temp file, fsync, rename), and warm starts from them."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import torch

from engine.torchfree.runfolder import RunFolder, write_json_atomic

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
    out.mkdir(exist_ok=True)
    name = f"step_{step:09d}.pt"
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__name__ if optimizer is not None else None,
        "step": step,
        "stage": stage,
        **(extra or {}),
    }
    tmp = out / f".{name}.{secrets.token_hex(3)}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / name)
    write_json_atomic(out / "latest.json", {"file": name, "step": step, "stage": stage})
    old = sorted(out.glob("step_*.pt"))[: -KEEP - 1]
    for p in old:
        try:
            p.unlink()
        except OSError:
            pass
    return out / name


def load(path: str | Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=False)


def warm_start(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, str]:
    """Model weights always; optimizer state only where it still fits the new settings.

    Returns (the step to continue from, a sentence on what was restored)."""
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
