"""Split a power budget across its members' GPUs: per-GPU caps that never sum over it.

Each member is a set of identical GPUs under one per-GPU cap (a ``PowerCappedInference``'s
pods, say). Under every policy the caps satisfy ``sum(cap * gpus) <= budget`` (summed
exactly, with :func:`math.fsum`), and each cap lies within its member's bounds whenever the
minimums fit. When they do not, whole members are *parked* at 0 W, lowest priority first
(ties: the key last in sort order first), until the others' minimums fit; a parked member
whose minimum fits in what is left is then taken back, highest priority first. A member can
not run usefully under its minimum, and giving every member a slice under it would break
them all: parking says plainly who stops.

Policies:

- ``MaxThroughput`` (default) maximises the members' summed throughput on their curves:
  greedy by marginal throughput per watt on each curve's upper concave hull (exact on the
  hull: a fractional knapsack), above every member's minimum and never above its
  uncapped draw while anyone could use the watts. A member without a curve (nothing
  measured yet) gets the cap ``Equal`` would give it, so that it runs and gets measured;
  watts nobody's curve can use go to those members, up to their maximum.
- ``Proportional`` sets caps in proportion to each member's demand (per-GPU watts it wants:
  :attr:`BudgetMember.demand_watts`), within bounds.
- ``Equal``: one cap level for every GPU, within bounds.

The result depends on the members and the budget only, not on the members' order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from capinfer_core.curve import ThroughputCurve


class SplitPolicy(StrEnum):
    MAX_THROUGHPUT = "MaxThroughput"
    PROPORTIONAL = "Proportional"
    EQUAL = "Equal"


@dataclass(frozen=True)
class BudgetMember:
    """A group of identical GPUs under one per-GPU cap."""

    key: str
    gpus: int
    min_watts: float
    """Per GPU: the lowest cap the member can run under."""
    max_watts: float
    """Per GPU: the highest cap it may get (the board's limit, say)."""
    priority: int = 0
    """Higher is kept first when the minimums do not fit."""
    curve: ThroughputCurve | None = None
    """Per-GPU throughput against the cap; None while nothing is measured."""
    demand_watts: float | None = None
    """Per GPU: the watts the member would draw now without a budget -- its recent peak
    power when the cap does not bind, else its curve's uncapped draw. ``Proportional``
    splits by it; None means the curve's ``uncapped_watts``, or ``max_watts`` without a
    curve."""

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("a member needs a key")
        if self.gpus < 1:
            raise ValueError(f"{self.key}: gpus must be at least 1, got {self.gpus}")
        if not (math.isfinite(self.min_watts) and math.isfinite(self.max_watts)):
            raise ValueError(f"{self.key}: min_watts and max_watts must be finite")
        if not 0 <= self.min_watts <= self.max_watts:
            raise ValueError(
                f"{self.key}: expected 0 <= min_watts <= max_watts, got "
                f"{self.min_watts:g} and {self.max_watts:g}"
            )
        if self.demand_watts is not None and not (
            math.isfinite(self.demand_watts) and self.demand_watts >= 0
        ):
            raise ValueError(f"{self.key}: demand_watts must be a finite number >= 0")

    @property
    def useful_watts(self) -> float:
        """The highest cap worth giving: the uncapped draw (within bounds) when known."""
        if self.curve is None:
            return self.max_watts
        return min(self.max_watts, max(self.min_watts, self.curve.uncapped_watts))

    @property
    def demand(self) -> float:
        if self.demand_watts is not None:
            return self.demand_watts
        return self.curve.uncapped_watts if self.curve is not None else self.max_watts

    def throughput_at(self, cap_watts: float) -> float | None:
        """All the member's GPUs together, per second; None without a curve."""
        if self.curve is None:
            return None
        return self.gpus * self.curve.throughput_at(cap_watts)


@dataclass(frozen=True)
class Allocation:
    policy: SplitPolicy
    budget_watts: float
    caps_watts: Mapping[str, float]
    """Per-GPU cap of every member, by key; 0 for a parked member."""
    allocated_watts: float
    """``sum(cap * gpus)``, exactly summed: never above the budget."""
    satisfiable: bool
    """Whether every member's minimum fitted (no member parked)."""
    cut_members: tuple[str, ...]
    """Parked members (cap 0), in the order they were parked."""
    reason: str
    expected_ips: float
    """Summed throughput the curves promise for these caps (members with a curve)."""
    gpus: Mapping[str, int] = field(default_factory=dict)


def allocate(
    budget_watts: float,
    members: Sequence[BudgetMember],
    policy: SplitPolicy = SplitPolicy.MAX_THROUGHPUT,
) -> Allocation:
    """Per-GPU caps for every member; see the module's docstring for the rules."""
    if not (math.isfinite(budget_watts) and budget_watts >= 0):
        raise ValueError(f"the budget must be a finite number of watts >= 0, got {budget_watts}")
    ordered = sorted(members, key=lambda m: m.key)
    keys = [m.key for m in ordered]
    duplicate = next((a for a, b in itertools.pairwise(keys) if a == b), None)
    if duplicate is not None:
        raise ValueError(f"member {duplicate!r} is listed twice")
    kept, parked = _park(budget_watts, ordered)
    caps: dict[str, float] = {m.key: 0.0 for m in ordered}
    if policy is SplitPolicy.MAX_THROUGHPUT:
        caps.update(_max_throughput(budget_watts, kept))
    elif policy is SplitPolicy.PROPORTIONAL:
        caps.update(_level_fill(budget_watts, kept, [m.demand for m in kept]))
    else:
        caps.update(_level_fill(budget_watts, kept, [1.0] * len(kept)))
    _fit(budget_watts, kept, caps)
    allocated = math.fsum(caps[m.key] * m.gpus for m in ordered)
    expected = math.fsum(ips for m in kept if (ips := m.throughput_at(caps[m.key])) is not None)
    return Allocation(
        policy=policy,
        budget_watts=budget_watts,
        caps_watts=caps,
        allocated_watts=allocated,
        satisfiable=not parked,
        cut_members=tuple(m.key for m in parked),
        reason=_reason(
            budget_watts,
            members=ordered,
            kept=kept,
            parked=parked,
            allocated_watts=allocated,
            policy=policy,
        ),
        expected_ips=expected,
        gpus={m.key: m.gpus for m in ordered},
    )


def _minimum_watts(members: Sequence[BudgetMember]) -> float:
    return math.fsum(m.min_watts * m.gpus for m in members)


def _park(
    budget_watts: float, members: list[BudgetMember]
) -> tuple[list[BudgetMember], list[BudgetMember]]:
    """(kept, parked): park lowest priority first until the minimums fit, then take back
    whoever fits, highest priority first."""
    if _minimum_watts(members) <= budget_watts:
        return members, []
    by_priority = sorted(members, key=lambda m: m.key, reverse=True)
    by_priority.sort(key=lambda m: m.priority)  # stable: ties keep the reversed key order
    kept = list(members)
    parked: list[BudgetMember] = []
    for member in by_priority:
        if _minimum_watts(kept) <= budget_watts:
            break
        kept.remove(member)
        parked.append(member)
    for member in reversed(list(parked)):
        if _minimum_watts(kept) + member.min_watts * member.gpus <= budget_watts:
            parked.remove(member)
            kept.append(member)
    kept.sort(key=lambda m: m.key)
    return kept, parked


def _level_fill(
    budget_watts: float, members: Sequence[BudgetMember], weights: Sequence[float]
) -> dict[str, float]:
    """Caps ``clamp(level * weight, min, max)`` at the highest level that fits the budget.

    ``sum(gpus * cap)`` is piecewise linear in the level; a sweep over its breakpoints
    finds the level exactly.
    """
    lows = [m.min_watts for m in members]
    highs = [m.max_watts for m in members]
    # Breakpoints: (level, order, index); a member joins at min/w and leaves at max/w.
    events: list[tuple[float, int, int]] = []
    for index, weight in enumerate(weights):
        if weight > 0:
            events.append((lows[index] / weight, 0, index))
            events.append((highs[index] / weight, 1, index))
    events.sort()
    constant = math.fsum(low * m.gpus for low, m in zip(lows, members, strict=True))
    slope = 0.0
    level = math.inf
    for at_level, kind, index in events:
        if constant + slope * at_level >= budget_watts:
            level = (budget_watts - constant) / slope if slope > 0 else at_level
            break
        gpus = members[index].gpus
        if kind == 0:
            constant -= lows[index] * gpus
            slope += weights[index] * gpus
        else:
            constant += highs[index] * gpus
            slope -= weights[index] * gpus
    return {
        m.key: min(highs[i], max(lows[i], level * weights[i])) if weights[i] > 0 else lows[i]
        for i, m in enumerate(members)
    }


@dataclass(frozen=True)
class _Segment:
    slope: float
    """Inferences/s per watt: the member's throughput gain per watt of budget."""
    watts: float
    """Per GPU."""
    member: int


def _upper_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper concave hull of points sorted by x (monotone chain)."""
    hull: list[tuple[float, float]] = []
    for point in points:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or under the chord to the new one.
            if (x1 - x0) * (point[1] - y0) - (point[0] - x0) * (y1 - y0) >= 0:
                hull.pop()
            else:
                break
        hull.append(point)
    return hull


def _segments(member: BudgetMember, index: int) -> list[_Segment]:
    curve = member.curve
    low, high = member.min_watts, member.useful_watts
    if curve is None or high <= low:
        return []
    xs = [low, *(c for c in curve.cap_watts if low < c < high), high]
    hull = _upper_hull([(x, curve.throughput_at(x)) for x in xs])
    return [
        _Segment((y1 - y0) / (x1 - x0), x1 - x0, index)
        for (x0, y0), (x1, y1) in itertools.pairwise(hull)
    ]


def _max_throughput(budget_watts: float, members: list[BudgetMember]) -> dict[str, float]:
    if not members:
        return {}
    unmeasured = [m for m in members if m.curve is None]
    caps = {m.key: m.min_watts for m in members}
    if unmeasured:
        equal = _level_fill(budget_watts, members, [1.0] * len(members))
        caps.update({m.key: equal[m.key] for m in unmeasured})
    spare = budget_watts - math.fsum(caps[m.key] * m.gpus for m in members)
    segments = [s for i, m in enumerate(members) for s in _segments(m, i)]
    # Steepest first; equal slopes share what is left in proportion to their size. Ties are
    # broken by member order (sorted keys) only through the stable sort: a group at one
    # slope is filled together, so no member of it is favoured.
    segments.sort(key=lambda s: -s.slope)
    start = 0
    while start < len(segments) and spare > 0:
        end = start + 1
        while end < len(segments) and math.isclose(
            segments[end].slope, segments[start].slope, rel_tol=1e-9, abs_tol=1e-12
        ):
            end += 1
        group = segments[start:end]
        cost = math.fsum(s.watts * members[s.member].gpus for s in group)
        share = 1.0 if cost <= spare else spare / cost
        for segment in group:
            member = members[segment.member]
            caps[member.key] = min(member.useful_watts, caps[member.key] + share * segment.watts)
        spare -= share * cost
        start = end
    if unmeasured and spare > 0:
        # Watts no curve can use: room for the unmeasured members, up to their maximum.
        extra = _level_fill(
            spare + math.fsum(caps[m.key] * m.gpus for m in unmeasured),
            [_at_least(m, caps[m.key]) for m in unmeasured],
            [1.0] * len(unmeasured),
        )
        caps.update(extra)
    return caps


def _at_least(member: BudgetMember, watts: float) -> BudgetMember:
    """The member with its minimum raised to ``watts`` (a fill that only adds)."""
    return BudgetMember(member.key, member.gpus, min(watts, member.max_watts), member.max_watts)


def _fit(budget_watts: float, members: Sequence[BudgetMember], caps: dict[str, float]) -> None:
    """Take back the rounding errors of the arithmetic above, so that the exact sum is
    within the budget: shave the members with the most room above their minimum."""
    for _ in range(len(members) + 8):
        excess = math.fsum(caps[m.key] * m.gpus for m in members) - budget_watts
        if excess <= 0:
            return
        member = max(members, key=lambda m: ((caps[m.key] - m.min_watts) * m.gpus, m.key))
        room = caps[member.key] - member.min_watts
        cut = min(room, excess / member.gpus * (1 + 1e-9) + 1e-9)
        caps[member.key] = max(member.min_watts, caps[member.key] - cut)
    raise AssertionError("the minimums fit, yet the caps could not be brought under the budget")


def _reason(
    budget_watts: float,
    *,
    members: Sequence[BudgetMember],
    kept: Sequence[BudgetMember],
    parked: Sequence[BudgetMember],
    allocated_watts: float,
    policy: SplitPolicy,
) -> str:
    gpus = sum(m.gpus for m in members)
    text = (
        f"{policy.value}: {allocated_watts:.1f} of {budget_watts:.1f} W to "
        f"{len(members)} members ({gpus} GPUs)"
    )
    if parked:
        names = ", ".join(m.key for m in parked)
        text += (
            f"; the minimums need {_minimum_watts(members):.1f} W, more than the budget: "
            f"parked at 0 W (lowest priority first): {names}"
        )
    unmeasured = [m.key for m in kept if m.curve is None]
    if policy is SplitPolicy.MAX_THROUGHPUT and unmeasured:
        shown = ", ".join(unmeasured[:5]) + (", …" if len(unmeasured) > 5 else "")
        text += f"; no curve yet, so the equal share: {shown}"
    return text
