"""Throughput versus per-GPU cap: what a budget member buys with each watt.

A member's policy measures, for each setting it ran ((batch size, clock) for capinfer's
policies), the peak power the setting draws and the throughput it serves. Under a cap the
policy can run any setting whose peak fits, so the best throughput under a cap is the
*upper envelope* of those measurements: the best throughput among settings whose peak is at
most the cap. :func:`curve_from_measurements` builds it and keeps a few points;
:class:`ThroughputCurve` interpolates linearly between them (what a controller alternating
between two neighbouring settings averages: the staircase of discrete settings lies at or
under that line, and the allocator only lands between points for one member).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_CURVE_POINTS = 8
"""At most this many points in a curve: a Kubernetes status field stays small."""

STATUS_KEYS = ("capWatts", "inferencesPerSecond", "uncappedWatts")


class CurveError(ValueError):
    """A curve (built here or read from a status) is not a valid throughput curve."""


@dataclass(frozen=True)
class ThroughputCurve:
    """Per-GPU throughput (inferences/s) against the per-GPU cap (W), as a few points.

    ``cap_watts`` strictly ascending and positive, ``inferences_per_second`` non-decreasing
    and non-negative, at most :data:`MAX_CURVE_POINTS` of them. ``uncapped_watts``: the peak
    power the member draws uncapped, at least the last point's cap: above it a cap does not
    bind.
    """

    cap_watts: tuple[float, ...]
    inferences_per_second: tuple[float, ...]
    uncapped_watts: float

    def __post_init__(self) -> None:
        caps, ips = self.cap_watts, self.inferences_per_second
        if not caps:
            raise CurveError("a curve needs at least one point")
        if len(caps) != len(ips):
            raise CurveError(
                f"capWatts has {len(caps)} points but inferencesPerSecond has {len(ips)}"
            )
        if len(caps) > MAX_CURVE_POINTS:
            raise CurveError(f"at most {MAX_CURVE_POINTS} points, got {len(caps)}")
        if not all(math.isfinite(v) for v in (*caps, *ips, self.uncapped_watts)):
            raise CurveError("every value must be a finite number")
        if caps[0] <= 0:
            raise CurveError(f"capWatts must be positive, got {caps[0]:g}")
        if any(b <= a for a, b in itertools.pairwise(caps)):
            raise CurveError(f"capWatts must be strictly ascending, got {list(caps)}")
        if ips[0] < 0:
            raise CurveError(f"inferencesPerSecond must not be negative, got {ips[0]:g}")
        if any(b < a for a, b in itertools.pairwise(ips)):
            raise CurveError(f"inferencesPerSecond must not decrease, got {list(ips)}")
        if self.uncapped_watts < caps[-1]:
            raise CurveError(
                f"uncappedWatts ({self.uncapped_watts:g}) is below the last capWatts "
                f"({caps[-1]:g}): no cap above the uncapped draw can buy more"
            )

    @property
    def peak_ips(self) -> float:
        return self.inferences_per_second[-1]

    def throughput_at(self, cap_watts: float) -> float:
        """Per-GPU inferences/s under ``cap_watts``.

        Between points: linear. Above the last point: flat (nothing faster was measured).
        Below the first point no measured setting fits; the GPU's own power limit would
        throttle it, and throughput then falls about in proportion to power, so the curve
        falls linearly to zero at 0 W (an estimate; the allocator keeps caps at or above a
        member's minimum anyway).
        """
        caps, ips = self.cap_watts, self.inferences_per_second
        if cap_watts <= 0:
            return 0.0
        if cap_watts < caps[0]:
            return ips[0] * cap_watts / caps[0]
        if cap_watts >= caps[-1]:
            return ips[-1]
        # A handful of points: a linear scan beats bisect's overhead.
        for index in range(1, len(caps)):
            if cap_watts <= caps[index]:
                low, high = caps[index - 1], caps[index]
                share = (cap_watts - low) / (high - low)
                return ips[index - 1] + share * (ips[index] - ips[index - 1])
        return ips[-1]  # not reached

    def to_status(self) -> dict[str, Any]:
        """The compact form for a Kubernetes status field."""
        return {
            "capWatts": list(self.cap_watts),
            "inferencesPerSecond": list(self.inferences_per_second),
            "uncappedWatts": self.uncapped_watts,
        }

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> ThroughputCurve:
        """Read :meth:`to_status`'s form back; :class:`CurveError` says what is wrong."""
        if not isinstance(status, Mapping):
            raise CurveError(f"a curve is a mapping, got {type(status).__name__}")
        unknown = sorted(set(status) - set(STATUS_KEYS))
        if unknown:
            raise CurveError(f"unknown field {unknown[0]!r} (fields: {', '.join(STATUS_KEYS)})")
        missing = [key for key in STATUS_KEYS if key not in status]
        if missing:
            raise CurveError(f"missing field {missing[0]!r}")
        return cls(
            cap_watts=_numbers(status["capWatts"], "capWatts"),
            inferences_per_second=_numbers(status["inferencesPerSecond"], "inferencesPerSecond"),
            uncapped_watts=_number(status["uncappedWatts"], "uncappedWatts"),
        )


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CurveError(f"{field}: expected a number, got {value!r}")
    return float(value)


def _numbers(value: object, field: str) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise CurveError(f"{field}: expected a list of numbers, got {value!r}")
    return tuple(_number(v, f"{field}[{i}]") for i, v in enumerate(value))


def curve_from_measurements(
    points: Iterable[tuple[float, float]],
    uncapped_watts: float,
    max_points: int = MAX_CURVE_POINTS,
) -> ThroughputCurve | None:
    """The upper envelope of measured ``(peak watts, inferences/s)`` settings, in at most
    ``max_points`` points; None when nothing usable was measured.

    The envelope keeps a point only where the best throughput so far rises (a hotter
    setting that is no faster is never worth its watts). Compaction drops, one at a time,
    the inner point whose removal moves the curve least (the first and the last stay), so
    the shape is kept where it bends. ``uncapped_watts`` is raised to the last point's
    peak if below it (the measurements say the member can draw that much).
    """
    if not 2 <= max_points <= MAX_CURVE_POINTS:
        raise ValueError(f"max_points must be in [2, {MAX_CURVE_POINTS}], got {max_points}")
    usable = sorted(
        (float(watts), float(ips))
        for watts, ips in points
        if math.isfinite(watts) and math.isfinite(ips) and watts > 0 and ips >= 0
    )
    envelope: list[tuple[float, float]] = []
    for watts, ips in usable:
        if envelope and ips <= envelope[-1][1]:
            continue
        if envelope and watts == envelope[-1][0]:
            envelope[-1] = (watts, ips)  # same peak, faster: sorted, so ips is higher
            continue
        envelope.append((watts, ips))
    if not envelope:
        return None
    while len(envelope) > max_points:
        del envelope[_least_bent(envelope)]
    return ThroughputCurve(
        cap_watts=tuple(w for w, _ in envelope),
        inferences_per_second=tuple(t for _, t in envelope),
        uncapped_watts=max(float(uncapped_watts), envelope[-1][0])
        if math.isfinite(uncapped_watts)
        else envelope[-1][0],
    )


def _least_bent(points: list[tuple[float, float]]) -> int:
    """The inner point whose triangle with its neighbours has the smallest area: the area
    between the curve with and without it."""
    best_index, best_area = 1, math.inf
    for index in range(1, len(points) - 1):
        (x0, y0), (x1, y1), (x2, y2) = points[index - 1], points[index], points[index + 1]
        area = abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))
        if area < best_area:
            best_index, best_area = index, area
    return best_index
