"""Ladders of settings and the pseudo binary search over them (Algorithm 1 of BatchSizer).

A ladder is an ascending tuple of settings (batch sizes or SM clock levels). The search works
on 0-based indices into it. The paper's listing counts from 1 (``minBS = 1``, ``maxBS = N``);
since ``ceil((a + 1 + b + 1) / 2) = ceil((a + b) / 2) + 1`` (and likewise for ``floor``), the
0-based arithmetic here picks exactly the same rungs.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum


def index_at_or_below(ladder: Sequence[int], value: float) -> int:
    """Index of the largest rung not above ``value``; 0 when every rung is above it."""
    return max(bisect.bisect_right(ladder, value) - 1, 0)


def nearest_index(ladder: Sequence[int], value: float) -> int:
    """Index of the rung closest to ``value``; the lower one on a tie."""
    return min(range(len(ladder)), key=lambda i: (abs(ladder[i] - value), i))


class Move(Enum):
    """What a search step did."""

    MOVED = "moved"
    AT_TOP = "at-top"
    """Under the band at the largest rung: nothing left to gain from this knob."""
    AT_BOTTOM = "at-bottom"
    """Over the cap at the smallest rung: this knob cannot meet the cap."""


@dataclass(frozen=True)
class LadderSearch:
    """The state of Algorithm 1: ``low`` = minBS, ``high`` = maxBS, ``current`` = currentBS.

    Invariant: ``0 <= low <= current <= high < size``.
    """

    size: int
    low: int
    high: int
    current: int

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a ladder needs at least one rung, got size {self.size}")
        if not 0 <= self.low <= self.current <= self.high < self.size:
            raise ValueError(
                f"need 0 <= low <= current <= high < size, got low={self.low} "
                f"current={self.current} high={self.high} size={self.size}"
            )

    @classmethod
    def begin(cls, size: int, current: int = 0) -> LadderSearch:
        """A fresh search over the whole ladder from rung ``current`` (the paper starts at 0)."""
        return cls(size=size, low=0, high=size - 1, current=current)

    def restart(self) -> LadderSearch:
        """Open the bounds to the whole ladder again, staying on the current rung."""
        return replace(self, low=0, high=self.size - 1)

    def up(self) -> tuple[LadderSearch, Move]:
        """Peak power was under the band: move toward larger rungs (Algorithm 1, lines 7-10).

        At ``current == high`` the listing's ``ceil((minBS + maxBS) / 2)`` would stay put
        forever even though larger rungs were never tried under the present conditions; the
        authors' BatchDVFS code reopens the upper bound there (``maxBS = MAXINDEX``), and so
        does this search, which is what the paper's "continuous readjustment" needs.
        """
        top = self.size - 1
        if self.current == top:
            return self, Move.AT_TOP
        low = self.current
        high = top if self.current == self.high else self.high
        current = (low + high + 1) // 2  # ceil
        return LadderSearch(self.size, low, high, current), Move.MOVED

    def down(self) -> tuple[LadderSearch, Move]:
        """Peak power was over the cap: move toward smaller rungs (Algorithm 1, lines 11-21).

        When the current rung is the lower bound itself, the bound is stale (conditions
        changed): the listing resets ``minBS`` to the first rung and searches below.
        """
        if self.current == 0:
            return self, Move.AT_BOTTOM
        high = self.current
        low = 0 if self.current == self.low else self.low
        current = (low + high) // 2  # floor
        return LadderSearch(self.size, low, high, current), Move.MOVED
