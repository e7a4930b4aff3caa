"""Requests arriving at Triton, as counts: the cost of a run grows with batches, not requests.

* :class:`ClosedLoop`: ``concurrency`` clients, each re-sending its request as soon as it is
  answered. What waits is the concurrency less what is in service: a count, no events.
* :class:`PoissonArrivals`: open-loop arrivals at a piecewise-constant rate. The number of
  arrivals in any interval is drawn at once (a Poisson count of the integrated rate; counts
  of disjoint intervals are independent), so a query costs one draw however high the rate.
  When nothing waits, the time of the next arrival is drawn instead (exponential on the
  integrated rate), which is what an idle server waits for.

Both are deterministic for their random generator.
"""

from __future__ import annotations

import bisect
import math
import random

from capinfer_sidecar.sim.config import PoissonLoad

_INVERSION_BELOW = 10.0
"""Means below this are drawn by inversion; from it on by transformed rejection (PTRS)."""


def poisson_count(rng: random.Random, mean: float) -> int:
    """One draw from a Poisson distribution of ``mean`` (exact, O(1) for large means).

    Small means by inversion; large ones by Hörmann's transformed rejection with squeeze
    (PTRS, "The transformed rejection method for generating Poisson random variables",
    1993), as numpy draws them.
    """
    if mean <= 0.0:
        return 0
    if mean < _INVERSION_BELOW:
        u = rng.random()
        k = 0
        p = math.exp(-mean)
        total = p
        while u > total and p > 0.0:
            k += 1
            p *= mean / k
            total += p
        return k
    slam = math.sqrt(mean)
    log_mean = math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + mean + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b) <= (
            -mean + k * log_mean - math.lgamma(k + 1)
        ):
            return k


class ClosedLoop:
    """``concurrency`` clients keeping one request each outstanding."""

    def __init__(self, concurrency: int) -> None:
        if concurrency <= 0:
            raise ValueError(f"concurrency must be positive, got {concurrency}")
        self.concurrency = concurrency

    def waiting(self, at_s: float, in_service: int) -> int:
        del at_s
        return self.concurrency - in_service

    def take(self, count: int) -> None:
        del count  # an answered request is sent again at once: nothing to account

    def next_arrival_s(self, at_s: float) -> float:
        del at_s
        return math.inf  # never asked: a closed loop always has a request waiting


class PoissonArrivals:
    """Open-loop Poisson arrivals with a piecewise-constant rate, counted lazily."""

    def __init__(self, load: PoissonLoad, rng: random.Random) -> None:
        self._times = [step.at_s for step in load.steps]
        self._rates = [step.rate_ips for step in load.steps]
        self._rng = rng
        self.arrived = 0
        self.taken = 0
        self._counted_s = 0.0
        """Arrivals up to this time are counted in ``arrived``."""
        self._next_s: float | None = None
        """When drawn: the first arrival after ``_counted_s`` (not yet counted)."""
        self.spans: list[tuple[float, float, int]] = []
        """Arrivals as counted, ``(first_s, last_s, count)``, uniform within each span; the
        server drains it (request latencies, :mod:`capinfer_sidecar.sim.latency`)."""

    # -- the process ---------------------------------------------------------------------------
    def _rate_index(self, at_s: float) -> int:
        return bisect.bisect_right(self._times, at_s) - 1

    def expected(self, start_s: float, end_s: float) -> float:
        """The integrated rate over ``[start_s, end_s]``: the mean count of arrivals."""
        if end_s <= start_s:
            return 0.0
        index = self._rate_index(start_s)
        total = 0.0
        t = start_s
        while t < end_s:
            following = self._times[index + 1] if index + 1 < len(self._times) else math.inf
            stop = min(end_s, following)
            total += self._rates[index] * (stop - t)
            t = stop
            index += 1
        return total

    def count_until(self, at_s: float) -> int:
        """Arrivals up to ``at_s`` (cumulative); draws the count of what was not counted."""
        if at_s <= self._counted_s:
            return self.arrived
        if self._next_s is not None:
            if at_s < self._next_s:
                return self.arrived  # nothing arrives before the drawn next arrival
            self.arrived += 1
            self.spans.append((self._next_s, self._next_s, 1))
            self._counted_s = self._next_s
            self._next_s = None
        count = poisson_count(self._rng, self.expected(self._counted_s, at_s))
        self.arrived += count
        if count:
            self.spans.append((self._counted_s, at_s, count))
        self._counted_s = at_s
        return self.arrived

    def next_arrival_s(self, at_s: float) -> float:
        """The time of the next arrival after ``at_s``, when nothing waits then."""
        self.count_until(at_s)
        if self._next_s is None:
            self._next_s = self._draw_next(max(at_s, self._counted_s))
        return self._next_s

    def _draw_next(self, from_s: float) -> float:
        """Exponential waiting time on the integrated rate, across rate changes."""
        need = self._rng.expovariate(1.0)
        index = self._rate_index(from_s)
        t = from_s
        while True:
            rate = self._rates[index]
            following = self._times[index + 1] if index + 1 < len(self._times) else math.inf
            if rate > 0.0:
                reach = t + need / rate
                if reach < following:
                    return reach
                need -= rate * (following - t)
            if following == math.inf:
                return math.inf
            t = following
            index += 1

    # -- the batcher's view --------------------------------------------------------------------
    def waiting(self, at_s: float, in_service: int) -> int:
        del in_service  # taken requests left the queue when their batch formed
        return self.count_until(at_s) - self.taken

    def take(self, count: int) -> None:
        self.taken += count


Arrivals = ClosedLoop | PoissonArrivals
