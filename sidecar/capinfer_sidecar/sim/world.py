"""The world the production control loop runs against in the benchmark: Triton's dynamic
batcher serving one model on the virtual GPU, its load, and the workload's faults.

:class:`SimulatedServer` is advanced lazily: whoever asks it something at time ``t`` (a
power read, Triton's statistics, a clock change) first moves it to ``t``. In between it
jumps from event to event -- a batch prepared, a batch executed, a clock taking effect, the
end of a trace interval -- so a run costs per batch, never per request:

- *The dynamic batcher.* Whenever the model instance is free it takes what waits, up to the
  max batch size in effect. The host prepares the batch (the GPU waits at loaded idle), then
  the GPU executes it.
- *The load* (:mod:`capinfer_sidecar.sim.arrivals`): closed-loop clients, or Poisson
  arrivals drawn as counts.
- *The GPU.* A :class:`~capinfer_sidecar.sim.gpu_model.VirtualGpu` fed every executed batch.
  A clock change takes effect ``clock_change_s`` later, also in the middle of a batch.
- *The trace*, on a fixed grid of ``sample_interval_s`` whatever the loop does (it may be
  in a supervisor's backoff): the *true* peak power, cap, knobs in effect, throughput.

:class:`SimulatedGpu` and :class:`SimulatedTriton` are the loop's two ports
(:class:`~capinfer_sidecar.ports.PowerMeter`, :class:`~capinfer_sidecar.ports.InferenceServer`)
over it, with the faults of :mod:`capinfer_sidecar.sim.faults` applied where a pod meets
them. They raise the GPU errors the driver hands them (:class:`GpuErrorTypes`), so this
package never imports the NVML side.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from capinfer_sidecar.ports import ServerCounters
from capinfer_sidecar.sim.arrivals import Arrivals, ClosedLoop, PoissonArrivals
from capinfer_sidecar.sim.config import ClockAccess, PoissonLoad, RunConfig
from capinfer_sidecar.sim.faults import Faults, PowerErrorKind
from capinfer_sidecar.sim.gpu_model import VirtualGpu
from capinfer_sidecar.sim.latency import RequestLatencies

NO_FAULTS = Faults()

# -- what a run gives back -----------------------------------------------------------------------


@dataclass
class Trace:
    """One entry per interval of ``sample_interval_s``; times are the ends of the intervals."""

    sample_interval_s: float
    time_s: list[float] = field(default_factory=list)
    cap_watts: list[float] = field(default_factory=list)
    power_watts: list[float] = field(default_factory=list)
    """The loop's latest peak reading (true peak plus noise; NaN while readings fail)."""
    true_peak_watts: list[float] = field(default_factory=list)
    """True peak over the part of the interval in which its cap binds: a cap binds from
    its change plus the clock-change latency (no controller can act sooner)."""
    mean_power_watts: list[float] = field(default_factory=list)
    """True mean power over the interval."""
    batch_size: list[int] = field(default_factory=list)
    """Max batch size in effect."""
    requested_batch_size: list[int] = field(default_factory=list)
    clock_mhz: list[float] = field(default_factory=list)
    """Locked SM clock in effect (the default clock when not locked)."""
    throughput_ips: list[float] = field(default_factory=list)
    """Inferences processed in the interval (batches spread over their cycle), per second."""
    queue_depth: list[int] = field(default_factory=list)
    reload_in_flight: list[bool] = field(default_factory=list)
    """The loop asked for a max batch size not in effect yet (loading, or held back by the
    reload governor)."""
    state: list[str] = field(default_factory=list)
    """The loop's policy state (``failsafe`` while on safe settings)."""

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
    """Loads asked of Triton (each a model reload), failed ones included."""
    reload_failures: int
    """Loads that failed or were abandoned, as the loop counted them."""
    clock_changes: int
    energy_joules: float
    cpu_s: float
    """CPU time the run took (the control loop, its policy and the simulator)."""
    clock_control_refused: bool
    failsafe_s: float = 0.0
    """Time the loop spent on its safe settings (stale or failing readings, lost GPU,
    Triton unreachable, clock failing)."""
    loop_failures: int = 0
    """Times the control loop raised and its supervisor started it again."""
    loop_error: str | None = None
    """The control loop's first error, if it raised."""
    quarantined_batch_sizes: tuple[int, ...] = ()
    """Batch sizes the reload governor had quarantined at the end."""
    p99_latency_ms: float | None = None
    """p99 request latency over the whole run (:mod:`capinfer_sidecar.sim.latency`)."""
    slo_misses: int = 0
    """Times the loop saw Triton's p99 go over the run's latency SLO."""
    seconds_over_slo: float = 0.0

    @property
    def throughput_ips(self) -> float:
        return self.inferences / self.config.duration_s

    @property
    def speedup(self) -> float:
        """Simulated seconds per CPU second: how much faster than real time it runs."""
        return self.config.duration_s / self.cpu_s if self.cpu_s > 0 else math.inf


# -- the server ----------------------------------------------------------------------------------


class _Phase(enum.Enum):
    WAITING = "waiting"  # nothing queued
    PREP = "prep"
    EXEC = "exec"


@dataclass(frozen=True)
class LoopView:
    """What the control loop last reported, for the trace (not for the metrics)."""

    power_watts: float = math.nan
    requested_batch_size: int = 0
    reload_in_flight: bool = False
    state: str = ""


class SimulatedServer:
    """Triton serving one model on the virtual GPU; see the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        *,
        max_batch_size: int,
        batch_log: list[tuple[int, int]] | None = None,
    ) -> None:
        self.config = config
        self.profile = profile = config.profile
        self.dt = config.sample_interval_s
        self.gpu = VirtualGpu(profile, seed=config.seed)
        self.max_batch_size = max_batch_size
        self.arrivals: Arrivals
        self.latencies = RequestLatencies()
        if isinstance(config.load, PoissonLoad):
            self.arrivals = PoissonArrivals(config.load, random.Random(f"{config.seed}/arrivals"))
        else:
            self.arrivals = ClosedLoop(config.load.concurrency or 2 * config.ladder[-1])
            self.latencies.arrived(0.0, 0.0, self.arrivals.concurrency)  # every client sends
        self._serving: list[tuple[float, float, float]] = []
        """The requests of the batch in service (latency spans)."""
        self._batch_log = batch_log
        """When given: ``(batch formed, max batch size in effect)`` for every batch."""
        self.now_s = 0.0
        self.phase = _Phase.WAITING
        self.phase_end_s = 0.0
        self.batch = 0
        self.cycle_start_s = 0.0
        self.exec_start_s = 0.0
        self.exec_done = 0.0  # fraction of the batch executed before exec_start_s
        self.inferences = 0
        self.batches = 0
        self.clock_changes = 0
        self._pending_clocks_s: list[float] = []
        self._latency_cache: dict[tuple[int, int | None], float] = {}
        self._prep_cache: dict[int, float] = {}
        # The trace, on its own grid.
        self.n_ticks = math.floor(config.duration_s / self.dt + 1e-9)
        self.end_s = self.n_ticks * self.dt
        self.trace = Trace(self.dt)
        self._progress = [0.0] * (self.n_ticks + 1)
        self._next_tick = 1
        self._tick_energy_j = 0.0
        self.cap_watts = config.cap_watts
        self._cap_changed_s = 0.0  # the first cap binds once a clock could have been set
        self.view = LoopView(requested_batch_size=max_batch_size)
        self._last_read_s = 0.0
        self._free(0.0)

    # -- asked from outside (each moves the server to ``now_s`` first) -------------------------
    def advance_to(self, until_s: float) -> None:
        """Run the server's own events up to ``until_s``: batches move on by themselves
        between a clock taking effect and the end of a trace interval (at equal times a
        batch event comes first, then the clock, then the trace)."""
        while True:
            clock_s = self._pending_clocks_s[0] if self._pending_clocks_s else math.inf
            tick_s = self._next_tick * self.dt if self._next_tick <= self.n_ticks else math.inf
            other_s = min(clock_s, tick_s)
            bound_s = min(other_s, until_s)
            while self.phase_end_s <= bound_s:
                self._phase_done(self.phase_end_s)
            if other_s > until_s:
                break
            if clock_s == other_s:
                self._clock_took_effect(other_s)
            else:
                self._tick(other_s)
        self.now_s = max(self.now_s, until_s)

    def read_power_watts(self, now_s: float) -> float:
        """A fast sensor read: the highest power since the previous read, plus noise."""
        self.advance_to(now_s)
        start_s = max(self._last_read_s, now_s - self.dt)
        self._last_read_s = now_s
        return self.gpu.sensor_reading_watts(self.gpu.peak_power_watts(start_s, now_s))

    def energy_joules(self, now_s: float) -> float:
        self.advance_to(now_s)
        return self.gpu.energy_joules(now_s)

    def set_clock(self, clock_mhz: int | None, now_s: float) -> None:
        self.advance_to(now_s)
        effective_s = self.gpu.set_clock(clock_mhz, now_s)
        self._pending_clocks_s = [t for t in self._pending_clocks_s if t < effective_s]
        self._pending_clocks_s.append(effective_s)
        self.clock_changes += 1

    def set_max_batch_size(self, batch_size: int, now_s: float) -> None:
        """A reload finished: batches formed from now on use the new max."""
        self.advance_to(now_s)
        self.max_batch_size = batch_size

    def counters(self, now_s: float) -> ServerCounters:
        self.advance_to(now_s)
        return ServerCounters(
            self.inferences,
            self.batches,
            self._waiting(now_s),
            p99_latency_ms=self.latencies.window_p99_ms(now_s),
        )

    def set_cap(self, cap_watts: float, now_s: float) -> None:
        """The cap changed (for the trace: it binds from ``now_s`` plus a clock change)."""
        self.advance_to(now_s)
        self.cap_watts = cap_watts
        self._cap_changed_s = now_s

    def observe(self, view: LoopView, now_s: float) -> None:
        """What the loop reported at ``now_s``: in the trace from the interval ending then."""
        self.view = view
        trace = self.trace
        if trace.time_s and abs(trace.time_s[-1] - now_s) < self.dt / 2:
            trace.power_watts[-1] = view.power_watts
            trace.requested_batch_size[-1] = view.requested_batch_size
            trace.reload_in_flight[-1] = view.reload_in_flight
            trace.state[-1] = view.state

    # -- the batcher ---------------------------------------------------------------------------
    def _in_service(self) -> int:
        return self.batch if self.phase is not _Phase.WAITING else 0

    def _waiting(self, now_s: float) -> int:
        return max(0, self.arrivals.waiting(now_s, self._in_service()))

    def _latency_s(self, batch: int, clock: int | None) -> float:
        key = (batch, clock)
        latency = self._latency_cache.get(key)
        if latency is None:
            latency = self._latency_cache[key] = self.profile.batch_latency_s(batch, clock)
        return latency

    def _free(self, now_s: float) -> None:
        """The instance is free: take a batch of what waits, or wait for a request."""
        self.phase = _Phase.WAITING
        self.batch = 0
        waiting = self.arrivals.waiting(now_s, 0)
        if waiting <= 0:
            self.phase_end_s = self.arrivals.next_arrival_s(now_s)
            return
        batch = min(waiting, self.max_batch_size)
        if self._batch_log is not None:
            self._batch_log.append((batch, self.max_batch_size))
        self.arrivals.take(batch)
        if isinstance(self.arrivals, PoissonArrivals):
            for first_s, last_s, count in self.arrivals.spans:
                self.latencies.arrived(first_s, last_s, count)
            self.arrivals.spans.clear()
        self._serving = self.latencies.take(batch)
        self.batch = batch
        self.phase = _Phase.PREP
        self.cycle_start_s = now_s
        prep_s = self._prep_cache.get(batch)
        if prep_s is None:
            prep_s = self._prep_cache[batch] = self.profile.prep_s(batch)
        self.phase_end_s = now_s + prep_s

    def _phase_done(self, now_s: float) -> None:
        if self.phase is _Phase.PREP:
            self.phase = _Phase.EXEC
            self.gpu.start_batch(self.batch, now_s)
            self.exec_start_s = now_s
            self.exec_done = 0.0
            self.phase_end_s = now_s + self._latency_s(self.batch, self.gpu.clock_mhz(now_s))
        elif self.phase is _Phase.EXEC:
            self.gpu.finish_batch(now_s)
            self.batches += 1
            self.inferences += self.batch
            self.latencies.served(self._serving, now_s)
            if isinstance(self.arrivals, ClosedLoop):
                self.latencies.arrived(now_s, now_s, self.batch)  # answered: sent again
            self._spread(self.batch, self.cycle_start_s, now_s)
            self._free(now_s)
        else:
            self._free(now_s)

    def _clock_took_effect(self, now_s: float) -> None:
        """Re-time the rest of an executing batch at the new clock."""
        self._pending_clocks_s = [t for t in self._pending_clocks_s if t > now_s]
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
        """Count a batch's inferences evenly over its cycle, into the trace intervals."""
        dt = self.dt
        first = int(start_s / dt)
        last = min(int(end_s / dt), self.n_ticks)
        if end_s <= start_s or first >= last:
            self._progress[min(first, self.n_ticks)] += batch
            return
        rate = batch / (end_s - start_s)
        for index in range(first, last + 1):
            overlap = min(end_s, (index + 1) * dt) - max(start_s, index * dt)
            if overlap > 0:
                self._progress[index] += rate * overlap

    # -- the trace -----------------------------------------------------------------------------
    def _tick(self, now_s: float) -> None:
        self._next_tick += 1
        start_s = now_s - self.dt
        gpu = self.gpu
        binds_from_s = self._cap_changed_s + self.profile.gpu.clock_change_s
        if binds_from_s > start_s:
            true_peak = gpu.peak_power_watts(min(binds_from_s, now_s), now_s)
        else:
            true_peak = gpu.peak_power_watts(start_s, now_s)
        energy = gpu.energy_joules(now_s)
        trace = self.trace
        view = self.view
        trace.time_s.append(now_s)
        trace.cap_watts.append(self.cap_watts)
        trace.power_watts.append(view.power_watts)
        trace.true_peak_watts.append(true_peak)
        trace.mean_power_watts.append((energy - self._tick_energy_j) / self.dt)
        self._tick_energy_j = energy
        trace.batch_size.append(self.max_batch_size)
        trace.requested_batch_size.append(view.requested_batch_size)
        clock = gpu.clock_mhz(now_s)
        default_mhz = self.profile.gpu.default_clock_mhz
        trace.clock_mhz.append(float(default_mhz if clock is None else clock))
        trace.queue_depth.append(self._waiting(now_s))
        trace.reload_in_flight.append(view.reload_in_flight)
        trace.state.append(view.state)

    def finish(self) -> None:
        """Run to the end of the trace and fill in the throughput of each interval."""
        self.advance_to(self.end_s)
        dt = self.dt
        self.trace.throughput_ips = [self._progress[i] / dt for i in range(len(self.trace))]


# -- the loop's ports over it ------------------------------------------------------------------


ErrorFactory = Callable[[str, str], Exception]
"""``(operation, detail) -> error``, e.g. a :class:`capinfer_sidecar.gpu.errors.GpuError`."""


@dataclass(frozen=True)
class GpuErrorTypes:
    """The errors the simulated GPU raises, as the NVML adapter would."""

    transient: ErrorFactory
    """A transient NVML error (``UNKNOWN``, ``TIMEOUT``)."""
    lost: ErrorFactory
    """``GPU_IS_LOST``."""
    refused: ErrorFactory
    """``NO_PERMISSION``: clocks cannot be set here."""


class SimulatedGpu:
    """The loop's :class:`~capinfer_sidecar.ports.PowerMeter` over the simulated server."""

    def __init__(
        self,
        server: SimulatedServer,
        monotonic: Callable[[], float],
        errors: GpuErrorTypes,
        faults: Faults = NO_FAULTS,
        clocks: ClockAccess = ClockAccess.CONTROLLED,
    ) -> None:
        self._server = server
        self._monotonic = monotonic
        self._errors = errors
        self._faults = faults
        self._clocks = clocks
        self.refused = False
        self.failed_reads = 0

    def _check_readings(self, operation: str, now_s: float) -> None:
        kind = self._faults.power_error(now_s)
        if kind is None:
            return
        self.failed_reads += 1
        if kind is PowerErrorKind.LOST:
            raise self._errors.lost(operation, "GPU is lost (NVML_ERROR_GPU_IS_LOST)")
        raise self._errors.transient(operation, "unknown error (NVML_ERROR_UNKNOWN)")

    def power_watts(self) -> float:
        now_s = self._monotonic()
        self._check_readings("read power", now_s)
        return self._server.read_power_watts(now_s)

    def energy_joules(self) -> float:
        now_s = self._monotonic()
        self._check_readings("read energy", now_s)
        return self._server.energy_joules(now_s)

    def _check_clock(self, operation: str, now_s: float) -> None:
        if self._faults.power_error(now_s) is PowerErrorKind.LOST:
            raise self._errors.lost(operation, "GPU is lost (NVML_ERROR_GPU_IS_LOST)")
        if self._faults.clock_error(now_s):
            raise self._errors.transient(operation, "unknown error (NVML_ERROR_UNKNOWN)")

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        now_s = self._monotonic()
        if self._clocks is ClockAccess.REFUSED:
            self.refused = True
            raise self._errors.refused("set locked clocks", "NVML_ERROR_NO_PERMISSION")
        self._check_clock("set locked clocks", now_s)
        self._server.set_clock(clock_mhz, now_s)

    def reset_sm_clock(self) -> None:
        now_s = self._monotonic()
        if self._clocks is ClockAccess.REFUSED:
            return  # nothing was locked
        self._check_clock("reset locked clocks", now_s)
        self._server.set_clock(None, now_s)


class TritonUnavailableError(ConnectionError):
    """Triton does not answer (an outage window)."""


class ModelLoadError(RuntimeError):
    """Triton refused to load the model with the new max batch size."""


class SimulatedTriton:
    """The loop's :class:`~capinfer_sidecar.ports.InferenceServer` over the simulated
    server: statistics, and reloads that take ``reload_s`` while the old size serves."""

    def __init__(
        self,
        server: SimulatedServer,
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        reload_s: float,
        faults: Faults = NO_FAULTS,
        seed: int = 0,
    ) -> None:
        self._server = server
        self._monotonic = monotonic
        self._sleep = sleep
        self._reload_s = reload_s
        self._faults = faults
        self._rng = random.Random(f"{seed}/reloads")
        self.loads_asked = 0
        self.loads_failed = 0

    def _check_reachable(self, what: str) -> None:
        if self._faults.triton_down(self._monotonic()):
            raise TritonUnavailableError(f"{what}: Triton does not answer (connection refused)")

    async def counters(self) -> ServerCounters:
        self._check_reachable("model statistics")
        return self._server.counters(self._monotonic())

    async def max_batch_size(self) -> int:
        """The size in effect (an outage here is Triton not answering, not a restart: the
        size it serves is unchanged)."""
        self._check_reachable("model config")
        return self._server.max_batch_size

    async def apply_max_batch_size(self, batch_size: int) -> None:
        self._check_reachable("load model")
        self.loads_asked += 1
        reloads = self._faults.reloads
        if batch_size in reloads.hanging_sizes:
            await asyncio.get_running_loop().create_future()  # never answers
        refused = batch_size in reloads.failing_sizes or (
            reloads.probability > 0 and self._rng.random() < reloads.probability
        )
        started_s = self._monotonic()
        await self._sleep(self._reload_s)
        now_s = self._monotonic()
        if self._faults.triton_down_during(started_s, now_s):
            self.loads_failed += 1
            raise TritonUnavailableError("load model: the connection was lost during the load")
        if refused:
            self.loads_failed += 1
            raise ModelLoadError(
                f"load failed for model: max_batch_size {batch_size} could not be loaded"
            )
        self._server.set_max_batch_size(batch_size, now_s)
