"""Arrivals as counts: the right distribution, conserved, and one draw per query."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capinfer_sidecar.sim.arrivals import ClosedLoop, PoissonArrivals, poisson_count
from capinfer_sidecar.sim.config import PoissonLoad, RateStep


def test_poisson_counts_have_the_mean_and_variance_of_their_distribution() -> None:
    rng = random.Random(7)
    for mean in (0.3, 4.0, 9.9, 10.0, 57.0, 2500.0):
        draws = [poisson_count(rng, mean) for _ in range(4000)]
        # Sampling error of a mean of 4000 draws: sqrt(mean / 4000); allow 5 of those.
        assert abs(statistics.fmean(draws) - mean) < 5 * math.sqrt(mean / 4000), mean
        assert statistics.variance(draws) == pytest.approx(mean, rel=0.15)
        assert min(draws) >= 0
    assert poisson_count(rng, 0.0) == 0


class CountingRandom(random.Random):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()


def test_a_query_costs_a_few_draws_however_high_the_rate() -> None:
    rng = CountingRandom(3)
    arrivals = PoissonArrivals(PoissonLoad((RateStep(0.0, 1_000_000.0),)), rng)
    for step in range(1, 1001):
        arrivals.count_until(step * 0.01)
    assert arrivals.arrived == pytest.approx(10_000_000, rel=0.001)
    assert rng.draws < 5 * 1000  # PTRS accepts most first tries: ~2 draws a query


def test_the_rate_integrates_across_steps() -> None:
    arrivals = PoissonArrivals(
        PoissonLoad((RateStep(0.0, 10.0), RateStep(5.0, 0.0), RateStep(8.0, 100.0))),
        random.Random(1),
    )
    assert arrivals.expected(0.0, 5.0) == 50.0
    assert arrivals.expected(4.0, 9.0) == 10.0 + 0.0 + 100.0
    assert arrivals.expected(6.0, 7.5) == 0.0


def test_the_next_arrival_skips_a_stretch_without_load() -> None:
    arrivals = PoissonArrivals(
        PoissonLoad((RateStep(0.0, 0.0), RateStep(30.0, 5.0))), random.Random(2)
    )
    assert arrivals.count_until(29.0) == 0
    next_s = arrivals.next_arrival_s(29.0)
    assert next_s > 30.0
    assert arrivals.count_until(next_s - 1e-9) == 0
    assert arrivals.count_until(next_s) == 1
    silent = PoissonArrivals(PoissonLoad((RateStep(0.0, 0.0),)), random.Random(2))
    assert silent.next_arrival_s(0.0) == math.inf


@settings(max_examples=60, deadline=None)
@given(
    rates=st.lists(st.floats(0.0, 5000.0), min_size=1, max_size=4),
    queries=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=40),
    takes=st.lists(st.integers(0, 50), min_size=1, max_size=40),
    seed=st.integers(0, 1000),
)
def test_counts_only_grow_and_what_waits_is_what_arrived_less_what_was_taken(
    rates: list[float], queries: list[float], takes: list[int], seed: int
) -> None:
    steps = tuple(RateStep(5.0 * i, rate) for i, rate in enumerate(rates))
    arrivals = PoissonArrivals(PoissonLoad(steps), random.Random(seed))
    previous = 0
    taken = 0
    for at_s, take in zip(sorted(queries), takes * 40, strict=False):
        count = arrivals.count_until(at_s)
        assert count >= previous
        previous = count
        waiting = arrivals.waiting(at_s, in_service=0)
        assert waiting == count - taken >= 0
        grab = min(take, waiting)
        arrivals.take(grab)
        taken += grab
        if arrivals.waiting(at_s, 0) == 0:
            assert arrivals.next_arrival_s(at_s) > at_s


def test_a_closed_loop_waits_with_what_is_not_in_service() -> None:
    clients = ClosedLoop(24)
    assert clients.waiting(3.0, in_service=0) == 24
    assert clients.waiting(3.0, in_service=16) == 8
