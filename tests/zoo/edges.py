"""Data sets that sit just inside or just outside one of the ladder's lines.

tests/test_boundaries.py runs one stage on each (with ``--set data._target_=edges.NAME``
on top of blobs.yaml), so that moving a threshold — or deleting a check — breaks a test.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset
from zoo import blobs


def blobs_sharing(shared: int = 0, **kw):
    """Blobs whose train set holds copies of the first ``shared`` val inputs (and labels):
    ``shared / len(val)`` of val overlaps train."""
    train, val = blobs(**kw)
    x, y = (t.clone() for t in train.tensors)
    xv, yv = val.tensors
    x[:shared], y[:shared] = xv[:shared], yv[:shared]
    return TensorDataset(x, y), val


def counts(per_class: list[int], dim: int = 16, seed: int = 0, n_val: int = 128):
    """Blobs with exactly ``per_class[c]`` train samples of class c (val balanced)."""
    g = torch.Generator().manual_seed(seed)
    classes = len(per_class)
    centres = 2.0 * torch.randn(classes, dim, generator=g)
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(per_class)])
    y = y[torch.randperm(len(y), generator=g)]
    yv = torch.arange(n_val) % classes
    draw = lambda labels: centres[labels] + 0.6 * torch.randn(len(labels), dim, generator=g)  # noqa: E731
    return TensorDataset(draw(y), y), TensorDataset(draw(yv), yv)


def calibrated_not_accurate(n_train: int = 3000, n_val: int = 2000, dim: int = 16, seed: int = 0):
    """Inputs inform the class probabilities but never change the most likely class.

    Class 0 has probability 0.55 whatever the input; the input says which of classes 1–3
    takes 0.35 of the rest (the other two 0.05 each). A model that learns this has a val loss
    clearly below the input-blind loss (the prior's entropy, 1.18 nats, against 1.00) — and
    its accuracy is exactly the majority class's: the input is never enough to predict
    anything but class 0. The val loss falls; the val metric does not beat the baseline.
    """
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(3, dim, generator=g)

    def draw(n: int):
        z = torch.randint(3, (n,), generator=g)  # which minority class the input favours
        x = centres[z] + 0.3 * torch.randn(n, dim, generator=g)
        u = torch.rand(n, generator=g)
        y = torch.zeros(n, dtype=torch.long)
        favoured = (u >= 0.55) & (u < 0.90)
        y[favoured] = z[favoured] + 1
        other = u >= 0.90  # one of the two others, 0.05 each
        shift = torch.randint(1, 3, (n,), generator=g)
        y[other] = (z[other] + shift[other]) % 3 + 1
        return x, y

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def one_label(label: int = 1, **kw):
    """Blobs whose every target is ``label`` (so a constant output has one exact loss)."""
    train, val = blobs(**kw)
    (x, y), (xv, yv) = train.tensors, val.tensors
    return (
        TensorDataset(x, torch.full_like(y, label)),
        TensorDataset(xv, torch.full_like(yv, label)),
    )


class ConstantLogits(torch.nn.Module):
    """A linear layer with zero weights and the bias ``[0, logit, 0, ...]``: at init it outputs
    the same logits for every input, so on targets that are all class 1 the cross-entropy is
    exactly ``log(classes - 1 + e^logit) - logit`` — any value above 0, chosen by ``logit``."""

    def __init__(self, in_dim: int = 16, classes: int = 4, logit: float = 0.0):
        super().__init__()
        self.fc = torch.nn.Linear(in_dim, classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.bias[1] = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class BatchMix(torch.nn.Module):
    """A linear model that mixes a little of the batch mean into every sample:
    ``fc(x + mix * x.mean(0))``. Sample i's output then depends on sample j's input with a
    gradient exactly ``(mix / b) / (1 + mix / b)`` times its own (b the batch size)."""

    def __init__(self, in_dim: int = 16, classes: int = 4, mix: float = 0.0):
        super().__init__()
        self.fc = torch.nn.Linear(in_dim, classes)
        self.mix = mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.mix * x.mean(0, keepdim=True))
