"""Estimates of peak power and throughput at pairs not (yet) measured, fitted to the table.

Power: ``peak(b, c) = idle + dynamic(b) * (c / c_top) ** gamma``. The idle floor and gamma are
shared; ``dynamic(b)`` is fitted per measured batch size and interpolated between them (and
extrapolated beyond) as a power law of the batch size, ``dynamic ~ b ** kappa``. For a fixed
gamma the least-squares idle floor and dynamic parts have a closed form, so the fit scans
gamma over a grid. Without clock control the clock term drops out.

Throughput: a batch takes ``fixed + per_item * b ** e`` seconds at the top clock, fitted on the
measured batch sizes; a share ``phi`` of that time scales with ``1 / clock`` and the rest
(host-side preparation, launches) does not. ``phi`` is learned from two clocks at one batch size.

Estimates lean (:class:`Lean`): the *central* best guess bends the batch-size slope down
beyond the measured batch sizes (power flattens as the GPU fills up); a *hopeful* one, used to
decide whether a batch size is worth a try, bends it further; a *cautious* one, used to enter a
pair never seen, keeps it steeper and adds a few per cent, so that the first samples there are
under the cap.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from capinfer_sidecar.policies.table import Cell, PlantTable


@dataclass(frozen=True)
class ModelPriors:
    clock_power_exponent: float = 2.0
    """gamma until two clocks of one batch size were measured."""
    batch_power_exponent: float = 0.35
    """kappa (dynamic power against batch size) until two batch sizes were measured."""
    batch_time_exponent: float = 0.9
    """The batch-time exponent until three batch sizes were measured: a larger batch uses
    the GPU a little better, so its time grows a little less than its size."""
    total_power_exponent: float = 0.25
    """kappa of the total power (idle included), used without clock control."""
    clock_time_fraction: float = 0.8
    """phi before two clocks of one batch size were measured: the share of a batch's time
    that scales with 1 / clock (the rest is host-side work and overheads)."""
    kappa_margin: float = 0.1
    """How far leaning estimates bend the batch-size slope."""
    cautious_fraction: float = 0.03
    """What a cautious estimate adds on top."""
    min_samples: int = 3
    """Readings a pair needs before its peak is trusted as measured."""
    min_batches: int = 2
    """Batches a pair needs to complete before its peak is trusted as measured."""


_GAMMAS = tuple(1.0 + 0.1 * i for i in range(26))


class Lean(Enum):
    """Which way an estimate at an unmeasured pair leans."""

    CAUTIOUS = "cautious"
    """High: for entering a pair never seen, so its first samples stay under the cap."""
    CENTRAL = "central"
    """The best guess: for where a batch size would settle."""
    HOPEFUL = "hopeful"
    """Low: for whether a batch size is worth trying at all."""


@dataclass(frozen=True)
class PowerFit:
    """``peak(b, c) = idle + dynamic(b) * (c / top) ** gamma``."""

    idle_watts: float
    gamma: float
    top_mhz: int | None
    dynamic_watts: tuple[tuple[int, float], ...]
    """(batch size, dynamic watts at the top clock) for the measured batch sizes, ascending."""
    kappa_prior: float
    flattening: float = 0.1
    """How much the best guess bends the batch-size slope down beyond the measured ones."""

    def dynamic(self, batch: int, lean: Lean, kappa_margin: float) -> float:
        points = self.dynamic_watts
        sizes = [b for b, _ in points]
        if batch in sizes:
            return points[sizes.index(batch)][1]
        below = [(b, d) for b, d in points if b < batch]
        above = [(b, d) for b, d in points if b > batch]
        # Leaning high means a steeper slope going up and a shallower one going down.
        steeper = {Lean.CAUTIOUS: kappa_margin, Lean.CENTRAL: 0.0, Lean.HOPEFUL: -kappa_margin}
        if below and above:
            (b1, d1), (b2, d2) = below[-1], above[0]
            kappa = _slope(b1, d1, b2, d2) + steeper[lean]
            # Power only grows with the batch size: the neighbours bound the estimate.
            return min(max(d1 * math.pow(batch / b1, max(kappa, 0.0)), d1), d2)
        if below:
            kappa = _slope(*below[-2], *below[-1]) if len(below) > 1 else self.kappa_prior
            # Dynamic power flattens with the batch size as the GPU fills up: the best guess
            # bends the last slope down, hoping bends it twice as much; leaning high keeps
            # it, steeper.
            flattening = {
                Lean.CAUTIOUS: 1.0,
                Lean.CENTRAL: 1.0 - self.flattening,
                Lean.HOPEFUL: 1.0 - 2.0 * self.flattening,
            }
            kappa = kappa * flattening[lean] + max(steeper[lean], 0.0)
            b1, d1 = below[-1]
            return d1 * math.pow(batch / b1, max(kappa, 0.0))
        kappa = _slope(*above[0], *above[1]) if len(above) > 1 else self.kappa_prior
        b2, d2 = above[0]
        return d2 * math.pow(batch / b2, max(kappa - steeper[lean], 0.0))

    def peak(self, batch: int, clock: int | None, lean: Lean, kappa_margin: float) -> float:
        dynamic = self.dynamic(batch, lean, kappa_margin)
        if clock is not None and self.top_mhz is not None:
            dynamic *= (clock / self.top_mhz) ** self.gamma
        return self.idle_watts + dynamic


def _slope(b1: float, d1: float, b2: float, d2: float) -> float:
    if d1 <= 0 or d2 <= 0 or b1 == b2:
        return 0.0
    return math.log(d2 / d1) / math.log(b2 / b1)


def fit_power(
    points: Sequence[tuple[int, int | None, float]],
    top_mhz: int | None,
    priors: ModelPriors,
) -> PowerFit | None:
    """Fit the power model to (batch size, clock, peak watts) points; None without points."""
    if not points:
        return None
    if top_mhz is None or any(clock is None for _, clock, _ in points):
        # No clock to vary: the idle floor cannot be told from the rest, so the slope is the
        # total power's, which grows more slowly with the batch size than its dynamic part.
        dynamic = _group_max({b: p for b, _, p in points})
        return PowerFit(0.0, 1.0, None, dynamic, priors.total_power_exponent)
    best: tuple[float, PowerFit] | None = None
    for gamma in _GAMMAS:
        fit, error = _fit_for_gamma(points, top_mhz, gamma, priors)
        # A hair of preference for the prior keeps gamma put when the data cannot tell.
        error *= 1.0 + 1e-3 * abs(gamma - priors.clock_power_exponent)
        if best is None or error < best[0]:
            best = (error, fit)
    return best[1] if best else None


def _group_max(peaks: dict[int, float]) -> tuple[tuple[int, float], ...]:
    return tuple(sorted(peaks.items()))


def _fit_for_gamma(
    points: Sequence[tuple[int, int | None, float]],
    top_mhz: int,
    gamma: float,
    priors: ModelPriors,
) -> tuple[PowerFit, float]:
    groups: dict[int, list[tuple[float, float]]] = {}
    for batch, clock, peak in points:
        weight = ((clock or top_mhz) / top_mhz) ** gamma
        groups.setdefault(batch, []).append((peak, weight))
    # Residual of point i, with dynamic(b) eliminated: a_i - idle * b_i (closed form in idle).
    sums = {
        b: (sum(w * w for _, w in g), sum(w for _, w in g), sum(p * w for p, w in g))
        for b, g in groups.items()
    }
    numerator = 0.0
    denominator = 0.0
    for batch, group in groups.items():
        s_ww, s_w, s_pw = sums[batch]
        for peak, weight in group:
            a = peak - s_pw * weight / s_ww
            b = 1.0 - s_w * weight / s_ww
            numerator += a * b
            denominator += b * b
    floor = min(p for _, _, p in points)
    idle = numerator / denominator if denominator > 1e-9 else 0.0
    idle = min(max(idle, 0.0), 0.98 * floor)
    dynamic: dict[int, float] = {}
    error = 0.0
    for batch, group in groups.items():
        s_ww, s_w, s_pw = sums[batch]
        part = max((s_pw - idle * s_w) / s_ww, 1e-6)
        dynamic[batch] = part
        error += sum((peak - idle - part * weight) ** 2 for peak, weight in group)
    fit = PowerFit(idle, gamma, top_mhz, _group_max(dynamic), priors.batch_power_exponent)
    return fit, error


@dataclass(frozen=True)
class LatencyFit:
    """``batch time = fixed + per_item * b ** exponent`` at the top clock (or the GPU's own).

    An exponent below 1: larger batches use the GPU better, so the time per item falls.
    """

    fixed_s: float
    per_item_s: float
    clock_fraction: float
    exponent: float = 1.0


_BATCH_TIME_EXPONENTS = tuple(1.0 - 0.05 * i for i in range(11))


def _rescale(
    time_s: float,
    from_mhz: int | None,
    to_mhz: int | None,
    top_mhz: int | None,
    fraction: float,
) -> float:
    """A batch time at another clock, ``phi`` of it (at the top clock) scaling as 1 / clock."""
    if from_mhz is None or to_mhz is None or top_mhz is None or from_mhz == to_mhz:
        return time_s
    at_top_s = time_s / ((1.0 - fraction) + fraction * top_mhz / from_mhz)
    return at_top_s * ((1.0 - fraction) + fraction * top_mhz / to_mhz)


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """(intercept, slope) of the line through the points, in relative terms (weights 1/y^2).

    Latencies span orders of magnitude along a batch-size ladder; unweighted, the largest
    batch sizes would decide the intercept alone. None for fewer than two distinct x.
    """
    if len(xs) < 2 or any(y <= 0 for y in ys):
        return None
    weights = [1.0 / (y * y) for y in ys]
    total = sum(weights)
    mean_x = sum(w * x for w, x in zip(weights, xs, strict=True)) / total
    mean_y = sum(w * y for w, y in zip(weights, ys, strict=True)) / total
    spread = sum(w * (x - mean_x) ** 2 for w, x in zip(weights, xs, strict=True))
    if spread <= 0:
        return None
    slope = (
        sum(w * (x - mean_x) * (y - mean_y) for w, x, y in zip(weights, xs, ys, strict=True))
        / spread
    )
    return mean_y - slope * mean_x, slope


class PlantModel:
    """Reads the table and answers "how much power, how much throughput, at this pair?".

    The power fit is recomputed only when the set of measured peaks changed.
    """

    def __init__(self, table: PlantTable, priors: ModelPriors) -> None:
        self._table = table
        self._priors = priors
        self._power_key: tuple[tuple[int, int | None, float], ...] | None = None
        self._power_fit: PowerFit | None = None
        self._power_fit_at: tuple[float, int | None] | None = None
        self.top_mhz: int | None = None
        """The top clock level (None without clock control): the reference of the fits."""

    def measured_peak(self, batch: int, clock: int | None, now_s: float) -> float | None:
        """The peak seen at a pair, once it is trustworthy: enough readings, and two batches
        completed at the pair, so that one ran from start to end on it (long batches leave
        whole samples at the idle floor between spikes)."""
        cell = self._table.get(batch, clock, now_s)
        if cell is None or not self._trusted(cell):
            return None
        return cell.peak_watts(self._table.noise_watts)

    def _trusted(self, cell: Cell) -> bool:
        return (
            len(cell.peaks_watts) >= self._priors.min_samples
            and cell.batches >= self._priors.min_batches
        )

    def power_fit(self, now_s: float) -> PowerFit | None:
        top_mhz = self.top_mhz
        if self._power_fit_at == (now_s, top_mhz):
            return self._power_fit
        self._power_fit_at = (now_s, top_mhz)
        points = tuple(
            (batch, clock, round(cell.peak_watts(self._table.noise_watts), 1))
            for (batch, clock), cell in self._table.items(now_s)
            if self._trusted(cell)
        )
        if points != self._power_key:
            self._power_key = points
            self._power_fit = fit_power(points, top_mhz, self._priors)
        return self._power_fit

    def peak(
        self,
        batch: int,
        clock: int | None,
        now_s: float,
        lean: Lean,
        *,
        remembered: bool = False,
    ) -> float | None:
        """Peak power at any pair: measured, or estimated; None when nothing is known.

        A reading or two at the pair itself (too few to count as measured) is a floor: one
        hot sample is remembered. ``remembered`` also counts the peak the controller last
        left the pair for.
        """
        cell = self._table.get(batch, clock, now_s)
        floor = 0.0
        if cell is not None:
            noise = self._table.noise_watts
            floor = (
                self._table.remembered_watts(cell, now_s) if remembered else cell.peak_watts(noise)
            )
        measured = self.measured_peak(batch, clock, now_s)
        if measured is not None:
            return max(measured, floor)
        fit = self.power_fit(now_s)
        estimate = None
        if fit is not None:
            estimate = fit.peak(batch, clock, lean, self._priors.kappa_margin)
            if lean is Lean.CAUTIOUS:
                estimate *= 1.0 + self._priors.cautious_fraction
        if floor > 0.0:
            return max(estimate or 0.0, floor)
        return estimate

    def rate(
        self, batch: int, clock: int | None, now_s: float, min_evidence_s: float
    ) -> float | None:
        """Inferences per second at a pair, from the well-measured clocks of its batch size."""
        found = self.rate_and_source(batch, clock, now_s, min_evidence_s)
        return found[0] if found else None

    def rate_and_source(
        self, batch: int, clock: int | None, now_s: float, min_evidence_s: float
    ) -> tuple[float, bool] | None:
        """(rate, whether it was measured at this very pair rather than rescaled)."""
        best: tuple[float, float, int | None] | None = None
        for measured_clock, cell in self._table.cells_for_batch(batch, now_s).items():
            rate = cell.rate()
            if rate is None or rate[1] < min_evidence_s:
                continue
            if measured_clock == clock:
                return rate[0], True
            distance = (
                abs(math.log(measured_clock / clock))
                if measured_clock is not None and clock is not None
                else math.inf
            )
            if best is None or distance < best[0]:
                best = (distance, rate[0], measured_clock)
        if best is None or clock is None:
            return None
        _, rate_value, nearest_clock = best
        if nearest_clock is None or rate_value <= 0:
            return None
        fraction = self.clock_fraction(now_s, min_evidence_s)
        per_item_s = _rescale(1.0 / rate_value, nearest_clock, clock, self.top_mhz, fraction)
        return 1.0 / per_item_s, False

    def clock_fraction(self, now_s: float, min_evidence_s: float) -> float:
        """phi: the share of a batch's time at the top clock that scales with 1 / clock.

        Host-side preparation and framework overheads do not speed up with the SM clock;
        from two clocks measured at one batch size, ``time = A + B * top / clock`` gives
        ``phi = B / (A + B)``. The median over batch sizes; the prior before any.
        """
        if self.top_mhz is None:
            return self._priors.clock_time_fraction
        fractions = []
        for batch in self._table.batches_seen(now_s):
            points = []
            for clock, cell in self._table.cells_for_batch(batch, now_s).items():
                rate = cell.rate()
                usable = rate is not None and rate[1] >= min_evidence_s and rate[0] > 0
                if clock is not None and rate is not None and usable:
                    points.append((self.top_mhz / clock, 1.0 / rate[0]))
            line = _least_squares([x for x, _ in points], [y for _, y in points])
            if line is not None:
                fixed, scaling = line
                if fixed + scaling > 0:
                    fractions.append(min(max(scaling / (fixed + scaling), 0.0), 1.0))
        if not fractions:
            return self._priors.clock_time_fraction
        return statistics.median(fractions)

    def latency_fit(
        self, now_s: float, min_evidence_s: float, exponent: float | None = None
    ) -> LatencyFit | None:
        """Fit ``batch time = fixed + per_item * batch ** exponent`` at the top clock.

        Every batch size measured long enough gives one point (its best-evidenced pair, its
        time rescaled to the top clock with ``phi``). One batch size gives the prior curve
        through its point; two, a fit of the fixed part (not below zero, short of measurement
        error); three, the exponent too (1 down to 0.5), unless ``exponent`` fixes it.
        """
        fraction = self.clock_fraction(now_s, min_evidence_s)
        xs: list[float] = []
        ys: list[float] = []
        for batch in sorted(self._table.batches_seen(now_s)):
            best: tuple[float, float, int | None] | None = None
            for clock, cell in self._table.cells_for_batch(batch, now_s).items():
                rate = cell.rate()
                formed = cell.mean_batch()
                if rate is None or formed is None or rate[1] < min_evidence_s or rate[0] <= 0:
                    continue
                if best is None or rate[1] > best[0]:
                    best = (rate[1], formed / rate[0], clock)
            if best is not None:
                xs.append(float(batch))
                ys.append(_rescale(best[1], best[2], self.top_mhz, self.top_mhz, fraction))
        if not xs:
            return None
        if len(xs) == 1:
            # One batch size measured: no fixed part, the prior exponent through the point.
            power = self._priors.batch_time_exponent if exponent is None else exponent
            per_item = ys[0] / math.pow(xs[0], power)
            return LatencyFit(0.0, per_item, fraction, power)
        if exponent is not None:
            exponents: tuple[float, ...] = (exponent,)
        elif len(xs) < 3:
            exponents = (self._priors.batch_time_exponent,)  # two points fit any exponent
        else:
            exponents = _BATCH_TIME_EXPONENTS
        chosen: tuple[float, LatencyFit] | None = None
        for candidate in exponents:
            scaled = [math.pow(x, candidate) for x in xs]
            line = _least_squares(scaled, ys)
            # A fixed part a little below zero is measurement error, not physics.
            if line is None or line[0] < -0.2 * min(ys) or line[1] <= 0:
                continue
            error = sum(
                ((y - line[0] - line[1] * x) / y) ** 2 for x, y in zip(scaled, ys, strict=True)
            )
            if chosen is None or error < chosen[0]:
                # Negative fixed time is noise: extrapolated to small batches it would promise
                # absurd rates, so it is held at zero.
                chosen = (error, LatencyFit(max(line[0], 0.0), line[1], fraction, candidate))
        return chosen[1] if chosen else None

    def predicted_rate(self, fit: LatencyFit, batch: int, clock: int | None) -> float:
        at_top_s = fit.fixed_s + fit.per_item_s * math.pow(batch, fit.exponent)
        return batch / _rescale(at_top_s, self.top_mhz, clock, self.top_mhz, fit.clock_fraction)
