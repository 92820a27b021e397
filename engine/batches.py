"""The batch before the net: what the model really receives, written into the run folder.

At the start of a run the engine takes the first batch of the train loader and the first
batch of the val loader — after the dataset, its transforms, collation and the DataLoader
(workers included) — and writes ``batches/train.json`` and ``batches/val.json``: for every
tensor of the batch its role, shape, dtype, what kind of data it looks like, per-channel
statistics and a small downsampled copy of its values (a few samples). Plain JSON, so
``cockpit show RUN`` and the app read it without torch.

Layout of one file::

    {"split": "train", "task": "classification", "batch_size": 32, "structure": "(input, target)",
     "tensors": [{"name": "input", "kind": "image", "shape": [32, 1, 24, 24], "dtype": "float32",
                  "stats": {"min": .., "max": .., "mean": .., "std": ..},
                  "channels": [{"min": .., "max": .., "mean": .., "std": ..}],
                  "samples": 8, "stride": 1, "values": [[[[...]]]]}, ...]}

Kinds: ``image`` (float (B, C, H, W)), ``mask`` (integer (B, H, W)), ``labels`` (integer (B,)),
``tokens`` (integer (B, T)), ``table`` (float (B, F): tabular rows or regression targets),
``values`` (float (B,)), ``array`` (anything else: statistics and a flattened head).

Writing never breaks a run: a failure is one line in engine.log.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.torchfree.runfolder import write_json_atomic

SAMPLES = 8  # samples kept per tensor
MAX_SIDE = 48  # images and masks are strided down to at most this many pixels a side
MAX_TOKENS = 64
MAX_COLUMNS = 32
MAX_CHANNELS = 4


def _round(x: float) -> float | None:
    if not math.isfinite(x):
        return None
    return float(f"{x:.4g}")


def _stats(t: torch.Tensor) -> dict[str, Any]:
    f = t.detach().double()
    finite = torch.isfinite(f)
    out: dict[str, Any] = {"nonfinite": int((~finite).sum())}
    f = f[finite]
    if f.numel() == 0:
        return out
    out.update(
        min=_round(float(f.min())),
        max=_round(float(f.max())),
        mean=_round(float(f.mean())),
        std=_round(float(f.std())) if f.numel() > 1 else 0.0,
    )
    return out


def kind_of(t: torch.Tensor) -> str:
    floating = t.is_floating_point()
    if floating and t.ndim == 4:
        return "image"
    if not floating and t.ndim == 3:
        return "mask"
    if not floating and t.ndim == 1:
        return "labels"
    if not floating and t.ndim == 2:
        return "tokens"
    if floating and t.ndim == 2:
        return "table"
    if floating and t.ndim == 1:
        return "values"
    return "array"


def _nested(t: torch.Tensor) -> list:
    if t.is_floating_point():
        return [[_round(v) for v in row] for row in t.reshape(-1, t.shape[-1]).tolist()]
    return t.reshape(-1, t.shape[-1]).tolist()


def describe(name: str, t: torch.Tensor) -> dict[str, Any]:
    """One tensor of a batch, as batches/*.json stores it."""
    t = t.detach().cpu()
    kind = kind_of(t)
    out: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "stats": _stats(t) if t.numel() else {},
    }
    if t.ndim == 0:
        out["values"] = [_round(float(t))] if t.is_floating_point() else [int(t)]
        return out
    head = t[:SAMPLES]
    out["samples"] = len(head)
    if kind == "image":
        out["channels"] = [_stats(t[:, c]) for c in range(min(t.shape[1], 16))]
        stride = max(1, math.ceil(max(t.shape[2:]) / MAX_SIDE))
        img = head[:, :MAX_CHANNELS, ::stride, ::stride].float()
        out["stride"] = stride
        out["values"] = [[_nested(ch) for ch in sample] for sample in img]
    elif kind == "mask":
        stride = max(1, math.ceil(max(t.shape[1:]) / MAX_SIDE))
        out["stride"] = stride
        out["values"] = [_nested(m) for m in head[:, ::stride, ::stride]]
        out["classes"] = sorted(int(v) for v in t.unique()[:64])
    elif kind == "labels":
        out["values"] = t[:64].tolist()
        values, counts = t.unique(return_counts=True)
        out["counts"] = {str(int(v)): int(c) for v, c in zip(values[:64], counts[:64])}
    elif kind == "tokens":
        out["values"] = head[:, :MAX_TOKENS].tolist()
    elif kind == "table":
        out["channels"] = [_stats(t[:, c]) for c in range(min(t.shape[1], MAX_COLUMNS))]
        out["values"] = _nested(head[:, :MAX_COLUMNS].float())
    elif kind == "values":
        out["values"] = [_round(v) for v in t[:64].float().tolist()]
    else:
        flat = head.reshape(len(head), -1)[:, :MAX_COLUMNS]
        out["values"] = _nested(flat.float()) if t.is_floating_point() else flat.tolist()
    return out


def flatten(batch: Any, roles: tuple[str, ...] = ("input", "target")) -> list[tuple[str, Any]]:
    """(name, tensor) pairs of a batch: a tuple's items by role, a dict's by key, nested
    containers with dotted names; things that are not tensors are left out."""
    if isinstance(batch, torch.Tensor):
        return [("input", batch)]
    if isinstance(batch, dict):
        items = [(str(k), v) for k, v in batch.items()]
    elif isinstance(batch, (list, tuple)):
        names = roles if len(batch) == len(roles) else tuple(f"item{i}" for i in range(len(batch)))
        items = list(zip(names, batch))
    else:
        return []
    out = []
    for name, value in items:
        if isinstance(value, torch.Tensor):
            out.append((name, value))
        elif isinstance(value, (dict, list, tuple)):
            out += [(f"{name}.{sub}", t) for sub, t in flatten(value, ())]
    return out


def structure(batch: Any) -> str:
    if isinstance(batch, dict):
        return "{" + ", ".join(str(k) for k in batch) + "}"
    if isinstance(batch, (list, tuple)):
        return (
            f"({', '.join(n for n, _ in flatten(batch))})"
            if len(batch) == 2
            else (f"a {type(batch).__name__} of {len(batch)}")
        )
    return type(batch).__name__


def snapshot(batch: Any, split: str, task: str, batch_size: int | None) -> dict[str, Any]:
    return {
        "split": split,
        "task": task,
        "batch_size": batch_size,
        "structure": structure(batch),
        "tensors": [describe(name, t) for name, t in flatten(batch)],
    }


def write_batches(ctx: Any) -> None:
    """batches/train.json (the train loader's first batch) and batches/val.json (the val
    loader's first); never raises — the run goes on without them."""
    folder = ctx.folder.file("batches")
    try:
        folder.mkdir(exist_ok=True)
        for split, make in (("train", ctx.train_loader), ("val", ctx.val_loader)):
            loader = make()
            batch = next(iter(loader))
            snap = snapshot(batch, split, ctx.task, getattr(loader, "batch_size", None))
            classes = getattr(loader.dataset, "classes", None)  # torchvision's convention
            if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
                snap["classes"] = list(classes)[:1000]
            write_json_atomic(folder / f"{split}.json", snap)
    except Exception as e:  # the stages will name a broken loader; this is only a view
        print(f"batches: could not write the batch snapshot: {type(e).__name__}: {e}", flush=True)
