"""A streaming min/max envelope: draw a series of any length at a fixed cost.

plotext's build time grows with the number of points (a million points take ~20 s), so a
curve is never handed to it raw. The envelope folds the series into blocks as it arrives and
keeps each block's lowest and highest point; drawing then reads a bounded number of blocks,
so a run with 1,000,000 logged batches draws as fast as one with 1,000, and no spike is
hidden (min/max decimation keeps every extreme, unlike averaging or striding).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence


class Envelope:
    """The lowest and highest point of every block of ``block`` consecutive points.

    Appending costs O(new points), at C speed (``min``/``max`` over array slices). When the
    blocks reach ``max_blocks``, neighbours merge and ``block`` doubles, so memory and drawing
    cost stay bounded however long the run. Points must be finite and arrive in x order.
    """

    def __init__(self, max_blocks: int = 2048):
        if max_blocks < 2 or max_blocks % 2:
            raise ValueError("max_blocks must be an even number of at least 2")
        self.max_blocks = max_blocks
        self.block = 1
        """Points per finished block (a power of two)."""
        self.count = 0
        """Points seen so far."""
        self.lo_x, self.lo_y = array("d"), array("d")
        self.hi_x, self.hi_y = array("d"), array("d")
        self._tail_x, self._tail_y = array("d"), array("d")  # the unfinished block, raw

    def __len__(self) -> int:
        return self.count

    def extend(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        """Append points (x ascending, y finite)."""
        if not len(ys):
            return
        self.count += len(ys)
        tx, ty = self._tail_x, self._tail_y
        tx.extend(xs)
        ty.extend(ys)
        if not self.lo_y:
            # a long history read at once: start at its final block size instead of merging up
            while len(ty) > self.max_blocks // 2 * self.block:
                self.block *= 2
        start = 0
        while len(ty) - start >= self.block:
            self._fold(start, start + self.block)
            start += self.block
            if len(self.lo_y) >= self.max_blocks:
                self._merge_pairs()
        if start:
            del tx[:start]
            del ty[:start]

    def _fold(self, i: int, j: int) -> None:
        seg = self._tail_y[i:j]
        lo, hi = min(seg), max(seg)
        self.lo_x.append(self._tail_x[i + seg.index(lo)])
        self.lo_y.append(lo)
        self.hi_x.append(self._tail_x[i + seg.index(hi)])
        self.hi_y.append(hi)

    def _merge_pairs(self) -> None:
        lo_x, lo_y, hi_x, hi_y = array("d"), array("d"), array("d"), array("d")
        for k in range(0, len(self.lo_y) - 1, 2):
            a = k if self.lo_y[k] <= self.lo_y[k + 1] else k + 1
            lo_x.append(self.lo_x[a])
            lo_y.append(self.lo_y[a])
            b = k if self.hi_y[k] >= self.hi_y[k + 1] else k + 1
            hi_x.append(self.hi_x[b])
            hi_y.append(self.hi_y[b])
        self.lo_x, self.lo_y, self.hi_x, self.hi_y = lo_x, lo_y, hi_x, hi_y
        self.block *= 2

    def points(self, buckets: int) -> tuple[list[float], list[float]]:
        """At most ``2 * buckets`` points in x order that keep every bucket's extremes."""
        xs: list[float] = []
        ys: list[float] = []
        blocks = len(self.lo_y)
        per = max(1, math.ceil((blocks + (1 if self._tail_y else 0)) / max(1, buckets)))
        for start in range(0, blocks, per):
            end = min(start + per, blocks)
            lo_seg = self.lo_y[start:end]
            hi_seg = self.hi_y[start:end]
            lo = min(lo_seg)
            hi = max(hi_seg)
            _emit(
                xs,
                ys,
                self.lo_x[start + lo_seg.index(lo)],
                lo,
                self.hi_x[start + hi_seg.index(hi)],
                hi,
            )
        if self._tail_y:
            ty = self._tail_y
            lo, hi = min(ty), max(ty)
            _emit(xs, ys, self._tail_x[ty.index(lo)], lo, self._tail_x[ty.index(hi)], hi)
        return xs, ys


def _emit(xs: list[float], ys: list[float], lx: float, lo: float, hx: float, hi: float) -> None:
    if lx == hx:
        xs.append(lx)
        ys.append(lo)
    elif lx < hx:
        xs += (lx, hx)
        ys += (lo, hi)
    else:
        xs += (hx, lx)
        ys += (hi, lo)
