"""Full-val metrics by task, and the input-blind baselines they must beat.

Counts accumulate on the device; one host read per evaluation (evaluations are rare).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.loop import move


def _confusion(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    valid = (target >= 0) & (target < classes)
    idx = target[valid] * classes + pred[valid]
    return torch.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def scores_from_confusion(cm: torch.Tensor, task: str) -> dict[str, float]:
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    total = cm.sum().clamp(min=1)
    if task == "classification":
        precision = tp / predicted.clamp(min=1)
        recall = tp / support.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        present = support > 0
        return {
            "accuracy": float(tp.sum() / total),
            "macro_f1": float(f1[present].mean()) if present.any() else math.nan,
        }
    union = support + predicted - tp
    present = union > 0
    iou = tp / union.clamp(min=1)
    return {
        "miou": float(iou[present].mean()) if present.any() else math.nan,
        "pixel_acc": float(tp.sum() / total),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    task: str,
    device: torch.device,
    max_batches: int | None = None,
) -> dict[str, float]:
    """val_loss plus accuracy & macro-F1 / mIoU & pixel accuracy / MAE, over the val loader."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    abs_sum = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    count = 0
    cm = None
    batch_losses = []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = move(batch, device)
        out = model(x)
        b = y.shape[0]
        batch_loss = loss_fn(out, y).double()
        batch_losses.append(batch_loss)
        loss_sum += batch_loss * b
        n += b
        if task == "regression":
            abs_sum += (out.reshape(y.shape).double() - y.double()).abs().sum()
            count += y.numel()
        else:
            classes = out.shape[1]
            part = _confusion(out.argmax(1).reshape(-1), y.reshape(-1).long(), classes)
            cm = part if cm is None else cm + part
    model.train(was_training)
    result = {"val_loss": float(loss_sum) / max(n, 1)}
    if len(batch_losses) > 1:  # standard error of the mean over batches: the loss's own noise
        result["val_loss_se"] = float(
            torch.stack(batch_losses).std() / math.sqrt(len(batch_losses))
        )
    if task == "regression":
        result["mae"] = float(abs_sum) / max(count, 1)
    elif cm is not None:
        result.update(scores_from_confusion(cm.cpu(), task))
    return result


def baseline(
    train_targets: torch.Tensor, val_targets: torch.Tensor, task: str, classes: int | None
) -> dict[str, float]:
    """What an input-blind predictor scores on val: the majority class, or the train median."""
    if task == "regression":
        median = train_targets.float().median(dim=0).values
        return {"mae": float((val_targets.float() - median).abs().mean())}
    c = classes or int(max(int(train_targets.max()), int(val_targets.max())) + 1)
    counts = torch.bincount(train_targets.reshape(-1).long().clamp(min=0), minlength=c)
    majority = int(counts.argmax())
    flat = val_targets.reshape(-1).long()
    pred = torch.full_like(flat, majority)
    return scores_from_confusion(_confusion(pred, flat, c), task)


def collect_targets(
    dataset, limit: int = 20_000, loader_kwargs: dict | None = None
) -> torch.Tensor:
    """Targets of up to ``limit`` samples without decoding inputs where the dataset allows it:
    a TensorDataset's tensor, a torchvision-style ``targets`` attribute; else read through a
    DataLoader (with the preset's workers) from an evenly spread subset."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return tensors[1][:limit]
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets)[:limit]
    from torch.utils.data import DataLoader, Subset

    n = min(len(dataset), limit)
    idx = torch.linspace(0, len(dataset) - 1, n).long().unique().tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=64, **(loader_kwargs or {}))
    return torch.cat([torch.as_tensor(y) for _, y in loader])
