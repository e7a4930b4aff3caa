"""The clock trimmer: which SM clock level to go down to, judged by power, not by count.

Pure functions over a ladder of clock levels and an estimate of peak power at a level; no
state, no time. A dense ladder (NVML lists steps of 12-15 MHz: 79 levels on a P40, 110 on
an H100) and a sparse one are handled alike: the target is the highest level whose
estimated peak is under the limit, however many levels away it is. Adaptive uses them for
its clock cuts (:class:`capinfer_sidecar.policies.adaptive.Adaptive`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

PeakAt = Callable[[int], "float | None"]
"""Estimated peak power at a clock level; None when nothing is known."""


def rescaled_peak_watts(
    reading_watts: float, from_mhz: int, to_mhz: int, idle_watts: float, gamma: float
) -> float:
    """A peak read at ``from_mhz``, moved along the clock curve ``idle + d * f ** gamma``."""
    return idle_watts + (reading_watts - idle_watts) * math.pow(to_mhz / from_mhz, gamma)


def level_under_limit(
    clocks: Sequence[int],
    clock: int,
    reading_watts: float,
    limit_watts: float,
    *,
    idle_watts: float,
    gamma: float,
    known_peak: PeakAt,
) -> int:
    """After a reading over the limit at ``clock``: the highest level below it estimated under
    the limit, else the lowest.

    The reading itself is rescaled along the fitted clock curve (it may be hotter than
    anything the fit has seen, and it is what has to come down); what is known of a level
    counts too, the higher of the two deciding.
    """
    for candidate in reversed([c for c in clocks if c < clock]):
        from_reading = rescaled_peak_watts(reading_watts, clock, candidate, idle_watts, gamma)
        known = known_peak(candidate) or 0.0
        if max(from_reading, known) <= limit_watts:
            return candidate
    return clocks[0]


def highest_level_under(
    clocks: Sequence[int], clock: int, limit_watts: float, estimate: PeakAt
) -> int:
    """The highest level at or below ``clock`` whose estimate is under the limit (a level
    with no estimate does not count), else the lowest: where a cap drop sends the clock."""
    for candidate in reversed([c for c in clocks if c <= clock]):
        peak = estimate(candidate)
        if peak is not None and peak <= limit_watts:
            return candidate
    return clocks[0]


def highest_level_within(
    clocks: Sequence[int],
    limit_watts: float,
    on_curve: Callable[[int], float],
    own: Mapping[int, float | None],
) -> int | None:
    """The highest level whose estimated peak is at or under the limit; None if none is.

    ``own`` holds the levels with readings of their own, and their estimates (which need not
    follow any curve: noise, a level found too hot). Every other level's estimate is
    ``on_curve``, which must not fall as the clock rises (power grows with the clock), so
    those levels are bisected: a handful of estimates on a 110-level ladder, not one each.
    The answer is the one a scan from the top would give.
    """
    regular = [c for c in clocks if c not in own]
    low, high = 0, len(regular)  # regular[:low] fit, regular[high:] do not
    while low < high:
        middle = (low + high) // 2
        if on_curve(regular[middle]) <= limit_watts:
            low = middle + 1
        else:
            high = middle
    found = [regular[low - 1]] if low > 0 else []
    found += [c for c, peak in own.items() if peak is not None and peak <= limit_watts]
    return max(found) if found else None
