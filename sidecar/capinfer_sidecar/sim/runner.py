"""A discrete-event simulation of one Triton model on one GPU, driven by a real policy.

What is simulated, on simulated time (deterministic for a seed):

- *The dynamic batcher.* Whenever the model instance is free it takes what is queued, up to
  the max batch size in effect -- under light load batches are small whatever the max is.
  The host prepares the batch (the GPU waits at loaded idle), then the GPU executes it.
- *The load.* Saturating: closed-loop clients keep ``concurrency`` requests outstanding (a
  finished request is re-sent at once). Or Poisson arrivals at a rate that changes over time.
- *The GPU.* A :class:`~capinfer_sidecar.sim.gpu_model.VirtualGpu` fed every executed batch.
  A clock change takes effect ``clock_change_s`` later, also in the middle of a batch (the
  rest of the batch runs at the new clock).
- *The knobs.* A batch-size change is a Triton reload of ``reload_s`` seconds during which
  the old max batch size keeps serving (``reload_in_flight``); one reload at a time, as the
  sidecar's loop does. A cap change calls ``policy.update_settings`` and actuates its answer
  at once. When clocks are *refused* (no permission) the first clock request fails, and the
  policy is told to carry on with the batch size alone, as the sidecar's loop does.
- *Sampling.* Every ``sample_interval_s`` the policy gets an :class:`Observation`: the peak
  power reading of the interval (true peak plus sensor noise), the mean power from the
  energy counter, cumulative batch and inference counts, the settings in effect.

Metrics are computed on the *true* power, not on the noisy readings the policy sees.
"""

from __future__ import annotations

import enum
import math
import random
import time
from dataclasses import dataclass, field, replace

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.sim.gpu_model import VirtualGpu
from capinfer_sidecar.sim.profiles import WorkloadProfile

DEFAULT_SAMPLE_INTERVAL_S = 0.1


# -- what a run is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CapChange:
    at_s: float
    cap_watts: float


@dataclass(frozen=True)
class SaturatingLoad:
    """Closed-loop clients keeping ``concurrency`` requests outstanding."""

    concurrency: int | None = None
    """None: twice the largest batch size, so every batch is full."""


@dataclass(frozen=True)
class RateStep:
    at_s: float
    rate_ips: float


@dataclass(frozen=True)
class PoissonLoad:
    """Open-loop Poisson arrivals; the rate steps to a new value at each ``at_s``."""

    steps: tuple[RateStep, ...]

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0].at_s != 0.0:
            raise ValueError("a Poisson load needs a rate from t = 0")
        times = [step.at_s for step in self.steps]
        if times != sorted(set(times)):
            raise ValueError(f"rate changes must be strictly ascending in time, got {times}")
        if any(step.rate_ips < 0 for step in self.steps):
            raise ValueError("rates must not be negative")


Load = SaturatingLoad | PoissonLoad


class ClockAccess(enum.Enum):
    """Whether the policy may lock SM clocks."""

    CONTROLLED = "controlled"
    """Clocks can be set; the policy gets the GPU's clock levels."""
    REFUSED = "refused"
    """The policy gets the levels, but setting one fails (NVML NO_PERMISSION)."""
    NONE = "none"
    """The policy gets no clock levels (clock control disabled by the user)."""


@dataclass(frozen=True)
class RunConfig:
    profile: WorkloadProfile
    cap_watts: float
    duration_s: float
    cap_changes: tuple[CapChange, ...] = ()
    load: Load = field(default_factory=SaturatingLoad)
    seed: int = 0
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    reload_s: float | None = None
    """None: the profile's reload time."""
    band: float = 0.8
    clocks: ClockAccess = ClockAccess.CONTROLLED
    batch_sizes: tuple[int, ...] | None = None
    """None: the GPU profile's ladder."""
    initial_batch_size: int | None = None
    """The max batch size loaded at t = 0; None: the policy's first choice."""

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be positive, got {self.duration_s}")
        if self.sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be positive, got {self.sample_interval_s}")
        times = [change.at_s for change in self.cap_changes]
        if times != sorted(times) or any(t <= 0 for t in times):
            raise ValueError(f"cap changes must be ascending and after t = 0, got {times}")

    @property
    def ladder(self) -> tuple[int, ...]:
        return self.batch_sizes or self.profile.gpu.batch_sizes

    @property
    def effective_reload_s(self) -> float:
        return self.profile.reload_s if self.reload_s is None else self.reload_s

    def settings(self, cap_watts: float) -> PowerSettings:
        clocks = () if self.clocks is ClockAccess.NONE else self.profile.gpu.clock_levels_mhz
        return PowerSettings(
            cap_watts=cap_watts, batch_sizes=self.ladder, clock_levels_mhz=clocks, band=self.band
        )

    def cap_segments(self) -> list[tuple[float, float, float]]:
        """``(start_s, end_s, cap_watts)`` for each stretch of constant cap."""
        starts = [(0.0, self.cap_watts)] + [(c.at_s, c.cap_watts) for c in self.cap_changes]
        starts = [(t, cap) for t, cap in starts if t < self.duration_s]
        ends = [t for t, _ in starts[1:]] + [self.duration_s]
        return [(t, end, cap) for (t, cap), end in zip(starts, ends, strict=True)]


# -- what a run gives back -----------------------------------------------------------------------


@dataclass
class Trace:
    """One entry per sample; times are the ends of the sample intervals."""

    sample_interval_s: float
    time_s: list[float] = field(default_factory=list)
    cap_watts: list[float] = field(default_factory=list)
    power_watts: list[float] = field(default_factory=list)
    """The peak reading the policy saw (true peak plus noise)."""
    true_peak_watts: list[float] = field(default_factory=list)
    """True peak over the part of the interval in which its cap binds: a new cap binds from
    its change plus the clock-change latency (no controller can act sooner)."""
    mean_power_watts: list[float] = field(default_factory=list)
    batch_size: list[int] = field(default_factory=list)
    """Max batch size in effect."""
    requested_batch_size: list[int] = field(default_factory=list)
    clock_mhz: list[float] = field(default_factory=list)
    """Locked SM clock in effect (the default clock when not locked)."""
    throughput_ips: list[float] = field(default_factory=list)
    """Inferences processed in the interval (batches spread over their cycle), per second."""
    queue_depth: list[int] = field(default_factory=list)
    reload_in_flight: list[bool] = field(default_factory=list)
    state: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.time_s)


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    policy_name: str
    trace: Trace
    inferences: int
    batches: int
    reloads: int
    """Reloads started (each one a Triton model load)."""
    clock_changes: int
    energy_joules: float
    wall_s: float
    clock_control_refused: bool

    @property
    def throughput_ips(self) -> float:
        return self.inferences / self.config.duration_s

    @property
    def speedup(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self.config.duration_s / self.wall_s if self.wall_s > 0 else math.inf


# -- the simulation ------------------------------------------------------------------------------


class _Phase(enum.Enum):
    WAITING = "waiting"  # nothing queued
    PREP = "prep"
    EXEC = "exec"


class _Arrivals:
    """Poisson arrivals with a piecewise-constant rate, drawn lazily in time order."""

    def __init__(self, load: PoissonLoad, rng: random.Random) -> None:
        self._steps = load.steps
        self._rng = rng
        self._step = 0
        self.next_s = self._draw(0.0)
        self.count = 0

    def _rate_until(self, at_s: float) -> tuple[float, float]:
        while self._step + 1 < len(self._steps) and self._steps[self._step + 1].at_s <= at_s:
            self._step += 1
        following = (
            self._steps[self._step + 1].at_s if self._step + 1 < len(self._steps) else (math.inf)
        )
        return self._steps[self._step].rate_ips, following

    def _draw(self, from_s: float) -> float:
        while True:
            rate, change_s = self._rate_until(from_s)
            candidate = from_s + self._rng.expovariate(rate) if rate > 0 else math.inf
            if candidate < change_s:
                return candidate
            if change_s == math.inf:
                return math.inf
            from_s = change_s  # memoryless: draw again from the rate change

    def advance(self, until_s: float) -> None:
        while self.next_s <= until_s:
            self.count += 1
            self.next_s = self._draw(self.next_s)


class _Simulation:
    def __init__(self, config: RunConfig, policy: Policy) -> None:
        self.config = config
        self.policy = policy
        self.profile = config.profile
        self.dt = config.sample_interval_s
        self.n_samples = math.floor(config.duration_s / self.dt + 1e-9)
        self.trace = Trace(self.dt)
        self.progress = [0.0] * (self.n_samples + 1)
        self.reload_s = config.effective_reload_s
        load = config.load
        self.arrivals: _Arrivals | None = None
        self.concurrency = 0
        if isinstance(load, PoissonLoad):
            self.arrivals = _Arrivals(load, random.Random(f"{config.seed}/arrivals"))
        else:
            self.concurrency = load.concurrency or 2 * config.ladder[-1]
        # Server state.
        self.taken = 0  # requests taken into batches (Poisson) / in service (closed loop)
        self.phase = _Phase.WAITING
        self.phase_end_s = 0.0
        self.batch = 0
        self.cycle_start_s = 0.0
        self.exec_start_s = 0.0
        self.exec_done = 0.0  # fraction of the batch executed before exec_start_s
        self.inferences = 0
        self.batches = 0
        # Knobs.
        self.settings = config.settings(config.cap_watts)
        self.refused = False
        self.decision: Decision = policy.start(self.settings, 0.0)
        # The first decision is in effect from t = 0: the model was loaded with it.
        first = self.decision.knobs
        self.applied_batch = config.initial_batch_size or first.batch_size
        self.requested_clock: int | None = None
        if config.clocks is ClockAccess.CONTROLLED:
            self.requested_clock = first.sm_clock_mhz
        self.gpu = VirtualGpu(config.profile, seed=config.seed, clock_mhz=self.requested_clock)
        self.reload_target: int | None = None
        self.reload_done_s = math.inf
        self.clock_effective_s: list[float] = []
        self.reloads = 0
        self.clock_changes = 0
        self.cap_changed_s = -math.inf
        self.latency_cache: dict[tuple[int, int | None], float] = {}
        self.prep_cache: dict[int, float] = {}
        self.last_energy_j = 0.0

    # -- the server --------------------------------------------------------------------------

    def _queued(self, now_s: float) -> int:
        if self.arrivals is None:
            return self.concurrency - (self.batch if self.phase is not _Phase.WAITING else 0)
        self.arrivals.advance(now_s)
        return self.arrivals.count - self.taken

    def _latency_s(self, batch: int, clock: int | None) -> float:
        key = (batch, clock)
        latency = self.latency_cache.get(key)
        if latency is None:
            latency = self.profile.batch_latency_s(batch, clock)
            self.latency_cache[key] = latency
        return latency

    def _server_free(self, now_s: float) -> None:
        """The instance is free: take a batch from the queue, or wait for a request."""
        queued = self._queued(now_s)
        if queued <= 0:
            self.phase = _Phase.WAITING
            self.batch = 0
            self.phase_end_s = self.arrivals.next_s if self.arrivals is not None else math.inf
            return
        batch = min(queued, self.applied_batch)
        self.batch = batch
        if self.arrivals is not None:
            self.taken += batch
        self.phase = _Phase.PREP
        self.cycle_start_s = now_s
        prep_s = self.prep_cache.get(batch)
        if prep_s is None:
            prep_s = self.prep_cache[batch] = self.profile.prep_s(batch)
        self.phase_end_s = now_s + prep_s

    def _advance(self, until_s: float) -> None:
        """Move the server through its phases up to ``until_s`` (no outside event before)."""
        gpu = self.gpu
        while self.phase_end_s <= until_s:
            now_s = self.phase_end_s
            phase = self.phase
            if phase is _Phase.PREP:
                self.phase = _Phase.EXEC
                gpu.start_batch(self.batch, now_s)
                self.exec_start_s = now_s
                self.exec_done = 0.0
                self.phase_end_s = now_s + self._latency_s(self.batch, gpu.clock_mhz(now_s))
            elif phase is _Phase.EXEC:
                gpu.finish_batch(now_s)
                self.batches += 1
                self.inferences += self.batch
                self._spread(self.batch, self.cycle_start_s, now_s)
                self.phase = _Phase.WAITING
                self._server_free(now_s)
            else:
                self._server_free(now_s)

    def _clock_took_effect(self, now_s: float) -> None:
        """Re-time the rest of an executing batch at the new clock."""
        self.clock_effective_s = [t for t in self.clock_effective_s if t > now_s]
        if self.phase is not _Phase.EXEC:
            return
        old_clock = self.gpu.clock_mhz(self.exec_start_s)
        span_s = self._latency_s(self.batch, old_clock)
        self.exec_done += (now_s - self.exec_start_s) / span_s
        remaining = max(0.0, 1.0 - self.exec_done)
        self.exec_start_s = now_s
        self.phase_end_s = now_s + remaining * self._latency_s(
            self.batch, self.gpu.clock_mhz(now_s)
        )

    def _spread(self, batch: int, start_s: float, end_s: float) -> None:
        """Count a batch's inferences evenly over its cycle, into the sample bins."""
        dt = self.dt
        first = int(start_s / dt)
        last = min(int(end_s / dt), self.n_samples)
        if end_s <= start_s or first >= last:
            self.progress[min(first, self.n_samples)] += batch
            return
        rate = batch / (end_s - start_s)
        for index in range(first, last + 1):
            overlap = min(end_s, (index + 1) * dt) - max(start_s, index * dt)
            if overlap > 0:
                self.progress[index] += rate * overlap

    # -- the knobs ---------------------------------------------------------------------------

    def _actuate(self, decision: Decision, now_s: float) -> None:
        self.decision = decision
        wanted = decision.knobs
        if wanted.sm_clock_mhz != self.requested_clock and not self.refused:
            if self.config.clocks is ClockAccess.REFUSED and wanted.sm_clock_mhz is not None:
                self._refuse_clocks(now_s)
                return
            self.requested_clock = wanted.sm_clock_mhz
            effective_s = self.gpu.set_clock(wanted.sm_clock_mhz, now_s)
            self.clock_effective_s = [t for t in self.clock_effective_s if t < effective_s]
            self.clock_effective_s.append(effective_s)
            self.clock_changes += 1
        if wanted.batch_size != self.applied_batch and self.reload_target is None:
            self.reload_target = wanted.batch_size
            self.reload_done_s = now_s + self.reload_s
            self.reloads += 1

    def _refuse_clocks(self, now_s: float) -> None:
        self.refused = True
        self.policy.disable_clock_control("setting SM clocks: NVML_ERROR_NO_PERMISSION")
        self.settings = replace(self.settings, clock_levels_mhz=())
        self._actuate(self.policy.update_settings(self.settings, now_s), now_s)

    def _reload_done(self) -> None:
        if self.reload_target is not None:
            self.applied_batch = self.reload_target
        self.reload_target = None
        self.reload_done_s = math.inf

    # -- sampling ----------------------------------------------------------------------------

    def _sample(self, now_s: float) -> None:
        start_s = now_s - self.dt
        interval_peak = self.gpu.peak_power_watts(start_s, now_s)
        reading = self.gpu.sensor_reading_watts(interval_peak)
        binds_from_s = self.cap_changed_s + self.profile.gpu.clock_change_s
        true_peak = interval_peak
        if binds_from_s > start_s:
            true_peak = self.gpu.peak_power_watts(min(binds_from_s, now_s), now_s)
        energy = self.gpu.energy_joules(now_s)
        mean_watts = (energy - self.last_energy_j) / self.dt
        self.last_energy_j = energy
        queued = max(self._queued(now_s), 0)
        applied = Knobs(self.applied_batch, self.requested_clock)
        observation = Observation(
            now_s=now_s,
            power_watts=reading,
            mean_power_watts=mean_watts,
            batches_completed=self.batches,
            inferences_completed=self.inferences,
            applied=applied,
            reload_in_flight=self.reload_target is not None,
            queue_depth=queued,
        )
        self._actuate(self.policy.step(observation), now_s)
        trace = self.trace
        trace.time_s.append(now_s)
        trace.cap_watts.append(self.settings.cap_watts)
        trace.power_watts.append(reading)
        trace.true_peak_watts.append(true_peak)
        trace.mean_power_watts.append(mean_watts)
        trace.batch_size.append(applied.batch_size)
        trace.requested_batch_size.append(self.decision.knobs.batch_size)
        clock = applied.sm_clock_mhz
        default_clock = self.profile.gpu.default_clock_mhz
        trace.clock_mhz.append(float(default_clock if clock is None else clock))
        trace.queue_depth.append(queued)
        trace.reload_in_flight.append(observation.reload_in_flight)
        trace.state.append(self.decision.state)

    def _change_cap(self, cap_watts: float, now_s: float) -> None:
        self.cap_changed_s = now_s
        self.settings = replace(self.settings, cap_watts=cap_watts)
        self._actuate(self.policy.update_settings(self.settings, now_s), now_s)

    # -- the event loop ------------------------------------------------------------------------

    def run(self) -> None:
        self._actuate(self.decision, 0.0)
        self._server_free(0.0)
        changes = list(self.config.cap_changes)
        change_index = 0
        sample_index = 1
        end_s = self.n_samples * self.dt
        now_s = 0.0
        while True:
            next_sample_s = sample_index * self.dt if sample_index <= self.n_samples else math.inf
            next_change_s = changes[change_index].at_s if change_index < len(changes) else math.inf
            next_clock_s = min(self.clock_effective_s, default=math.inf)
            external_s = min(next_sample_s, next_change_s, self.reload_done_s, next_clock_s)
            if external_s == math.inf or external_s > end_s + 1e-9:
                break
            self._advance(external_s)  # batches move on by themselves until then
            now_s = external_s
            if next_clock_s == now_s:
                self._clock_took_effect(now_s)
            elif self.reload_done_s == now_s:
                self._reload_done()
            elif next_sample_s == now_s:
                self._sample(now_s)
                sample_index += 1
            else:
                self._change_cap(changes[change_index].cap_watts, now_s)
                change_index += 1
        self._finish_trace()

    def _finish_trace(self) -> None:
        dt = self.dt
        self.trace.throughput_ips = [
            self.progress[index] / dt for index in range(len(self.trace.time_s))
        ]


def run(config: RunConfig, policy: Policy) -> RunResult:
    """Simulate ``config`` under ``policy`` and return the trace and totals."""
    started = time.perf_counter()
    simulation = _Simulation(config, policy)
    simulation.run()
    wall_s = time.perf_counter() - started
    return RunResult(
        config=config,
        policy_name=policy.name,
        trace=simulation.trace,
        inferences=simulation.inferences,
        batches=simulation.batches,
        reloads=simulation.reloads,
        clock_changes=simulation.clock_changes,
        energy_joules=simulation.gpu.energy_joules(config.duration_s),
        wall_s=wall_s,
        clock_control_refused=simulation.refused,
    )
