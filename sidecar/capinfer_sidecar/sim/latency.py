"""Request latency in the simulated Triton: what its p99 summary would say, and the run's p99.

A request's latency is the time from its arrival to the end of the batch that served it
(queue + the batcher's preparation + execution), as Triton's ``nv_inference_request_summary_us``
counts it in the server. The simulator counts requests, not events, so requests are kept as
*spans*: ``count`` requests that arrived uniformly within ``[first_s, last_s]``.

Assumptions, each next to where it is used:

- *FIFO*: Triton's dynamic batcher takes the oldest requests first (its default, no
  priorities), so a batch of ``n`` takes the ``n`` oldest requests waiting.
- *Closed-loop clients* send their next request the instant an answer arrives: a span of
  ``n`` requests at the batch's end (exact).
- *Poisson arrivals* are drawn as counts over an interval; given its count, Poisson arrivals
  are uniform over the interval, so a span is exact in distribution. The one arrival drawn
  for an idle server is at its drawn time (exact).
- *Triton's window*: tritonserver 2.51 computes its summary quantiles with prometheus-cpp's
  ``Summary`` defaults, a sliding window of 60 s in 5 age buckets (12 s each); modelled the
  same way. (Read in the prometheus-cpp defaults; Triton 2.51 has no option to change it.)
- *Resolution*: latencies fall in logarithmic bins 1/64 of a doubling wide (about 1.1%); a
  quantile is read by linear interpolation inside its bin.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

BINS_PER_DOUBLING = 64
"""About 1.1% per bin: far below the spread of a p99 between runs."""
WINDOW_S = 60.0
"""Triton 2.51's summary window (prometheus-cpp's default max age)."""
AGE_BUCKETS = 5
"""prometheus-cpp's default: the window slides in steps of WINDOW_S / AGE_BUCKETS."""
FLOOR_S = 1e-6
"""Latencies below a microsecond count as one (Triton's summary is in microseconds)."""


def _bin(latency_s: float) -> int:
    return math.floor(math.log2(max(latency_s, FLOOR_S)) * BINS_PER_DOUBLING)


def _bin_low_s(index: int) -> float:
    return float(2.0 ** (index / BINS_PER_DOUBLING))


@dataclass
class LatencyHistogram:
    """Request latencies, by logarithmic bin (weights may be fractional).

    A span of latencies covers its two end bins in part and every bin between them whole.
    The end bins' shares go to ``weights``; the whole bins are kept as a density (requests
    per second of latency) in a difference array over bin indices, ``density``: a whole bin
    ``i`` holds density * its width. So adding a span costs the same however many bins it
    covers (a backlog's spans cover hundreds), and a quantile walks the bins once.
    """

    weights: dict[int, float] = field(default_factory=dict)
    density: dict[int, float] = field(default_factory=dict)
    """Difference array: the density of whole bins from an index on changes by its value."""
    total: float = 0.0

    def add(self, shortest_s: float, longest_s: float, count: float) -> None:
        """``count`` latencies spread uniformly over ``[shortest_s, longest_s]``."""
        if count <= 0:
            return
        self.total += count
        first, last = _bin(shortest_s), _bin(longest_s)
        if first == last or longest_s <= shortest_s:
            self.weights[first] = self.weights.get(first, 0.0) + count
            return
        rate = count / (longest_s - shortest_s)
        self.weights[first] = self.weights.get(first, 0.0) + rate * (
            _bin_low_s(first + 1) - max(shortest_s, _bin_low_s(first))
        )
        self.weights[last] = self.weights.get(last, 0.0) + rate * (
            min(longest_s, _bin_low_s(last + 1)) - _bin_low_s(last)
        )
        if last - first >= 2:
            self.density[first + 1] = self.density.get(first + 1, 0.0) + rate
            self.density[last] = self.density.get(last, 0.0) - rate

    def merge(self, other: LatencyHistogram) -> None:
        for index, weight in other.weights.items():
            self.weights[index] = self.weights.get(index, 0.0) + weight
        for index, change in other.density.items():
            self.density[index] = self.density.get(index, 0.0) + change
        self.total += other.total

    def _bins(self) -> list[tuple[int, float]]:
        """(index, weight) of every bin with weight, in order."""
        if not self.density:
            return sorted(self.weights.items())
        indices = [*self.weights, *self.density]
        bins: list[tuple[int, float]] = []
        rate = 0.0
        for index in range(min(indices), max(indices) + 1):
            rate += self.density.get(index, 0.0)
            whole = rate * (_bin_low_s(index + 1) - _bin_low_s(index)) if rate > 0 else 0.0
            weight = self.weights.get(index, 0.0) + whole
            if weight > 0:
                bins.append((index, weight))
        return bins

    def quantile_s(self, q: float) -> float | None:
        """The ``q`` quantile in seconds; None when empty."""
        if self.total <= 0:
            return None
        rank = q * self.total
        seen = 0.0
        bins = self._bins()
        for index, weight in bins:
            if seen + weight >= rank:
                inside = (rank - seen) / weight
                low, high = _bin_low_s(index), _bin_low_s(index + 1)
                return low + inside * (high - low)
            seen += weight
        return _bin_low_s(bins[-1][0] + 1)


@dataclass
class RequestLatencies:
    """Requests waiting (as FIFO spans) and the latencies of those served."""

    run: LatencyHistogram = field(default_factory=LatencyHistogram)
    """Every request served in the run."""
    _waiting: deque[list[float]] = field(default_factory=deque)
    """Spans ``[first_s, last_s, count]``, oldest first."""
    _ages: deque[tuple[int, LatencyHistogram]] = field(default_factory=deque)
    """Triton's age buckets: (index of the bucket's period, its latencies)."""

    def arrived(self, first_s: float, last_s: float, count: int) -> None:
        if count > 0:
            self._waiting.append([first_s, last_s, float(count)])

    def take(self, count: int) -> list[tuple[float, float, float]]:
        """The ``count`` oldest requests, for a batch (FIFO); spans are split as needed.

        A span split in two keeps its time range on both sides: within a span the order of
        arrival is not known, and uniform arrivals make either part uniform over it too.
        """
        taken: list[tuple[float, float, float]] = []
        need = float(count)
        while need > 1e-9 and self._waiting:
            first_s, last_s, available = self._waiting[0]
            used = min(available, need)
            taken.append((first_s, last_s, used))
            need -= used
            if used >= available:
                self._waiting.popleft()
            else:
                self._waiting[0][2] = available - used
        return taken

    def served(self, batch: list[tuple[float, float, float]], end_s: float) -> None:
        """A batch ended at ``end_s``: its requests' latencies are known."""
        period = math.floor(end_s / (WINDOW_S / AGE_BUCKETS))
        if not self._ages or self._ages[-1][0] != period:
            self._ages.append((period, LatencyHistogram()))
        current = self._ages[-1][1]
        for first_s, last_s, count in batch:
            shortest, longest = end_s - last_s, end_s - first_s
            self.run.add(shortest, longest, count)
            current.add(shortest, longest, count)

    def window_p99_ms(self, now_s: float) -> float | None:
        """What Triton's summary says at ``now_s``: p99 over the last WINDOW_S."""
        oldest = math.floor(now_s / (WINDOW_S / AGE_BUCKETS)) - AGE_BUCKETS + 1
        while self._ages and self._ages[0][0] < oldest:
            self._ages.popleft()
        window = LatencyHistogram()
        for _, histogram in self._ages:
            window.merge(histogram)
        p99 = window.quantile_s(0.99)
        return None if p99 is None else p99 * 1000

    def run_p99_ms(self) -> float | None:
        p99 = self.run.quantile_s(0.99)
        return None if p99 is None else p99 * 1000
