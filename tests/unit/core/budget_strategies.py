"""Hypothesis strategies for budget members and curves (shared by the core's tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from capinfer_core.budget import BudgetMember, ThroughputCurve, curve_from_measurements


@st.composite
def measured_curves(draw: st.DrawFn) -> ThroughputCurve:
    """An envelope of random measurements: any shape, concave or not."""
    points = draw(
        st.lists(st.tuples(st.floats(20.0, 700.0), st.floats(0.0, 5000.0)), min_size=1, max_size=40)
    )
    uncapped = draw(st.floats(20.0, 750.0))
    curve = curve_from_measurements(points, uncapped)
    assert curve is not None  # every drawn point is usable
    return curve


@st.composite
def concave_curves(draw: st.DrawFn) -> ThroughputCurve:
    """Concave from (0, 0) on: slopes fall from point to point (the line to zero below the
    first point included), so the curve is its own upper concave hull."""
    count = draw(st.integers(1, 8))
    widths = draw(st.lists(st.floats(5.0, 120.0), min_size=count, max_size=count))
    slopes = sorted(
        draw(st.lists(st.floats(0.0, 20.0), min_size=count, max_size=count)), reverse=True
    )
    caps: list[float] = []
    ips: list[float] = []
    watts, throughput = 0.0, 0.0
    for width, slope in zip(widths, slopes, strict=True):
        watts += width
        throughput += width * slope
        caps.append(watts)
        ips.append(throughput)
    uncapped = caps[-1] + draw(st.floats(0.0, 50.0))
    return ThroughputCurve(tuple(caps), tuple(ips), uncapped)


@st.composite
def members(
    draw: st.DrawFn,
    curves: st.SearchStrategy[ThroughputCurve] | None = None,
    max_size: int = 25,
    all_measured: bool = False,
) -> list[BudgetMember]:
    """Random members; ``all_measured``: every one has a curve."""
    curve_strategy = curves if curves is not None else measured_curves()
    maybe_curve = curve_strategy if all_measured else st.none() | curve_strategy
    count = draw(st.integers(1, max_size))
    result = []
    for index in range(count):
        min_watts = draw(st.floats(0.0, 250.0))
        max_watts = min_watts + draw(st.floats(0.0, 450.0))
        result.append(
            BudgetMember(
                key=f"m{index:03d}",
                gpus=draw(st.integers(1, 8)),
                min_watts=min_watts,
                max_watts=max_watts,
                priority=draw(st.integers(0, 3)),
                curve=draw(maybe_curve),
                demand_watts=draw(st.none() | st.floats(0.0, 700.0)),
            )
        )
    return result
