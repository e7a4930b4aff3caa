"""Telling a hunting cap from one that steps: pure, over the record of cap changes.

A cluster power controller may oscillate a cap between two values every few seconds. A
batch size that only the higher cap can hold then meets the lower one again within
seconds, and only a reload (seconds over the cap) can take it down, while a clock cut is
instant. Caps that step one way (down, or down and then back up) are not hunting.
"""

from __future__ import annotations

from collections.abc import Sequence

CapChange = tuple[float, float, float]
"""(time in seconds, cap before, cap after)."""


def hunting_floor_watts(
    changes: Sequence[CapChange], now_s: float, window_s: float, cap_watts: float
) -> float | None:
    """The lowest cap of the last ``window_s`` if the cap rose and then dropped again within
    it (it is hunting), else None."""
    recent = [(old, new) for at_s, old, new in changes if at_s >= now_s - window_s]
    first_rise = next((i for i, (old, new) in enumerate(recent) if new > old), None)
    if first_rise is None or not any(new < old for old, new in recent[first_rise + 1 :]):
        return None
    return min([cap_watts, *(min(old, new) for old, new in recent)])
