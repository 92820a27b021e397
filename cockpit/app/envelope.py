"""A streaming min/max envelope: draw a series of any length at a fixed cost.

plotext's build time grows with the number of points (a million points take ~20 s), so a
curve is never handed to it raw. The envelope folds the series into blocks as it arrives and
keeps each block's lowest and highest point; drawing then reads a bounded number of blocks,
so a run with 1,000,000 logged batches draws as fast as one with 1,000, and no spike is
hidden (min/max decimation keeps every extreme, unlike averaging or striding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class Envelope:
    """The lowest and highest point of every block of ``block`` consecutive points.

    Appending costs O(new points), vectorised (numpy, one reshape per batch of blocks). When
    the blocks reach ``max_blocks``, neighbours merge and ``block`` doubles, so memory and
    drawing cost stay bounded however long the run. Points must be finite and arrive in x
    order. numpy is imported on first use, not with the module (the app's start stays fast).
    """

    def __init__(self, max_blocks: int = 2048):
        if max_blocks < 2 or max_blocks % 2:
            raise ValueError("max_blocks must be an even number of at least 2")
        np = numpy()
        self.max_blocks = max_blocks
        self.block = 1
        """Points per finished block (a power of two)."""
        self.count = 0
        """Points seen so far."""
        empty = np.empty(0)
        self.lo_x, self.lo_y, self.hi_x, self.hi_y = empty, empty, empty, empty
        self._tail_x, self._tail_y = empty, empty  # the unfinished block, raw

    def __len__(self) -> int:
        return self.count

    def extend(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        """Append points (x ascending, y finite)."""
        np = numpy()
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        if not len(ys):
            return
        self.count += len(ys)
        tx = np.concatenate((self._tail_x, xs)) if len(self._tail_x) else xs
        ty = np.concatenate((self._tail_y, ys)) if len(self._tail_y) else ys
        if not len(self.lo_y):
            # a long history read at once: start at its final block size instead of merging up
            while len(ty) > self.max_blocks // 2 * self.block:
                self.block *= 2
        start = 0
        while True:
            take = min((len(ty) - start) // self.block, self.max_blocks - len(self.lo_y))
            if take <= 0:
                break
            end = start + take * self.block
            self._fold(tx[start:end], ty[start:end], take)
            start = end
            if len(self.lo_y) >= self.max_blocks:
                self._merge_pairs()
        # copies: a view would pin the whole batch in memory until the next block is done
        self._tail_x, self._tail_y = tx[start:].copy(), ty[start:].copy()

    def _fold(self, xs, ys, blocks: int) -> None:
        np = numpy()
        x2, y2 = xs.reshape(blocks, self.block), ys.reshape(blocks, self.block)
        rows = np.arange(blocks)
        lo, hi = y2.argmin(axis=1), y2.argmax(axis=1)  # the first of equal extremes, like min()
        self.lo_x = np.concatenate((self.lo_x, x2[rows, lo]))
        self.lo_y = np.concatenate((self.lo_y, y2[rows, lo]))
        self.hi_x = np.concatenate((self.hi_x, x2[rows, hi]))
        self.hi_y = np.concatenate((self.hi_y, y2[rows, hi]))

    def _merge_pairs(self) -> None:
        np = numpy()
        pairs = len(self.lo_y) // 2
        rows = np.arange(pairs)
        lo = self.lo_y[: 2 * pairs].reshape(pairs, 2).argmin(axis=1)
        hi = self.hi_y[: 2 * pairs].reshape(pairs, 2).argmax(axis=1)
        self.lo_x = self.lo_x[: 2 * pairs].reshape(pairs, 2)[rows, lo]
        self.lo_y = self.lo_y[: 2 * pairs].reshape(pairs, 2)[rows, lo]
        self.hi_x = self.hi_x[: 2 * pairs].reshape(pairs, 2)[rows, hi]
        self.hi_y = self.hi_y[: 2 * pairs].reshape(pairs, 2)[rows, hi]
        self.block *= 2

    def points(self, buckets: int) -> tuple[list[float], list[float]]:
        """At most ``2 * buckets`` points in x order that keep every bucket's extremes."""
        np = numpy()
        blocks = len(self.lo_y)
        per = max(1, math.ceil((blocks + (1 if len(self._tail_y) else 0)) / max(1, buckets)))
        groups = []  # (lo x, lo, hi x, hi) arrays, one row per bucket
        full = blocks // per
        if full:
            n = full * per
            rows = np.arange(full)
            lo = self.lo_y[:n].reshape(full, per).argmin(axis=1)
            hi = self.hi_y[:n].reshape(full, per).argmax(axis=1)
            groups.append(
                (
                    self.lo_x[:n].reshape(full, per)[rows, lo],
                    self.lo_y[:n].reshape(full, per)[rows, lo],
                    self.hi_x[:n].reshape(full, per)[rows, hi],
                    self.hi_y[:n].reshape(full, per)[rows, hi],
                )
            )
        for xs_lo, ys_lo, xs_hi, ys_hi in (
            (
                self.lo_x[full * per :],
                self.lo_y[full * per :],
                self.hi_x[full * per :],
                self.hi_y[full * per :],
            ),
            (self._tail_x, self._tail_y, self._tail_x, self._tail_y),
        ):
            if len(ys_lo):
                lo, hi = ys_lo.argmin(), ys_hi.argmax()
                groups.append(
                    (xs_lo[lo : lo + 1], ys_lo[lo : lo + 1], xs_hi[hi : hi + 1], ys_hi[hi : hi + 1])
                )
        if not groups:
            return [], []
        lx, lo, hx, hi = (np.concatenate([g[i] for g in groups]) for i in range(4))
        first = lx <= hx  # each bucket's two points in x order (one when they coincide)
        xs = np.stack((np.where(first, lx, hx), np.where(first, hx, lx)), axis=1)
        ys = np.stack((np.where(first, lo, hi), np.where(first, hi, lo)), axis=1)
        keep = np.ones(xs.shape, dtype=bool)
        keep[:, 1] = lx != hx
        return xs[keep].tolist(), ys[keep].tolist()


def numpy():
    """numpy, imported on first use (~50 ms that the app's first frame does not wait for)."""
    import numpy

    return numpy
