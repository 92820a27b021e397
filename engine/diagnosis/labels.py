"""Do the labels carry information about the inputs? A controlled test.

When a model fits its train set but does not generalize, the same budget is spent once more on
a fresh model whose train labels are shuffled on purpose. Labels that belong to their inputs
are learned faster than labels that do not (structure generalizes across samples; noise must
be memorised one sample at a time). If the real labels do no better than shuffled ones, the
labels carry no information about the inputs: they were shuffled separately from them, sorted
in another order, or read with an off-by-one index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset

from engine.loop import train_loop


class ShuffledLabels(Dataset):
    """The same inputs with the labels of a fixed permutation of the samples."""

    def __init__(self, base: Dataset, perm: list[int]):
        self.base, self.perm = base, perm

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, _ = self.base[i]
        _, y = self.base[self.perm[i]]
        return x, y


def shuffled(dataset: Dataset, seed: int) -> Dataset:
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7))
    tensors = getattr(dataset, "tensors", None)
    if isinstance(dataset, TensorDataset) and tensors is not None and len(tensors) == 2:
        return TensorDataset(tensors[0], tensors[1][perm])
    return ShuffledLabels(dataset, perm.tolist())


@dataclass
class LabelEvidence:
    verdict: str  # informative | uninformative | inconclusive
    real: float  # train loss at the end with the real labels
    shuffled: float  # ... with the labels shuffled on purpose
    start: float
    steps: int

    def numbers(self) -> str:
        return (
            f"train loss {self.start:.3g} → {self.real:.3g} with the real labels vs "
            f"{self.shuffled:.3g} with labels shuffled on purpose, {self.steps} steps each"
        )


def _tail(xs: list[float], n: int) -> tuple[float, float]:
    tail = [x for x in xs[-n:] if math.isfinite(x)]
    if not tail:
        return math.nan, math.nan
    m = sum(tail) / len(tail)
    sd = math.sqrt(sum((x - m) ** 2 for x in tail) / max(len(tail) - 1, 1))
    return m, sd / math.sqrt(len(tail))


def label_test(ctx, real_losses: list[float], steps: int, seconds: float | None) -> LabelEvidence:
    """Train a fresh model for ``steps`` steps on shuffled train labels; compare its train loss
    with the real run's (``real_losses``, per step)."""
    model = ctx.build_model()
    optimizer = ctx.build_optimizer(model)
    scheduler = ctx.build_scheduler(optimizer)
    result = train_loop(
        ctx,
        model,
        optimizer,
        ctx.train_batches(dataset=shuffled(ctx.data.train, ctx.seed)),
        steps=steps,
        seconds=seconds,
        scheduler=scheduler,
        log=False,
    )
    fake = result.train_losses
    n = max(10, min(len(real_losses), len(fake)) // 5)
    head = [x for x in real_losses[:10] if math.isfinite(x)]
    start = sum(head) / len(head) if head else math.nan
    real, se_r = _tail(real_losses[: len(fake)], n)
    shuf, se_s = _tail(fake, n)
    ev = LabelEvidence("inconclusive", real, shuf, start, len(fake))
    if not all(math.isfinite(v) for v in (real, shuf, start)):
        return ev
    noise = 2 * math.hypot(se_r, se_s)
    moved = start - min(real, shuf)
    if shuf - real > max(noise, 0.1 * abs(start - real), 0.02 * abs(start)):
        ev.verdict = "informative"
    elif moved > max(noise, 0.05 * abs(start)) and real >= shuf - max(noise, 0.02 * abs(start)):
        ev.verdict = "uninformative"
    return ev
