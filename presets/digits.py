"""scikit-learn's handwritten digits (8×8, 10 classes): a small real data set that ships
inside the package, so nothing is downloaded. Needs scikit-learn (the test extra)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def digits(val_fraction: float = 0.2, seed: int = 0):
    """(train, val) of (64 pixel intensities in [0, 1], digit); a seeded split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class MLP(nn.Module):
    """Tricks default to off (``cockpit ablate --tricks``): ``dropout`` and ``batchnorm`` after
    the hidden layer, ``depth`` hidden layers."""

    def __init__(
        self,
        in_dim: int = 64,
        hidden: int = 128,
        classes: int = 10,
        dropout: float = 0.0,
        batchnorm: bool = False,
        depth: int = 1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers.append(nn.Linear(d, hidden))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = hidden
        self.net = nn.Sequential(*layers, nn.Linear(d, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
