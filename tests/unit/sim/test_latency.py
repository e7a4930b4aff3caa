"""The simulator's request latencies: FIFO spans, Triton's 60 s window, and a closed loop that
obeys Little's law (the number of clients = throughput x mean latency)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capinfer_sidecar.policies import make_policy
from capinfer_sidecar.sim import latency
from capinfer_sidecar.sim.config import RunConfig, SaturatingLoad
from capinfer_sidecar.sim.latency import LatencyHistogram, RequestLatencies
from capinfer_sidecar.sim.profiles import load_profile_set
from capinfer_sidecar.simloop import run


def test_quantiles_of_uniform_latencies() -> None:
    histogram = LatencyHistogram()
    histogram.add(0.010, 0.110, 1000)
    assert histogram.quantile_s(0.5) == pytest.approx(0.060, rel=0.02)
    assert histogram.quantile_s(0.99) == pytest.approx(0.109, rel=0.02)
    assert LatencyHistogram().quantile_s(0.99) is None


def test_a_batch_takes_the_oldest_requests_and_splits_a_span() -> None:
    latencies = RequestLatencies()
    latencies.arrived(0.0, 0.0, 3)
    latencies.arrived(1.0, 2.0, 10)
    batch = latencies.take(5)
    assert batch == [(0.0, 0.0, 3.0), (1.0, 2.0, 2.0)]
    latencies.served(batch, end_s=3.0)
    # 3 requests waited 3 s, 2 waited between 1 s and 2 s: p99 is of the 3 s ones.
    assert latencies.run_p99_ms() == pytest.approx(3000, rel=0.02)
    assert latencies.take(100) == [(1.0, 2.0, 8.0)]


def test_tritons_window_forgets_after_a_minute() -> None:
    latencies = RequestLatencies()
    latencies.arrived(0.0, 0.0, 100)
    latencies.served(latencies.take(100), end_s=1.0)  # 1 s each
    latencies.arrived(70.0, 70.0, 100)
    latencies.served(latencies.take(100), end_s=70.01)  # 10 ms each
    assert latencies.window_p99_ms(30.0) == pytest.approx(1000, rel=0.02)
    assert latencies.window_p99_ms(71.0) == pytest.approx(10, rel=0.02)
    assert latencies.run_p99_ms() == pytest.approx(1000, rel=0.02)


@pytest.mark.parametrize("batch", [4, 32])
def test_a_closed_loop_obeys_littles_law(batch: int) -> None:
    profile = load_profile_set("p40").workload("Res50", "caltech")
    clients = 64
    config = RunConfig(
        profile=profile, cap_watts=250.0, duration_s=60.0, seed=3,
        load=SaturatingLoad(concurrency=clients),
    )  # fmt: skip
    result = run(config, make_policy("Static", batch_size=batch))
    # FIFO, every client always waiting: each request's latency is about the same, and
    # Little's law makes it clients / throughput.
    expected_ms = 1000 * clients / result.throughput_ips
    assert result.p99_latency_ms is not None
    assert result.p99_latency_ms == pytest.approx(expected_ms, rel=0.25)
    assert result.p99_latency_ms >= 1000 * profile.batch_latency_s(batch, None)


def _reference_weights(spans: list[tuple[float, float, float]]) -> dict[int, float]:
    """Every span spread over its bins one by one: the definition the histogram keeps."""
    weights: dict[int, float] = {}
    for shortest, longest, count in spans:
        first, last = latency._bin(shortest), latency._bin(longest)
        if first == last or longest <= shortest:
            weights[first] = weights.get(first, 0.0) + count
            continue
        for index in range(first, last + 1):
            low = max(shortest, latency._bin_low_s(index))
            high = min(longest, latency._bin_low_s(index + 1))
            if high > low:
                weights[index] = weights.get(index, 0.0) + count * (high - low) / (
                    longest - shortest
                )
    return weights


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(1e-5, 5.0),
            # Narrow spans (a few bins) as well as wide ones (a backlog's hundreds).
            st.floats(0.0, 0.1) | st.floats(0.0, 50.0),
            st.floats(0.01, 64.0),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([0.1, 0.5, 0.9, 0.99, 0.999]),
)
def test_spans_are_binned_as_if_spread_bin_by_bin(
    raw: list[tuple[float, float, float]], q: float
) -> None:
    spans = [(shortest, shortest * (1 + widen), count) for shortest, widen, count in raw]
    whole, halves, other = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for span in spans:
        whole.add(*span)
    for span in spans[::2]:
        halves.add(*span)
    for span in spans[1::2]:
        other.add(*span)
    halves.merge(other)  # as Triton's window merges its age buckets
    reference = LatencyHistogram(weights=_reference_weights(spans))
    reference.total = sum(count for _, _, count in spans)
    expected = reference.quantile_s(q)
    assert expected is not None
    for built in (whole, halves):
        found = built.quantile_s(q)
        assert found == pytest.approx(expected, rel=1e-6)
