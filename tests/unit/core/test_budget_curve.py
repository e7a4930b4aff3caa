"""Throughput curves: the envelope of measurements, interpolation, the status form."""

from __future__ import annotations

import math

import pytest
from budget_strategies import measured_curves
from hypothesis import given
from hypothesis import strategies as st

from capinfer_core.budget import MAX_CURVE_POINTS, ThroughputCurve, curve_from_measurements
from capinfer_core.curve import CurveError


def test_envelope_keeps_the_best_setting_under_each_cap() -> None:
    # (peak W, inferences/s): the 160 W setting is slower than the 150 W one: never worth it.
    curve = curve_from_measurements([(150, 90), (100, 50), (160, 80), (200, 100)], 230)
    assert curve is not None
    assert curve.cap_watts == (100.0, 150.0, 200.0)
    assert curve.inferences_per_second == (50.0, 90.0, 100.0)
    assert curve.uncapped_watts == 230.0


def test_interpolation_between_below_and_above_the_points() -> None:
    curve = ThroughputCurve((100.0, 200.0), (50.0, 150.0), 250.0)
    assert curve.throughput_at(150.0) == pytest.approx(100.0)
    assert curve.throughput_at(300.0) == 150.0  # flat above the last point
    assert curve.throughput_at(50.0) == pytest.approx(25.0)  # towards zero at 0 W
    assert curve.throughput_at(0.0) == 0.0


def test_same_peak_keeps_the_faster_setting() -> None:
    curve = curve_from_measurements([(100, 50), (100, 70)], 100)
    assert curve is not None
    assert curve.inferences_per_second == (70.0,)


def test_nothing_usable_gives_no_curve() -> None:
    assert curve_from_measurements([], 200) is None
    assert curve_from_measurements([(math.nan, 10), (-5, 10), (100, math.inf)], 200) is None


def test_uncapped_draw_is_at_least_the_hottest_useful_point() -> None:
    curve = curve_from_measurements([(100, 50), (220, 90)], 200)
    assert curve is not None
    assert curve.uncapped_watts == 220.0


def test_compaction_keeps_the_bend() -> None:
    # A straight line to 200 W, then flat: the knee at 200 W must survive compaction.
    points = [(float(w), float(w)) for w in range(50, 201, 10)]
    points += [(float(w), 200.0 + (w - 200) * 0.01) for w in range(210, 400, 10)]
    curve = curve_from_measurements(points, 400, max_points=3)
    assert curve is not None
    assert len(curve.cap_watts) == 3
    assert curve.cap_watts[0] == 50.0
    assert curve.cap_watts[1] == pytest.approx(200.0, abs=10.0)


@given(measured_curves(), st.floats(0.0, 800.0), st.floats(0.0, 800.0))
def test_curves_never_fall_as_the_cap_rises(
    curve: ThroughputCurve, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    assert curve.throughput_at(low) <= curve.throughput_at(high)
    assert len(curve.cap_watts) <= MAX_CURVE_POINTS


@given(st.lists(st.tuples(st.floats(1.0, 700.0), st.floats(0.0, 5000.0)), min_size=1, max_size=60))
def test_envelope_is_never_above_what_was_measured(points: list[tuple[float, float]]) -> None:
    """At each kept point, some setting under that cap delivered that throughput."""
    curve = curve_from_measurements(points, 0.0)
    assert curve is not None
    for cap, ips in zip(curve.cap_watts, curve.inferences_per_second, strict=True):
        assert max(t for w, t in points if w <= cap) == ips
    # And the envelope reaches the best measured throughput.
    assert curve.peak_ips == max(t for _, t in points)


@given(measured_curves())
def test_status_round_trip(curve: ThroughputCurve) -> None:
    assert ThroughputCurve.from_status(curve.to_status()) == curve


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ([1, 2], "a curve is a mapping"),
        ({"capWatts": [100], "inferencesPerSecond": [5]}, "missing field 'uncappedWatts'"),
        (
            {"capWatts": [100], "inferencesPerSecond": [5], "uncappedWatts": 100, "x": 1},
            "unknown field 'x'",
        ),
        ({"capWatts": "100", "inferencesPerSecond": [5], "uncappedWatts": 100}, "capWatts"),
        ({"capWatts": [100, True], "inferencesPerSecond": [5, 6], "uncappedWatts": 100}, "[1]"),
        ({"capWatts": [100, 90], "inferencesPerSecond": [5, 6], "uncappedWatts": 100}, "ascend"),
        ({"capWatts": [90, 100], "inferencesPerSecond": [6, 5], "uncappedWatts": 100}, "decrease"),
        ({"capWatts": [100], "inferencesPerSecond": [5, 6], "uncappedWatts": 100}, "points"),
        ({"capWatts": [100], "inferencesPerSecond": [5], "uncappedWatts": 90}, "uncappedWatts"),
        ({"capWatts": [0], "inferencesPerSecond": [5], "uncappedWatts": 90}, "positive"),
        ({"capWatts": [], "inferencesPerSecond": [], "uncappedWatts": 90}, "at least one"),
        (
            {
                "capWatts": list(range(1, 11)),
                "inferencesPerSecond": list(range(10)),
                "uncappedWatts": 20,
            },
            "at most 8",
        ),
        ({"capWatts": [100], "inferencesPerSecond": [math.nan], "uncappedWatts": 90}, "finite"),
    ],
)
def test_status_is_validated_on_read(status: object, message: str) -> None:
    with pytest.raises(CurveError, match=None) as caught:
        ThroughputCurve.from_status(status)  # type: ignore[arg-type]
    assert message in str(caught.value)
