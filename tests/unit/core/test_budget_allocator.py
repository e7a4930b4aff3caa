"""The budget allocator: never over the budget, within bounds, and the most throughput."""

from __future__ import annotations

import math
import random

import pytest
from budget_strategies import concave_curves, members
from hypothesis import given, settings
from hypothesis import strategies as st

from capinfer_core.budget import (
    Allocation,
    BudgetMember,
    SplitPolicy,
    ThroughputCurve,
    allocate,
)

POLICIES = st.sampled_from(list(SplitPolicy))


def _budgets(draw: st.DrawFn, fleet: list[BudgetMember]) -> float:
    most = sum(m.max_watts * m.gpus for m in fleet)
    return draw(st.floats(0.0, 1.3 * most + 1.0))


def _total(allocation: Allocation, fleet: list[BudgetMember]) -> float:
    return math.fsum(allocation.caps_watts[m.key] * m.gpus for m in fleet)


def _throughput(caps: dict[str, float] | Allocation, fleet: list[BudgetMember]) -> float:
    values = caps.caps_watts if isinstance(caps, Allocation) else caps
    return math.fsum(m.gpus * m.curve.throughput_at(values[m.key]) for m in fleet if m.curve)


@given(st.data(), members(), POLICIES)
def test_never_over_the_budget_and_within_bounds(
    data: st.DataObject, fleet: list[BudgetMember], policy: SplitPolicy
) -> None:
    most = sum(m.max_watts * m.gpus for m in fleet)
    budget = data.draw(st.just(0.0) | st.floats(0.0, 1.3 * most + 1.0) | st.floats(0.0, 1.0e6))
    allocation = allocate(budget, fleet, policy)
    assert _total(allocation, fleet) <= budget
    assert allocation.allocated_watts == _total(allocation, fleet)
    assert set(allocation.caps_watts) == {m.key for m in fleet}
    cut = set(allocation.cut_members)
    assert allocation.satisfiable == (not cut)
    minimums = math.fsum(m.min_watts * m.gpus for m in fleet)
    assert allocation.satisfiable == (minimums <= budget)
    for member in fleet:
        cap = allocation.caps_watts[member.key]
        if member.key in cut:
            assert cap == 0.0
        else:
            assert member.min_watts <= cap <= member.max_watts
    if cut:
        # No parked member could have been kept: its minimum does not fit in what is left.
        kept = math.fsum(m.min_watts * m.gpus for m in fleet if m.key not in cut)
        for member in fleet:
            if member.key in cut:
                assert kept + member.min_watts * member.gpus > budget
        assert "parked" in allocation.reason


@given(st.data(), members(max_size=12), POLICIES)
def test_deterministic_whatever_the_order(
    data: st.DataObject, fleet: list[BudgetMember], policy: SplitPolicy
) -> None:
    budget = _budgets(data.draw, fleet)
    shuffled = list(fleet)
    random.Random(data.draw(st.integers(0, 1000))).shuffle(shuffled)
    assert allocate(budget, fleet, policy) == allocate(budget, shuffled, policy)


@settings(max_examples=200)
@given(st.data(), members(curves=concave_curves(), max_size=12, all_measured=True))
def test_max_throughput_is_optimal_on_concave_curves(
    data: st.DataObject, fleet: list[BudgetMember]
) -> None:
    """On concave curves the greedy split is the optimum: no other split within the bounds
    and the budget does better -- neither Equal, nor Proportional, nor random ones."""
    minimums = math.fsum(m.min_watts * m.gpus for m in fleet)
    budget = minimums + data.draw(st.floats(0.0, 2000.0))
    best = allocate(budget, fleet)
    achieved = _throughput(best, fleet)
    assert best.expected_ips == pytest.approx(achieved)
    for policy in (SplitPolicy.EQUAL, SplitPolicy.PROPORTIONAL):
        other = allocate(budget, fleet, policy)
        assert _throughput(other, fleet) <= achieved * (1 + 1e-9) + 1e-6
    rng = random.Random(data.draw(st.integers(0, 10_000)))
    for _ in range(20):
        caps = {m.key: m.min_watts for m in fleet}
        spare = budget - minimums
        for member in rng.sample(fleet, len(fleet)):
            room = min(spare / member.gpus, member.max_watts - member.min_watts)
            step = rng.uniform(0.0, max(0.0, room))
            caps[member.key] += step
            spare -= step * member.gpus
        assert _throughput(caps, fleet) <= achieved * (1 + 1e-9) + 1e-6


@given(st.data(), members())
def test_max_throughput_wastes_nothing_above_the_uncapped_draw(
    data: st.DataObject, fleet: list[BudgetMember]
) -> None:
    budget = _budgets(data.draw, fleet)
    allocation = allocate(budget, fleet)
    if not allocation.satisfiable:
        return
    for member in fleet:
        assert allocation.caps_watts[member.key] <= member.useful_watts
    if allocation.allocated_watts < budget * (1 - 1e-9) - 1e-6:
        # Watts were left over: only because every member has all it can use.
        for member in fleet:
            assert allocation.caps_watts[member.key] == pytest.approx(member.useful_watts)


def _curve(*points: tuple[float, float], uncapped: float) -> ThroughputCurve:
    return ThroughputCurve(tuple(p[0] for p in points), tuple(p[1] for p in points), uncapped)


def test_watts_go_where_they_buy_the_most() -> None:
    # "steep" gains 2/s per watt all the way to 300 W; "flat" is done at 150 W.
    steep = BudgetMember("steep", 1, 100, 300, curve=_curve((100, 200), (300, 600), uncapped=300))
    flat = BudgetMember("flat", 1, 100, 300, curve=_curve((100, 300), (150, 320), uncapped=150))
    allocation = allocate(400, [steep, flat])
    assert allocation.caps_watts == {"steep": 300.0, "flat": 100.0}
    assert allocation.expected_ips == pytest.approx(600 + 300)
    equal = allocate(400, [steep, flat], SplitPolicy.EQUAL)
    assert equal.caps_watts == {"steep": 200.0, "flat": 200.0}
    assert equal.expected_ips == pytest.approx(400 + 320)


def test_nothing_above_the_uncapped_draw_while_others_use_it() -> None:
    small = BudgetMember("small", 2, 50, 300, curve=_curve((50, 10), (120, 100), uncapped=130))
    big = BudgetMember("big", 1, 50, 300, curve=_curve((50, 5), (300, 30), uncapped=300))
    allocation = allocate(2 * 130 + 300 + 100, [small, big])
    assert allocation.caps_watts["small"] == 130.0  # flat after 120 W: up to the uncapped draw
    assert allocation.caps_watts["big"] == 300.0
    assert allocation.allocated_watts == 560.0  # the other 100 W buy nothing anywhere


def test_unmeasured_members_get_the_equal_share_and_the_leftovers() -> None:
    measured = BudgetMember("a", 1, 100, 300, curve=_curve((100, 50), (150, 60), uncapped=150))
    fresh = BudgetMember("b", 1, 100, 300)
    allocation = allocate(400, [measured, fresh])
    # Equal gives b 200 W; a's curve stops paying at 150 W, so b gets the other 50 W.
    assert allocation.caps_watts == {"a": 150.0, "b": 250.0}
    assert "no curve yet" in allocation.reason


def test_proportional_follows_demand() -> None:
    low = BudgetMember("low", 1, 50, 400, demand_watts=100)
    high = BudgetMember("high", 1, 50, 400, demand_watts=300)
    allocation = allocate(200, [low, high], SplitPolicy.PROPORTIONAL)
    assert allocation.caps_watts["low"] == pytest.approx(50.0)
    assert allocation.caps_watts["high"] == pytest.approx(150.0)


def test_minimums_that_do_not_fit_park_the_lowest_priority_first() -> None:
    fleet = [
        BudgetMember("batch-jobs", 4, 100, 300, priority=0),
        BudgetMember("search", 4, 100, 300, priority=5),
        BudgetMember("ads", 2, 100, 300, priority=3),
        BudgetMember("tiny", 1, 60, 300, priority=1),
    ]
    # Minimums: 400 + 400 + 200 + 60 = 1060 W; the budget holds search and ads (600 W)
    # plus tiny (60 W), which is taken back after batch-jobs and tiny were parked.
    allocation = allocate(700, fleet)
    assert not allocation.satisfiable
    assert allocation.cut_members == ("batch-jobs",)
    assert allocation.caps_watts["batch-jobs"] == 0.0
    assert allocation.caps_watts["search"] >= 100
    assert allocation.caps_watts["tiny"] >= 60
    assert allocation.allocated_watts <= 700
    assert "batch-jobs" in allocation.reason
    # Too little even for the most important member: everyone parked, nothing allocated.
    nothing = allocate(50, fleet)
    assert set(nothing.cut_members) == {m.key for m in fleet}
    assert nothing.allocated_watts == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus": 0}, "gpus"),
        ({"min_watts": 300.0}, "min_watts <= max_watts"),
        ({"min_watts": -1.0}, "min_watts"),
        ({"max_watts": math.inf}, "finite"),
        ({"demand_watts": -5.0}, "demand_watts"),
        ({"key": ""}, "key"),
    ],
)
def test_members_are_validated(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"key": "a", "gpus": 1, "min_watts": 100.0, "max_watts": 200.0}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        BudgetMember(**fields)  # type: ignore[arg-type]


def test_bad_budgets_and_duplicate_keys_are_refused() -> None:
    member = BudgetMember("a", 1, 100, 200)
    with pytest.raises(ValueError, match="budget"):
        allocate(-1, [member])
    with pytest.raises(ValueError, match="budget"):
        allocate(math.nan, [member])
    with pytest.raises(ValueError, match="twice"):
        allocate(500, [member, member])
    assert allocate(500, []).caps_watts == {}
