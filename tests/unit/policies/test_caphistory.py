"""Telling a hunting cap from one that steps, alone."""

from __future__ import annotations

from capinfer_sidecar.policies.caphistory import hunting_floor_watts


def test_a_cap_that_rose_and_dropped_again_is_hunting() -> None:
    changes = [(10.0, 700.0, 120.0), (20.0, 120.0, 700.0), (30.0, 700.0, 120.0)]
    assert hunting_floor_watts(changes, 31.0, 90.0, 120.0) == 120.0
    assert hunting_floor_watts(changes[:2], 21.0, 90.0, 700.0) is None  # not yet: one rise
    assert hunting_floor_watts(changes, 125.0, 90.0, 120.0) is None  # forgotten after 90 s


def test_caps_that_step_are_not_hunting() -> None:
    steps_down_then_up = [(25.0, 400.0, 300.0), (50.0, 300.0, 200.0), (90.0, 200.0, 400.0)]
    assert hunting_floor_watts(steps_down_then_up, 95.0, 90.0, 400.0) is None
    assert hunting_floor_watts([], 5.0, 90.0, 400.0) is None
