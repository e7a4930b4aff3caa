"""A virtual GPU whose power follows the batches it is told were executed.

Power over time: the loaded-idle floor between batches, and each batch's busy power while it
executes -- the spikes of the BatchSizer paper's Fig. 2. A batch's busy power comes from the
profile at the SM clock in effect, times a per-batch factor within ``1 +- jitter`` (the input
data varies); a clock change during a batch changes its power from that moment on.

Readings, as NVML gives them:

- :meth:`VirtualGpu.instant_power_watts` -- ``NVML_FI_DEV_POWER_INSTANT``: the power now, plus
  sensor noise;
- :meth:`VirtualGpu.average_power_watts` -- ``nvmlDeviceGetPowerUsage`` on H100-class GPUs: the
  mean over the last second (it lags the spikes), with the noise of an average of many reads;
- :meth:`VirtualGpu.energy_millijoules` -- ``nvmlDeviceGetTotalEnergyConsumption``: a counter
  that only grows;
- :meth:`VirtualGpu.peak_reading_watts` -- the peak over an interval as a sampler reading fast
  instant values would see it (true peak plus one draw of noise).

The object is pure: it never reads a clock. Every call passes the time, on any time base
(simulated seconds, or a monotonic wall clock when a real Triton model feeds it). Times passed
to readings must not go backwards by more than ``retention_s``; batches may be recorded after
they ended (a live server reports a batch once it is done).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from typing import NamedTuple

from capinfer_sidecar.sim.profiles import WorkloadProfile

AVERAGE_WINDOW_S = 1.0
"""The window of ``nvmlDeviceGetPowerUsage`` on H100-class GPUs."""
INTERNAL_READS_PER_S = 50.0
"""Sensor reads the GPU averages per second: sets the noise of averaged readings."""


class PowerPiece(NamedTuple):
    """A stretch of one batch at one clock: constant power from ``start_s`` to ``end_s``."""

    start_s: float
    end_s: float
    watts: float


class OpenBatch(NamedTuple):
    size: int
    start_s: float
    jitter: float


class VirtualGpu:
    """Power, energy and clocks of one GPU running one workload; see the module docstring."""

    def __init__(
        self,
        profile: WorkloadProfile,
        *,
        seed: int = 0,
        start_s: float = 0.0,
        clock_mhz: int | None = None,
        model_loaded: bool = True,
        retention_s: float = 2.0 * AVERAGE_WINDOW_S,
    ) -> None:
        self.profile = profile
        self._jitter_rng = random.Random(f"{seed}/jitter")
        self._noise_rng = random.Random(f"{seed}/noise")
        self._retention_s = max(retention_s, AVERAGE_WINDOW_S)
        self._idle_watts = self._idle_level(model_loaded)
        self._clock_times_s: list[float] = [-math.inf]
        self._clock_values: list[int | None] = [clock_mhz]
        self._pieces: deque[PowerPiece] = deque()
        self._open: OpenBatch | None = None
        self._last_end_s = start_s
        self._energy_j = 0.0
        self._accounted_s = start_s
        self._energy_reported_j = 0.0
        self._newest_s = start_s
        self._power_cache: dict[tuple[int, int | None], float] = {}
        self.batches = 0
        self.inferences = 0

    # -- inputs -----------------------------------------------------------------------------

    def set_clock(self, clock_mhz: int | None, now_s: float) -> float:
        """Lock the SM clock (None: back to the default); returns when it takes effect."""
        effective_s = now_s + self.profile.gpu.clock_change_s
        # A later request overrides pending ones that have not taken effect yet.
        while len(self._clock_times_s) > 1 and self._clock_times_s[-1] > effective_s:
            self._clock_times_s.pop()
            self._clock_values.pop()
        self._clock_times_s.append(effective_s)
        self._clock_values.append(clock_mhz)
        return effective_s

    def set_model_loaded(self, loaded: bool, now_s: float) -> None:
        """Between batches the GPU sits at loaded idle, or at its floor with no model."""
        self._account(now_s)
        self._idle_watts = self._idle_level(loaded)

    def start_batch(self, size: int, start_s: float) -> None:
        """A batch began executing (its power counts from now on, even before it ends)."""
        if self._open is not None:
            raise RuntimeError("start_batch: the previous batch has not finished")
        start_s = max(start_s, self._last_end_s)  # one engine: batches do not overlap
        self._open = OpenBatch(size, start_s, self._draw_jitter())

    def finish_batch(self, end_s: float) -> None:
        """The open batch finished."""
        batch = self._open
        if batch is None:
            raise RuntimeError("finish_batch: no batch is executing")
        self._open = None
        self._close(batch, max(end_s, batch.start_s))

    def record_batch(self, size: int, start_s: float, end_s: float) -> None:
        """A batch that executed from ``start_s`` to ``end_s`` (may be reported late)."""
        if end_s < start_s:
            raise ValueError(f"record_batch: end {end_s} before start {start_s}")
        self.start_batch(size, start_s)
        self.finish_batch(end_s)

    # -- state ------------------------------------------------------------------------------

    def clock_mhz(self, at_s: float) -> int | None:
        """The locked clock in effect at ``at_s`` (None: the GPU's default)."""
        index = bisect.bisect_right(self._clock_times_s, at_s) - 1
        return self._clock_values[index]

    def effective_clock_mhz(self, at_s: float, batch: int) -> float:
        """The clock the SMs really run a batch at, after the board's power limiter."""
        return self.profile.effective_clock_mhz(batch, self.clock_mhz(at_s))

    @property
    def executing(self) -> bool:
        return self._open is not None

    # -- truth ------------------------------------------------------------------------------

    def true_power_watts(self, at_s: float) -> float:
        if self._open is not None and self._open.start_s <= at_s:
            # Still executing as far as anyone knows: the batch's power at this instant.
            return self._split(self._open, at_s)[-1].watts
        for piece in self._pieces_between(at_s, at_s):
            if piece.start_s <= at_s < piece.end_s:
                return piece.watts
        return self._idle_watts

    def peak_power_watts(self, start_s: float, end_s: float) -> float:
        """The highest true power in ``[start_s, end_s]``."""
        if end_s <= start_s:
            return self.true_power_watts(start_s)
        peak = -math.inf
        busy_s = 0.0
        for piece in self._pieces_between(start_s, end_s):
            overlap = min(piece.end_s, end_s) - max(piece.start_s, start_s)
            if overlap > 0:
                peak = max(peak, piece.watts)
                busy_s += overlap
        if busy_s < end_s - start_s - 1e-12:
            peak = max(peak, self._idle_watts)
        return peak

    def energy_joules(self, at_s: float) -> float:
        """Energy since the start: never decreases, whatever order batches were reported in."""
        self._account(at_s)
        energy = self._energy_j + self._open_energy_j(self._accounted_s, at_s)
        self._energy_reported_j = max(self._energy_reported_j, energy)
        return self._energy_reported_j

    # -- readings (NVML-like, with noise) -----------------------------------------------------

    def sensor_reading_watts(self, true_watts: float) -> float:
        """What the sensor reports for a true power: the truth plus noise."""
        return self._noisy(true_watts, self.profile.gpu.power_noise_watts)

    def instant_power_watts(self, at_s: float) -> float:
        return self._noisy(self.true_power_watts(at_s), self.profile.gpu.power_noise_watts)

    def peak_reading_watts(self, start_s: float, end_s: float) -> float:
        return self.sensor_reading_watts(self.peak_power_watts(start_s, end_s))

    def average_power_watts(self, at_s: float, window_s: float = AVERAGE_WINDOW_S) -> float:
        """Mean power over the last ``window_s`` (as ``nvmlDeviceGetPowerUsage`` on H100)."""
        if not 0 < window_s <= self._retention_s:
            raise ValueError(f"window_s must be in (0, {self._retention_s}], got {window_s}")
        start_s = at_s - window_s
        mean = self._integral_j(start_s, at_s) / window_s
        reads = max(1.0, window_s * INTERNAL_READS_PER_S)
        return self._noisy(mean, self.profile.gpu.power_noise_watts / math.sqrt(reads))

    def energy_millijoules(self, at_s: float) -> int:
        return int(self.energy_joules(at_s) * 1000.0)

    # -- internals --------------------------------------------------------------------------

    def _idle_level(self, loaded: bool) -> float:
        gpu = self.profile.gpu
        return gpu.loaded_idle_watts if loaded else gpu.idle_floor_watts

    def _draw_jitter(self) -> float:
        bound = self.profile.gpu.power_jitter_fraction
        return 1.0 + self._jitter_rng.uniform(-bound, bound) if bound > 0 else 1.0

    def _noisy(self, watts: float, sigma: float) -> float:
        return watts + self._noise_rng.gauss(0.0, sigma) if sigma > 0 else watts

    def _busy_watts(self, size: int, clock_mhz: int | None, jitter: float) -> float:
        key = (size, clock_mhz)
        nominal = self._power_cache.get(key)
        if nominal is None:
            nominal = self.profile.busy_power_watts(size, clock_mhz)
            self._power_cache[key] = nominal
        return max(nominal * jitter, self._idle_watts)

    def _split(self, batch: OpenBatch, end_s: float) -> list[PowerPiece]:
        """The batch from its start to ``end_s``, one piece per clock in effect."""
        start_s = batch.start_s
        if self._clock_times_s[-1] <= start_s:  # no clock change since it started
            watts = self._busy_watts(batch.size, self._clock_values[-1], batch.jitter)
            return [PowerPiece(start_s, max(end_s, start_s), watts)]
        pieces: list[PowerPiece] = []
        index = bisect.bisect_right(self._clock_times_s, start_s) - 1
        while True:
            next_change_s = (
                self._clock_times_s[index + 1] if index + 1 < len(self._clock_times_s) else math.inf
            )
            piece_end_s = min(end_s, next_change_s)
            watts = self._busy_watts(batch.size, self._clock_values[index], batch.jitter)
            if piece_end_s > start_s or not pieces:
                pieces.append(PowerPiece(start_s, max(piece_end_s, start_s), watts))
            if piece_end_s >= end_s:
                return pieces
            start_s = piece_end_s
            index += 1

    def _close(self, batch: OpenBatch, end_s: float) -> None:
        for piece in self._split(batch, end_s):
            if piece.start_s < self._accounted_s:
                # A part already accounted as idle (the batch was reported late): correct it.
                counted_s = min(piece.end_s, self._accounted_s) - piece.start_s
                self._energy_j += (piece.watts - self._idle_watts) * counted_s
            self._pieces.append(piece)
        self._last_end_s = max(self._last_end_s, end_s)
        self.batches += 1
        self.inferences += batch.size
        self._note_time(end_s)

    def _pieces_between(self, start_s: float, end_s: float) -> list[PowerPiece]:
        """Closed pieces and the open batch (up to ``end_s``) that touch the interval."""
        found: list[PowerPiece] = []
        for piece in reversed(self._pieces):
            if piece.end_s < start_s:
                break
            if piece.start_s <= end_s:
                found.append(piece)
        if self._open is not None and self._open.start_s <= end_s:
            found.extend(p for p in self._split(self._open, end_s) if p.end_s >= start_s)
        return found

    def _integral_j(self, start_s: float, end_s: float) -> float:
        """True energy in ``[start_s, end_s]``."""
        energy = self._idle_watts * (end_s - start_s)
        for piece in self._pieces_between(start_s, end_s):
            overlap = min(piece.end_s, end_s) - max(piece.start_s, start_s)
            if overlap > 0:
                energy += (piece.watts - self._idle_watts) * overlap
        return energy

    def _open_energy_j(self, start_s: float, end_s: float) -> float:
        """Energy of ``[start_s, end_s]`` not yet accounted: idle plus the open batch."""
        if end_s <= start_s:
            return 0.0
        energy = self._idle_watts * (end_s - start_s)
        if self._open is not None:
            for piece in self._split(self._open, end_s):
                overlap = min(piece.end_s, end_s) - max(piece.start_s, start_s)
                if overlap > 0:
                    energy += (piece.watts - self._idle_watts) * overlap
        return energy

    def _account(self, at_s: float) -> None:
        """Fold closed pieces up to ``at_s`` into the energy total; drop what is too old."""
        self._note_time(at_s)
        settled_s = min(at_s, self._open.start_s) if self._open is not None else at_s
        if settled_s > self._accounted_s:
            self._energy_j += self._integral_j(self._accounted_s, settled_s)
            self._accounted_s = settled_s

    def _note_time(self, at_s: float) -> None:
        self._newest_s = max(self._newest_s, at_s)
        horizon_s = min(self._newest_s - self._retention_s, self._accounted_s)
        while self._pieces and self._pieces[0].end_s < horizon_s:
            self._pieces.popleft()
        while len(self._clock_times_s) > 2 and self._clock_times_s[1] < horizon_s:
            del self._clock_times_s[0]
            del self._clock_values[0]
