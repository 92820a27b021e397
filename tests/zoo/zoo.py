"""The bug zoo: tiny data sets and models, each with one classic bug planted (or none).

Every YAML beside this file names one of these; tests/test_zoo.py asserts the stage and
verdict that must catch it. Small on purpose: each case trains for a second or two on CPU.
"""

from __future__ import annotations

import itertools
import time

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

# ---------------------------------------------------------------- data


def blobs(
    n_train: int = 512,
    n_val: int = 256,
    dim: int = 16,
    classes: int = 4,
    seed: int = 0,
    noise: float = 0.6,
):
    """Gaussian blobs: an easy, healthy classification problem."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, dim, generator=g)

    def draw(n: int):
        y = torch.randint(classes, (n,), generator=g)
        return centres[y] + noise * torch.randn(n, dim, generator=g), y

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def blobs_with_nan(**kw):
    train, val = blobs(**kw)
    x, y = train.tensors
    x = x.clone()
    x[::7, 3] = float("nan")
    return TensorDataset(x, y), val


def blobs_labels_too_big(**kw):
    """Labels 1..C (off by one) for a model with C outputs."""
    train, val = blobs(**kw)
    return TensorDataset(train.tensors[0], train.tensors[1] + 1), TensorDataset(
        val.tensors[0], val.tensors[1] + 1
    )


def blobs_float_labels(**kw):
    train, val = blobs(**kw)
    return TensorDataset(train.tensors[0], train.tensors[1].float()), val


def blobs_imbalanced(**kw):
    train, val = blobs(**kw)
    x, y = train.tensors
    keep = (y != 3) | (torch.arange(len(y)) % 12 == 0)
    return TensorDataset(x[keep], y[keep]), val


def blobs_overlapping(**kw):
    """The val set is a slice of the train set: a leaked split."""
    train, _ = blobs(**kw)
    x, y = train.tensors
    return train, TensorDataset(x[:128], y[:128])


def blobs_shuffled_val_labels(**kw):
    """Val labels permuted: inputs and targets no longer belong together."""
    train, val = blobs(**kw)
    x, y = val.tensors
    return train, TensorDataset(
        x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    )


class SameInput(Dataset):
    """Ignores the index for the input: every sample is the same image."""

    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base.tensors[0][0], self.base.tensors[1][i]


def blobs_same_input(**kw):
    train, val = blobs(**kw)
    return SameInput(train), val


class Augmented(Dataset):
    """Random noise added on every read — fine for train, a bug on val."""

    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


def blobs_augmented_val(**kw):
    train, val = blobs(**kw)
    return train, Augmented(val)


class SlowDataset(Dataset):
    """A __getitem__ that sleeps: the loader, not backprop, is the bottleneck."""

    def __init__(self, base: TensorDataset, delay: float):
        self.base, self.delay = base, delay

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return self.base[i]


def blobs_slow(delay: float = 0.002, **kw):
    train, val = blobs(**kw)
    return SlowDataset(train, delay), val


class NotPairs(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        return torch.zeros(16)


def not_pairs():
    return NotPairs(), NotPairs()


def regression_data(n_train: int = 512, n_val: int = 256, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)

    def draw(n: int):
        x = torch.randn(n, dim, generator=g)
        return x, (x @ w + 0.1 * torch.randn(n, generator=g))

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def broken_data():
    raise ValueError("the CSV has 3 columns, expected 4")


# ---------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(
        self,
        in_dim: int = 16,
        hidden: int = 32,
        classes: int = 4,
        out_scale: float = 1.0,
        dropout: float = 0.0,
        batchnorm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, classes))
        self.net = nn.Sequential(*layers)
        if out_scale != 1.0:  # the planted init bug: logits far too large at init
            with torch.no_grad():
                self.net[-1].weight.mul_(out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BigMLP(MLP):
    def __init__(self, in_dim: int = 16, classes: int = 4):
        super().__init__(in_dim=in_dim, hidden=70_000, classes=classes)


class DetachedFeatures(nn.Module):
    """``.detach()`` in forward: the first layer never learns."""

    def __init__(self, in_dim: int = 16, hidden: int = 32, classes: int = 4):
        super().__init__()
        self.features = nn.Linear(in_dim, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)).detach())


class UnusedLayer(MLP):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.forgotten = nn.Linear(4, 4)


class BatchMixer(nn.Module):
    """The classic reshape bug: (B, H) viewed as (H, B) and back mixes samples."""

    def __init__(self, in_dim: int = 16, hidden: int = 32, classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = h.t().reshape(x.shape[0], -1)  # meant h.reshape(B, -1): mixes the batch
        return self.fc2(h)


class BatchNormalizer(MLP):
    """Normalises inputs with the batch's own statistics (no batchnorm layer): a leak."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(0, keepdim=True)) / (x.std(0, keepdim=True, correction=0) + 1e-5)
        return self.net(x)


class InputBlind(nn.Module):
    """Ignores its input: can fit one sample, never several."""

    def __init__(self, in_dim: int = 16, classes: int = 4):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))
        self.unused_in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * x.sum()


class NanAfter(MLP):
    """Produces NaN from a given forward call on: the loop must name the step."""

    def __init__(self, after: int = 5, **kw):
        super().__init__(**kw)
        self.calls = itertools.count(1)
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training and next(self.calls) >= self.after:
            out = out * float("nan")
        return out


class ShapeBug(nn.Module):
    """A layer sized for the wrong input: crashes on the first batch."""

    def __init__(self, in_dim: int = 16, classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(in_dim + 1, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Regressor(nn.Module):
    """Outputs (B, 1) for (B,) targets when ``squeeze`` is off: the broadcasting bug."""

    def __init__(self, in_dim: int = 8, squeeze: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out.squeeze(-1) if self.squeeze else out


class SlowModel(MLP):
    def __init__(self, delay: float = 1.2, **kw):
        super().__init__(**kw)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        end = time.process_time() + self.delay  # computes (spins) rather than sleeps, as a
        while time.process_time() < end:  # slow model does: the time is its own, not the machine's
            pass
        return super().forward(x)
