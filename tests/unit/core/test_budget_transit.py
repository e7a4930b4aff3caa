"""Caps in transit: the budget holds at every step, counting members going down at their
old cap until their sidecar confirms the new one."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capinfer_core.budget import CapLedger, next_caps


@dataclass
class Sidecar:
    """What a member really runs under: it reads the caps published to it in order, late
    and skipping some, and may adopt any of them at any moment. ``history[g]`` is the cap
    of generation ``g``."""

    history: list[float]
    seen: int = 0

    @property
    def running_watts(self) -> float:
        return self.history[self.seen]

    @property
    def worst_watts(self) -> float:
        """The most it may run under from now on without anything new published."""
        return max(self.history[self.seen :])


def _targets(draw: st.DrawFn, gpus: dict[str, int], budget: float) -> dict[str, float]:
    """Random per-GPU targets whose sum fits the budget."""
    weights = {key: draw(st.floats(0.0, 1.0)) for key in gpus}
    scale = draw(st.floats(0.0, 1.0)) * budget
    total = sum(weights[key] * gpus[key] for key in gpus) or 1.0
    targets = {key: weights[key] * scale / total for key in gpus}
    while math.fsum(targets[key] * gpus[key] for key in gpus) > budget:  # rounding
        targets = {key: cap * (1 - 1e-12) for key, cap in targets.items()}
    return targets


def _publish(ledger: CapLedger, sidecars: dict[str, Sidecar], caps: dict[str, float]) -> None:
    for key, cap in caps.items():
        if cap != sidecars[key].history[-1]:
            sidecars[key].history.append(cap)


def _worst(sidecars: dict[str, Sidecar], gpus: dict[str, int]) -> float:
    return math.fsum(sidecars[key].worst_watts * gpus[key] for key in gpus)


@settings(max_examples=150)
@given(st.data())
def test_budget_holds_at_every_step(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 8))
    gpus = {f"m{i}": data.draw(st.integers(1, 4)) for i in range(count)}
    budget = data.draw(st.floats(100.0, 5000.0))
    start = _targets(data.draw, gpus, budget)
    ledger = CapLedger(start, gpus)
    sidecars = {key: Sidecar([cap]) for key, cap in start.items()}
    targets = start
    keys = st.sampled_from(sorted(gpus))
    for _ in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["retarget", "adopt", "confirm", "timeout"]))
        if action == "retarget":
            targets = _targets(data.draw, gpus, budget)
        elif action == "adopt":
            sidecar = sidecars[data.draw(keys)]
            sidecar.seen = data.draw(st.integers(sidecar.seen, len(sidecar.history) - 1))
        elif action == "confirm":
            key = data.draw(keys)
            ledger.confirm(key, sidecars[key].seen)
        # "timeout": a sidecar stays quiet; nothing changes in what counts.
        _publish(ledger, sidecars, ledger.step(targets, budget))
        assert _worst(sidecars, gpus) <= budget
        assert ledger.counted_watts <= budget
    # Once every sidecar runs under its latest cap and says so, two steps reach the targets.
    for _ in range(2):
        for key, sidecar in sidecars.items():
            sidecar.seen = len(sidecar.history) - 1
            ledger.confirm(key, sidecar.seen)
        _publish(ledger, sidecars, ledger.step(targets, budget))
        assert _worst(sidecars, gpus) <= budget
    assert ledger.published == targets


@settings(max_examples=200)
@given(st.data())
def test_a_falling_budget_never_lets_anything_rise_until_it_holds(data: st.DataObject) -> None:
    count = data.draw(st.integers(2, 8))
    gpus = {f"m{i}": data.draw(st.integers(1, 4)) for i in range(count)}
    old_budget = data.draw(st.floats(500.0, 5000.0))
    start = _targets(data.draw, gpus, old_budget)
    ledger = CapLedger(start, gpus)
    sidecars = {key: Sidecar([cap]) for key, cap in start.items()}
    budget = old_budget * data.draw(st.floats(0.2, 1.0))
    targets = _targets(data.draw, gpus, budget)
    previous = _worst(sidecars, gpus)
    for _ in range(30):
        if data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(gpus)))
            sidecars[key].seen = len(sidecars[key].history) - 1
            ledger.confirm(key, sidecars[key].seen)
        _publish(ledger, sidecars, ledger.step(targets, budget))
        worst = _worst(sidecars, gpus)
        # Over the budget the worst case only falls (confirmations), never rises.
        assert worst <= max(budget, previous)
        previous = worst


def test_decreases_at_once_increases_wait_for_confirmation() -> None:
    gpus = {"down": 2, "up": 1}
    budget = 2 * 200 + 100
    published = {"down": 200.0, "up": 100.0}
    held = dict(published)
    targets = {"down": 100.0, "up": 300.0}
    step = next_caps(targets, published, held, budget, gpus)
    assert step == {"down": 100.0, "up": 100.0}  # "down" still counts at 200 W per GPU
    # A timeout proves nothing: still unconfirmed, still nothing for "up".
    assert next_caps(targets, step, held, budget, gpus) == step
    held["down"] = 100.0
    assert next_caps(targets, step, held, budget, gpus) == targets


def test_rising_members_share_the_headroom_in_proportion() -> None:
    gpus = {"a": 1, "b": 1, "c": 1}
    published = {"a": 100.0, "b": 100.0, "c": 300.0}
    targets = {"a": 200.0, "b": 300.0, "c": 0.0}
    # Budget 560 W: 60 W of headroom while c is unconfirmed; a wants 100, b 200.
    step = next_caps(targets, published, dict(published), 560.0, gpus)
    assert step["c"] == 0.0
    assert step["a"] == pytest.approx(120.0)
    assert step["b"] == pytest.approx(140.0)


def test_rise_up_to_the_held_cap_is_free() -> None:
    # "a" was lowered to 100 W but may still run under 250 W: back to 200 W costs nothing.
    step = next_caps({"a": 200.0}, {"a": 100.0}, {"a": 250.0}, 250.0, {"a": 1})
    assert step == {"a": 200.0}


def test_ledger_holds_a_raise_nobody_confirmed() -> None:
    """A raise counts as soon as it is published, and keeps counting after a decrease until
    the decrease is confirmed: the sidecar may have read the raise in between."""
    ledger = CapLedger({"a": 100.0, "b": 100.0}, {"a": 1, "b": 1})
    assert ledger.step({"a": 200.0, "b": 0.0}, 200.0) == {"a": 100.0, "b": 0.0}
    assert ledger.confirm("b", ledger.generation["b"])
    assert ledger.step({"a": 200.0, "b": 0.0}, 200.0) == {"a": 200.0, "b": 0.0}
    raised = ledger.generation["a"]
    # Now a goes back to 0 and b wants 200: a may be running under 200 W, unconfirmed.
    assert ledger.step({"a": 0.0, "b": 200.0}, 200.0) == {"a": 0.0, "b": 0.0}
    assert ledger.held["a"] == 200.0
    assert not ledger.confirm("a", 0)  # stale: the cap it started with
    assert ledger.confirm("a", raised)  # it did read the raise
    assert ledger.held["a"] == 200.0
    assert ledger.step({"a": 0.0, "b": 200.0}, 200.0) == {"a": 0.0, "b": 0.0}
    assert ledger.confirm("a", ledger.generation["a"])
    assert ledger.held["a"] == 0.0
    assert ledger.step({"a": 0.0, "b": 200.0}, 200.0) == {"a": 0.0, "b": 200.0}


def test_a_value_published_twice_is_told_apart_by_generation() -> None:
    ledger = CapLedger({"a": 150.0}, {"a": 1})
    ledger.step({"a": 100.0}, 1000.0)
    first = ledger.generation["a"]
    ledger.step({"a": 200.0}, 1000.0)
    ledger.step({"a": 100.0}, 1000.0)
    assert ledger.confirm("a", first)  # the first 100 W: 200 W may still be read
    assert ledger.held["a"] == 200.0
    assert ledger.confirm("a", ledger.generation["a"])
    assert ledger.held["a"] == 100.0
    assert not ledger.confirm("a", ledger.generation["a"])  # nothing new


def test_ledger_members_come_and_go() -> None:
    ledger = CapLedger({"a": 100.0}, {"a": 1})
    ledger.add("b", 2, 300.0)  # drawing up to 300 W per GPU until it confirms a cap
    assert ledger.counted_watts == 700.0
    with pytest.raises(ValueError, match="already"):
        ledger.add("b", 1, 1.0)
    ledger.remove("a")
    assert ledger.counted_watts == 600.0


def test_members_must_match() -> None:
    with pytest.raises(ValueError, match="same members"):
        next_caps({"a": 1.0}, {"a": 1.0}, {"b": 1.0}, 10.0, {"a": 1})
