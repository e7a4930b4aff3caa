"""What the GPU was seen to do at each (batch size, clock) pair, learned online.

Every sample belongs to the settings that served during its whole interval; the sample right
after a change is left out of the statistics, since part of it ran on the old settings (and so
are samples while a batch formed under an old max batch size still runs, and samples under
light load). Per pair the table keeps the recent peak-power readings (their 90th percentile is
what the cap has to allow), the inferences completed over time (throughput), and the peak it
was last left for, as too hot. Across pairs it learns the sensor noise.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from capinfer_sidecar.policies.base import Knobs, Observation
from capinfer_sidecar.policies.observe import not_lower

PEAKS_KEPT = 50
"""Readings kept per pair: 5 s at the default 0.1 s sample interval."""
QUANTILE_READINGS = 10
"""Readings a pair needs before its peak is a percentile rather than the highest reading."""
NOISE_PAIRS_KEPT = 300
NOISE_MIN_PAIRS = 20


@dataclass
class Segment:
    """A stretch of consecutive samples at one pair, for throughput.

    Throughput is the least-squares slope of completed inferences against time, over the
    samples at which batches completed: a completion is only known to the sample interval,
    and the slope over many of them averages that out far better than first-to-last does.
    """

    origin_s: float
    points: int = 0
    sum_t: float = 0.0
    sum_y: float = 0.0
    sum_tt: float = 0.0
    sum_ty: float = 0.0
    first_s: float = 0.0
    last_s: float = 0.0

    def add(self, now_s: float, inferences: int) -> None:
        t = now_s - self.origin_s
        if self.points == 0:
            self.first_s = now_s
        self.last_s = now_s
        self.points += 1
        self.sum_t += t
        self.sum_y += inferences
        self.sum_tt += t * t
        self.sum_ty += t * inferences

    def centred(self) -> tuple[float, float]:
        """(S_tt, S_ty): the centred sums of the slope's normal equation."""
        if self.points < 2:
            return 0.0, 0.0
        s_tt = self.sum_tt - self.sum_t * self.sum_t / self.points
        s_ty = self.sum_ty - self.sum_t * self.sum_y / self.points
        return s_tt, s_ty

    @property
    def span_s(self) -> float:
        return self.last_s - self.first_s if self.points >= 2 else 0.0


@dataclass
class Cell:
    """Everything known about one (batch size, clock) pair."""

    peaks_watts: deque[float] = field(default_factory=lambda: deque(maxlen=PEAKS_KEPT))
    last_seen_s: float = -1.0
    last_steady_s: float = -1.0
    inferences: int = 0
    batches: int = 0
    segments: list[Segment] = field(default_factory=list)
    too_hot_watts: float = 0.0
    """The peak for which the controller last left this pair, while remembered."""
    too_hot_s: float = -math.inf

    def peak_watts(self, noise_watts: float) -> float:
        """What the cap has to allow for this pair, from its recent readings.

        A reading is the true peak of its interval plus sensor noise, so the highest reading
        overshoots the true peak more the more readings there are. With enough readings the
        90th percentile is taken instead: it tracks the top of the batch-to-batch spread
        without the noise's outliers. With few, the highest less one noise deviation.
        """
        readings = self.peaks_watts
        if not readings:
            return 0.0
        if len(readings) >= QUANTILE_READINGS:
            ordered = sorted(readings)
            return ordered[math.ceil(0.9 * len(ordered)) - 1]
        return max(readings) - noise_watts

    def remembered_watts(self, now_s: float, noise_watts: float, memory_s: float) -> float:
        """The peak, or the higher one the controller left this pair for, if remembered."""
        too_hot = self.too_hot_watts if now_s - self.too_hot_s <= memory_s else 0.0
        return max(too_hot, self.peak_watts(noise_watts))

    def mean_batch(self) -> float | None:
        """Inferences per completed batch: below the max batch size under light load."""
        return self.inferences / self.batches if self.batches else None

    def rate(self) -> tuple[float, float] | None:
        """(inferences per second, seconds of evidence), or None before two completions."""
        s_tt = 0.0
        s_ty = 0.0
        span_s = 0.0
        for segment in self.segments:
            tt, ty = segment.centred()
            s_tt += tt
            s_ty += ty
            span_s += segment.span_s
        if s_tt <= 0 or span_s <= 0:
            return None
        return s_ty / s_tt, span_s


def _key(knobs: Knobs) -> tuple[int, int | None]:
    return (knobs.batch_size, knobs.sm_clock_mhz)


class PlantTable:
    """Cells keyed by (batch size, clock MHz or None), fed one observation at a time."""

    def __init__(self, memory_s: float) -> None:
        self._memory_s = memory_s
        self._cells: dict[tuple[int, int | None], Cell] = {}
        self._previous: Observation | None = None
        self._differences: deque[float] = deque(maxlen=NOISE_PAIRS_KEPT)
        self._draining_until: int | None = None
        self.formed_batch: float | None = None
        """Inferences per batch in the latest sample that completed batches."""
        self.full_fraction = 0.8
        """Batches formed below this fraction of the max batch size mean light load."""
        self._noise_watts: float | None = None
        self.noise_prior_watts = 1.0
        """The noise to assume before enough readings were compared."""

    @property
    def noise_watts(self) -> float:
        """The sensor noise (one standard deviation), from consecutive readings at one pair.

        Two consecutive readings of the same batch differ by noise alone; of two batches, by
        their batch-to-batch spread as well (an overestimate, on the safe side). Only pairs of
        spike readings count (not the idle floor between spikes), through the median absolute
        difference, which outliers do not move.
        """
        return self._noise_watts if self._noise_watts is not None else self.noise_prior_watts

    @property
    def noise_learned(self) -> bool:
        """Whether :attr:`noise_watts` comes from readings (not the prior)."""
        return self._noise_watts is not None

    def _note_difference(self, cell: Cell, reading_watts: float) -> None:
        if len(cell.peaks_watts) < 4:
            return
        # Spikes only: both readings within a tenth of the pair's highest. The idle floor
        # between spikes is far below; the noise and the batch-to-batch spread are not.
        spike = 0.9 * max(cell.peaks_watts)
        previous = cell.peaks_watts[-1]
        if previous >= spike and reading_watts >= spike:
            self._differences.append(abs(reading_watts - previous))
            if len(self._differences) >= NOISE_MIN_PAIRS and len(self._differences) % 10 == 0:
                ordered_differences = sorted(self._differences)
                median = ordered_differences[len(ordered_differences) // 2]
                # For normal noise the median of |x - y| is 0.6745 * sqrt(2) * sigma.
                self._noise_watts = median / (0.6745 * math.sqrt(2.0))

    def record(self, observation: Observation) -> Cell | None:
        """File the sample under the pair that served its whole interval; return that cell."""
        previous, self._previous = self._previous, observation
        if previous is None:
            return None
        cell = self._cells.setdefault(_key(observation.applied), Cell())
        completed = observation.batches_completed - previous.batches_completed
        if previous.applied.batch_size != observation.applied.batch_size:
            # The batch executing was formed under the old max batch size: until it is done,
            # the readings are not the new pair's (nor is the size of the batches formed).
            self._draining_until = observation.batches_completed + 1
            self.formed_batch = None
        if self._draining_until is not None:
            if observation.batches_completed < self._draining_until:
                return None
            self._draining_until = None
            return None  # the sample in which it finished is still partly the old batch's
        if previous.applied != observation.applied:
            # Part of this interval ran on the old settings. After a move up (nothing lower),
            # the reading still bounds the new pair's peak from above (power only grows with
            # either knob), so keep it: a hot pair is remembered from its first sample.
            if not_lower(observation.applied, previous.applied):
                cell.peaks_watts.append(observation.power_watts)
                cell.last_seen_s = observation.now_s
            return None
        if completed > 0:
            # (Not while draining: those batches were formed under the old max.)
            done = observation.inferences_completed - previous.inferences_completed
            self.formed_batch = done / completed
        if self.light_load(observation.applied.batch_size):
            # Batches smaller than the max: neither the peak nor the throughput of this pair
            # (a surge of load would form full batches, at more power).
            return None
        if not (cell.segments and cell.last_steady_s == previous.now_s):
            cell.segments.append(Segment(origin_s=previous.now_s))
            del cell.segments[:-4]  # old stretches say little about today's throughput
        if completed > 0:
            cell.segments[-1].add(observation.now_s, observation.inferences_completed)
        if cell.last_steady_s == previous.now_s:
            self._note_difference(cell, observation.power_watts)
        cell.peaks_watts.append(observation.power_watts)
        cell.last_seen_s = observation.now_s
        cell.last_steady_s = observation.now_s
        cell.inferences += observation.inferences_completed - previous.inferences_completed
        cell.batches += completed
        return cell

    def light_load(self, max_batch: int) -> bool:
        """Whether the batcher is forming batches well below the max batch size."""
        return self.formed_batch is not None and self.formed_batch < self.full_fraction * max_batch

    def get(self, batch_size: int, clock_mhz: int | None, now_s: float) -> Cell | None:
        """The cell for a pair, unless it was last seen longer ago than the memory."""
        cell = self._cells.get((batch_size, clock_mhz))
        if cell is None or now_s - cell.last_seen_s > self._memory_s:
            return None
        return cell

    def items(self, now_s: float) -> list[tuple[tuple[int, int | None], Cell]]:
        """Fresh cells, keyed by (batch size, clock)."""
        return [
            (key, cell)
            for key, cell in self._cells.items()
            if now_s - cell.last_seen_s <= self._memory_s
        ]

    def cells_for_batch(self, batch_size: int, now_s: float) -> dict[int | None, Cell]:
        """Fresh cells of one batch size, by clock."""
        return {clock: cell for (batch, clock), cell in self.items(now_s) if batch == batch_size}

    def batches_seen(self, now_s: float) -> set[int]:
        return {batch for (batch, _), _ in self.items(now_s)}

    def measured_settings(self, now_s: float) -> list[tuple[float, float]]:
        """``(peak watts, inferences/s)`` of every fresh pair with both measured: what a
        budget controller builds this GPU's throughput curve from."""
        measured = []
        for _, cell in self.items(now_s):
            rate = cell.rate()
            if rate is not None and cell.peaks_watts:
                measured.append((cell.peak_watts(self.noise_watts), rate[0]))
        return measured

    def mark_too_hot(self, knobs: Knobs, peak_watts: float, now_s: float) -> None:
        """The controller leaves this pair: its peak was too high. Remembered for the memory,
        whatever later readings say (the pair is not visited, so none will)."""
        cell = self._cells.setdefault(_key(knobs), Cell())
        cell.too_hot_watts = peak_watts
        cell.too_hot_s = now_s
        cell.last_seen_s = max(cell.last_seen_s, now_s)

    def too_hot(
        self, batch_size: int, clock_mhz: int | None, now_s: float, limit_watts: float
    ) -> bool:
        """Whether the controller left this pair, within the memory, for a peak over the limit."""
        cell = self._cells.get((batch_size, clock_mhz))
        if cell is None or now_s - cell.too_hot_s > self._memory_s:
            return False
        return cell.too_hot_watts > limit_watts

    def remembered_watts(self, cell: Cell, now_s: float) -> float:
        return cell.remembered_watts(now_s, self.noise_watts, self._memory_s)

    def forget(self) -> None:
        self._cells.clear()
        self._previous = None
        self._draining_until = None
        self.formed_batch = None
