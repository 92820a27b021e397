"""Procedurally drawn shapes: the data and models the shipped presets use.

Nothing is downloaded. Each image is one grey shape (circle, square, triangle, plus, ring)
at a random place and size on a noisy background. The same drawing serves three tasks:

- classification: which shape is it (5 classes);
- segmentation: a mask with the shape's class on its pixels, 0 elsewhere (6 classes);
- regression: the shape's centre and size, scaled to [0, 1].

This module sits beside the YAML presets, which reach it as ``shapes.<name>``: the preset's
folder is importable, the way a project's own ``mytask.py`` would be.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

SHAPES = ("circle", "square", "triangle", "plus", "ring")


def draw(n: int, size: int = 24, seed: int = 0, noise: float = 0.15):
    """n images (n, 1, size, size), their shape ids (n,), masks (n, size, size), geometry (n, 3)."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(len(SHAPES), (n,), generator=g)
    r = size * (0.18 + 0.17 * torch.rand(n, generator=g))
    margin = r + 1
    cx = margin + (size - 2 * margin) * torch.rand(n, generator=g)
    cy = margin + (size - 2 * margin) * torch.rand(n, generator=g)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dx = xs[None] - cx[:, None, None]
    dy = ys[None] - cy[:, None, None]
    rr = r[:, None, None]
    dist = torch.sqrt(dx**2 + dy**2)
    inside = torch.stack(
        [
            dist <= rr,
            torch.maximum(dx.abs(), dy.abs()) <= 0.8 * rr,
            (dy >= -rr) & (dy <= 0.8 * rr) & (dx.abs() <= 0.55 * (dy + rr)),
            ((dx.abs() <= rr / 3) & (dy.abs() <= rr)) | ((dy.abs() <= rr / 3) & (dx.abs() <= rr)),
            (dist <= rr) & (dist >= 0.55 * rr),
        ]
    )  # (5, n, size, size)
    mask = inside[kind, torch.arange(n)]
    brightness = 0.6 + 0.4 * torch.rand(n, 1, 1, generator=g)
    images = mask * brightness + noise * torch.randn(n, size, size, generator=g)
    labels = torch.where(mask, kind[:, None, None] + 1, 0)
    geometry = torch.stack([cx / size, cy / size, r / size], dim=1)
    return images[:, None].float(), kind, labels.long(), geometry.float()


def classification(n_train: int = 2000, n_val: int = 500, size: int = 24, seed: int = 0):
    """(train, val) of (image, shape id)."""
    xt, yt, _, _ = draw(n_train, size, seed)
    xv, yv, _, _ = draw(n_val, size, seed + 10_000)
    return TensorDataset(xt, yt), TensorDataset(xv, yv)


def segmentation(n_train: int = 1000, n_val: int = 250, size: int = 24, seed: int = 0):
    """(train, val) of (image, mask): 0 background, 1..5 the shape's class."""
    xt, _, mt, _ = draw(n_train, size, seed)
    xv, _, mv, _ = draw(n_val, size, seed + 10_000)
    return TensorDataset(xt, mt), TensorDataset(xv, mv)


def regression(n_train: int = 2000, n_val: int = 500, size: int = 24, seed: int = 0):
    """(train, val) of (image, [centre x, centre y, radius] / size)."""
    xt, _, _, gt = draw(n_train, size, seed)
    xv, _, _, gv = draw(n_val, size, seed + 10_000)
    return TensorDataset(xt, gt), TensorDataset(xv, gv)


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: about 24k parameters at width 16.

    ``head_bias`` sets the last layer's initial bias (e.g. the regression targets' mean)."""

    def __init__(
        self,
        in_channels: int = 1,
        outputs: int = len(SHAPES),
        width: int = 16,
        head_bias: list[float] | None = None,
    ):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, outputs)
        if head_bias is not None:  # "init well": start regression outputs at the targets' mean
            with torch.no_grad():
                self.head.bias.copy_(torch.tensor(head_bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SegNet(nn.Module):
    """A small encoder-decoder: (B, 1, H, W) -> (B, classes, H, W) logits."""

    def __init__(self, in_channels: int = 1, classes: int = len(SHAPES) + 1, width: int = 16):
        super().__init__()
        w = width
        self.enc = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
        )
        self.down = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
        )
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.out = nn.Sequential(
            nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        return self.out(torch.cat([skip, self.up(self.down(skip))], dim=1))
