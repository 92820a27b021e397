"""Generative, as the recipe orders it: a mask in, a shape image out.

The data are the project's own shapes (``shapes.draw``): the input is the shape's mask as
one-hot channels (background and five shapes) plus one channel of Gaussian noise ``z``
drawn with the sample (seeded, so the model stays a function of its input and val stays
fixed); the target is the drawn image — the shape at a random brightness on a noisy
background. No generator can predict that noise or brightness from the mask: plain L1
regression learns the median image (a clean, flat shape), and only a critic can push the
generator to use ``z`` for realistic texture. The ladder runs the ``l1`` stage (regression
alone) first and the ``adversarial`` stage (a WGAN-GP critic) only once that passes.
"""

from __future__ import annotations

import torch
from shapes import SHAPES, SegNet, draw
from torch.nn import functional as F
from torch.utils.data import TensorDataset

MASK_CHANNELS = len(SHAPES) + 1


def mask_to_image(
    n_train: int = 1000,
    n_val: int = 250,
    size: int = 24,
    seed: int = 0,
    noise: float = 0.1,
    noise_channel: bool = True,
):
    """(train, val) of (one-hot mask + z, image): inputs (7, size, size), images (1, size, size)."""
    return _pairs(n_train, size, seed, noise, noise_channel), _pairs(
        n_val, size, seed + 10_000, noise, noise_channel
    )


def _pairs(n: int, size: int, seed: int, noise: float, noise_channel: bool) -> TensorDataset:
    images, _, masks, _ = draw(n, size, seed, noise)
    x = F.one_hot(masks, MASK_CHANNELS).permute(0, 3, 1, 2).float()
    if noise_channel:
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.cat([x, torch.randn(n, 1, size, size, generator=g)], dim=1)
    return TensorDataset(x, images)


class MaskToImage(SegNet):
    """The small encoder-decoder of the segmentation preset, as a generator: (B, 7, H, W)
    mask and noise in, (B, 1, H, W) image out. ``ignore_input`` zeroes the input (a planted
    bug: the regression stage must fail, and the adversarial stage never start)."""

    def __init__(self, width: int = 16, noise_channel: bool = True, ignore_input: bool = False):
        super().__init__(in_channels=MASK_CHANNELS + int(noise_channel), classes=1, width=width)
        self.ignore_input = ignore_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * 0 if self.ignore_input else x)
