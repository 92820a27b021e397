"""Batches for the loop: endless epochs, endless random val batches, moving to the device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class ForeverSampler(Sampler):
    """Endless random permutations of range(n): the random val batch of every step."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        while True:
            yield from torch.randperm(self.n, generator=self.g).tolist()

    def __len__(self) -> int:  # pragma: no cover - DataLoader asks only for sized samplers
        return 2**62


class EpochIterator:
    """Batches from a DataLoader across epochs (re-iterated, so persistent_workers matters).

    A sampler with ``set_epoch`` (DistributedSampler) is told each new epoch, so every rank
    reshuffles alike."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.it = iter(loader)
        self.epoch = 0

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            set_epoch = getattr(self.loader.sampler, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(self.epoch)
            self.it = iter(self.loader)
            return next(self.it)


def move(batch: Any, device: torch.device) -> Any:
    """Tensors (also inside tuples, lists and dicts) to ``device``, without waiting on the copy."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    return batch
