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
from torch.utils.data import Dataset, TensorDataset

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


class Shapes(TensorDataset):
    """A TensorDataset that names its classes (torchvision's ``classes``): views print names."""

    def __init__(self, *tensors: torch.Tensor, classes: list[str]):
        super().__init__(*tensors)
        self.classes = classes


def classification(
    n_train: int = 2000, n_val: int = 500, size: int = 24, seed: int = 0, augment: bool = False
):
    """(train, val) of (image, shape id); ``augment`` augments the train set only."""
    xt, yt, _, _ = draw(n_train, size, seed)
    xv, yv, _, _ = draw(n_val, size, seed + 10_000)
    names = list(SHAPES)
    train = Shapes(xt, yt, classes=names)
    return _train(train, "classification", augment), Shapes(xv, yv, classes=names)


def segmentation(
    n_train: int = 1000, n_val: int = 250, size: int = 24, seed: int = 0, augment: bool = False
):
    """(train, val) of (image, mask): 0 background, 1..5 the shape's class."""
    xt, _, mt, _ = draw(n_train, size, seed)
    xv, _, mv, _ = draw(n_val, size, seed + 10_000)
    names = ["background", *SHAPES]
    train = Shapes(xt, mt, classes=names)
    return _train(train, "segmentation", augment), Shapes(xv, mv, classes=names)


def regression(
    n_train: int = 2000, n_val: int = 500, size: int = 24, seed: int = 0, augment: bool = False
):
    """(train, val) of (image, [centre x, centre y, radius] / size)."""
    xt, _, _, gt = draw(n_train, size, seed)
    xv, _, _, gv = draw(n_val, size, seed + 10_000)
    return _train(TensorDataset(xt, gt), "regression", augment), TensorDataset(xv, gv)


def _train(ds: TensorDataset, task: str, augment: bool) -> Dataset:
    return Augmented(ds, task) if augment else ds


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: about 24k parameters at width 16.

    ``head_bias`` sets the last layer's initial bias (e.g. the regression targets' mean).
    The recipe's tricks are knobs that default to off, for ``cockpit ablate --tricks``:
    ``dropout`` (before the head), ``batchnorm`` (after every conv), ``width`` and ``blocks``
    (more conv blocks at the last width: a deeper model)."""

    def __init__(
        self,
        in_channels: int = 1,
        outputs: int = len(SHAPES),
        width: int = 16,
        head_bias: list[float] | None = None,
        dropout: float = 0.0,
        batchnorm: bool = False,
        blocks: int = 3,
    ):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"SmallCNN: blocks must be 1 or more, got {blocks}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(blocks):
            c_out = width * 2 ** min(i, 2)
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
            if i < 2 and i < blocks - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, outputs)
        if head_bias is not None:  # "init well": start regression outputs at the targets' mean
            with torch.no_grad():
                self.head.bias.copy_(torch.tensor(head_bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SegNet(nn.Module):
    """A small encoder-decoder: (B, 1, H, W) -> (B, classes, H, W) logits.

    Tricks default to off: ``batchnorm`` after every conv, ``dropout`` (2-d, channel-wise)
    before the classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = len(SHAPES) + 1,
        width: int = 16,
        dropout: float = 0.0,
        batchnorm: bool = False,
    ):
        super().__init__()
        w = width

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            bn = [nn.BatchNorm2d(c_out)] if batchnorm else []
            return [nn.Conv2d(c_in, c_out, 3, padding=1), *bn, nn.ReLU()]

        self.enc = nn.Sequential(*conv(in_channels, w), *conv(w, w))
        self.down = nn.Sequential(nn.MaxPool2d(2), *conv(w, 2 * w), *conv(2 * w, 2 * w))
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        drop = [nn.Dropout2d(dropout)] if dropout > 0 else []
        self.out = nn.Sequential(*conv(2 * w, w), *drop, nn.Conv2d(w, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        return self.out(torch.cat([skip, self.up(self.down(skip))], dim=1))


class Augmented(Dataset):
    """Train-only augmentation (never wrap a val set): a random horizontal flip, a shift of up
    to ``shift`` pixels and a brightness change, applied alike to the image and, for
    segmentation, to its mask. Regression targets (centre, size) get the brightness change only,
    so they stay true."""

    def __init__(self, base: TensorDataset, task: str, shift: int = 2, brightness: float = 0.2):
        self.base, self.task, self.shift, self.brightness = base, task, shift, brightness
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def targets(self) -> torch.Tensor:  # read without drawing (the init stage's class counts)
        return self.base.tensors[1]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        x = x * (1 + self.brightness * (2 * torch.rand(()) - 1))
        if self.task == "regression":
            return x, y
        flip = bool(torch.rand(()) < 0.5)
        dy, dx = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
        x = _move(x, flip, dy, dx)
        if self.task == "segmentation":
            y = _move(y[None], flip, dy, dx)[0]
        return x, y


def _move(t: torch.Tensor, flip: bool, dy: int, dx: int) -> torch.Tensor:
    if flip:
        t = t.flip(-1)
    return t.roll((dy, dx), dims=(-2, -1))
