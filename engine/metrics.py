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


def labels(out: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module | None = None):
    """(predicted ids, target ids, classes) for a classification-like output, whatever form
    torch accepts: class ids with (B, C, ...) logits; class probabilities (soft labels, mixup)
    of the output's shape; one logit per label with float 0/1 targets (BCE losses: the logit's
    sign decides, or p > 0.5 for BCELoss)."""
    name = type(loss_fn).__name__ if loss_fn is not None else ""
    binary = name in ("BCEWithLogitsLoss", "BCELoss") or (
        y.is_floating_point() and (out.ndim == 1 or out.shape[1] == 1)
    )
    if binary:
        threshold = 0.5 if name == "BCELoss" else 0.0
        pred = (out.reshape(-1) > threshold).long()
        return pred, (y.reshape(-1).float() > 0.5).long(), 2
    if y.is_floating_point() and y.shape == out.shape:  # class probabilities
        return out.argmax(1).reshape(-1), y.argmax(1).reshape(-1), out.shape[1]
    return out.argmax(1).reshape(-1), y.reshape(-1).long(), out.shape[1]


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
            pred, target, classes = labels(out, y, loss_fn)
            part = _confusion(pred, target, classes)
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
    train_targets, val_targets = _ids(train_targets), _ids(val_targets)
    c = classes if classes and classes >= 2 else None  # one logit per label: two classes
    c = c or max(2, int(max(int(train_targets.max()), int(val_targets.max())) + 1))
    counts = torch.bincount(train_targets.reshape(-1).long().clamp(min=0), minlength=c)
    majority = int(counts.argmax())
    flat = val_targets.reshape(-1).long()
    pred = torch.full_like(flat, majority)
    return scores_from_confusion(_confusion(pred, flat, c), task)


def _ids(targets: torch.Tensor) -> torch.Tensor:
    """Class ids from any accepted target form: ids as they are, class-probability rows by
    their argmax, float 0/1 (or soft binary) targets by p > 0.5."""
    if not targets.is_floating_point():
        return targets
    if (
        targets.ndim >= 2
        and targets.shape[1] > 1
        and bool(((targets.sum(1) - 1).abs() < 1e-3).all())
    ):
        return targets.argmax(1)
    return (targets > 0.5).long()


def collect_targets(
    dataset, limit: int = 20_000, loader_kwargs: dict | None = None
) -> torch.Tensor:
    """Targets of up to ``limit`` samples without decoding inputs where the dataset allows it:
    a TensorDataset's tensor, a torchvision-style ``targets`` attribute; else read through a
    DataLoader (with the preset's workers) from an evenly spread subset."""
    n = min(len(dataset), limit)
    # evenly spread, not the first ``limit``: a dataset sorted by label would show one class
    idx = torch.linspace(0, len(dataset) - 1, n).long().unique() if n else torch.zeros(0).long()
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return tensors[1][idx]
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets)[idx]
    from torch.utils.data import DataLoader, Subset

    idx = idx.tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=64, **(loader_kwargs or {}))
    return torch.cat([torch.as_tensor(y) for _, y in loader])
