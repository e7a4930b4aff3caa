"""The sidecar's control loop: sample, ask the policy, actuate, report.

Every ``sample_interval_s`` the loop reads the GPU (peak of fast instant-power reads
within the interval, mean from the energy counter) and Triton's counters, hands the
policy an :class:`Observation` and actuates its :class:`Decision`: a clock change at once,
a batch-size change as a background Triton reload (seconds) while the old size keeps
serving. Each sample becomes a :class:`LoopSnapshot` for metrics and the status entry.

Safety: when power readings fail for ``stale_after_s`` the loop moves to the safest
settings it can (lowest clock, smallest batch) until readings return; a transient GPU
error before that is only retried. A lost GPU (``GPU_IS_LOST``) means the safest settings
at once. A clock that cannot be set for ``stale_after_s`` (errors other than a refusal)
means the safest settings too. When Triton is unreachable the loop keeps the clock knob;
when the GPU refuses clock control it carries on with the batch knob alone. When Triton
answers again, the batch size in effect is read back from it: a restarted Triton serves
the model's own configuration, not the size the loop had loaded. Reloads are bounded by a
:class:`~capinfer_sidecar.reloads.ReloadGovernor` (backoff, quarantine, rate, timeout).
Clocks it locked are reset when it stops; when it fails, it locks the lowest clock before
the error leaves :meth:`ControlLoop.run`, so the supervisor's backoff runs on safe clocks.
Readings taken before new settings (a new cap) are never judged against them: the policy
answers the new cap at once, and its next observation is of a whole interval after it.

A latency SLO (``latency_slo_ms``) is held beside the cap for every policy alike: a
:class:`~capinfer_sidecar.policies.slo.LatencyGuard` fed Triton's p99 shortens the batch-size
ladder the policy sees while p99 is over the SLO, and lengthens it again with slack. The
policy still holds the cap on that ladder, so the cap wins whenever both cannot hold.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from capinfer_sidecar.gpu.errors import GpuError, GpuLostError, GpuRefusedError
from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.policies.slo import LatencyGuard
from capinfer_sidecar.ports import InferenceServer, PowerMeter, ServerCounters
from capinfer_sidecar.reloads import ReloadGovernor

__all__ = [
    "ControlLoop",
    "InferenceServer",
    "LoopSnapshot",
    "PowerMeter",
    "ServerCounters",
]

log = logging.getLogger(__name__)

FAST_READS_PER_SAMPLE = 5
"""Instant-power reads inside one sample interval: the max approximates the peak."""
THROUGHPUT_WINDOW_S = 2.0
"""Inferences/s is counted over this window: a sample interval can fall inside one batch."""


@dataclass(frozen=True)
class LoopSnapshot:
    """What the loop knows after one sample: the source of metrics and status."""

    now_s: float
    cap_watts: float
    power_watts: float
    mean_power_watts: float
    energy_joules: float
    batch_size: int
    requested_batch_size: int
    sm_clock_mhz: int | None
    inferences_per_second: float
    seconds_over_cap: float
    violations: int
    reloads: int
    reload_failures: int
    policy: str
    policy_state: str
    reason: str
    clock_control: bool
    degraded: str | None
    """Why the loop runs on safe settings (stale power, Triton down), None when healthy."""
    quarantined_batch_sizes: tuple[int, ...] = ()
    """Batch sizes Triton refused to load repeatedly: not tried again for a long while."""
    reload_blocked: str | None = None
    """Why the requested batch size is not being loaded now, when it is not."""
    cap_infeasible: bool = False
    """The policy found the cap below what its least-power setting draws (and holds it)."""
    p99_latency_ms: float | None = None
    """Triton's p99 request latency for the model over its window; None when unknown."""
    latency_slo_ms: float | None = None
    """``spec.latencySLO.p99Ms`` in force; None without an SLO."""
    slo_misses: int = 0
    """Times p99 went over the SLO since the SLO was set (a run of samples counts once)."""
    seconds_over_slo: float = 0.0
    slo_batch_ceiling: int | None = None
    """The largest batch size the SLO leaves the policy; None when it leaves the ladder."""
    slo_unmet: str | None = None
    """Why p99 stays over the SLO (the cap wins, or nothing is left to try); None when not."""


@dataclass
class _Counters:
    seconds_over_cap: float = 0.0
    violations: int = 0
    reloads: int = 0
    reload_failures: int = 0
    was_over_cap: bool = False


@dataclass
class ControlLoop:
    policy: Policy
    settings: PowerSettings
    gpu: PowerMeter
    server: InferenceServer
    initial_batch_size: int
    monotonic: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    sample_interval_s: float = 0.1
    stale_after_s: float = 2.0
    on_snapshot: Callable[[LoopSnapshot], None] = lambda _: None
    reloads: ReloadGovernor = field(default_factory=ReloadGovernor)
    latency_slo_ms: float | None = None
    """``spec.latencySLO.p99Ms``; change it with :meth:`set_latency_slo_ms`."""
    _guard: LatencyGuard | None = field(default=None, init=False)
    _applied: Knobs = field(init=False)
    _decision: Decision = field(init=False)
    _counters: _Counters = field(default_factory=_Counters, init=False)
    _reload: asyncio.Task[None] | None = field(default=None, init=False)
    _reload_size: int = field(default=0, init=False)
    _reload_started_s: float = field(default=0.0, init=False)
    _reload_blocked: str | None = field(default=None, init=False)
    _blocked_size_logged: int | None = field(default=None, init=False)
    _gpu_lost: str | None = field(default=None, init=False)
    _clock_errors: int = field(default=0, init=False)
    _clock_error: str = field(default="", init=False)
    _clock_failing_since_s: float | None = field(default=None, init=False)
    _clock_locked: bool = field(default=False, init=False)
    _last_energy_j: float | None = field(default=None, init=False)
    _last_energy_s: float | None = field(default=None, init=False)
    _last_good_power_s: float = field(default=0.0, init=False)
    _inference_history: deque[tuple[float, int]] = field(default_factory=deque, init=False)
    _last_counters: ServerCounters = field(default=ServerCounters(0, 0), init=False)
    _server_away: bool = field(default=False, init=False)
    _stopping: bool = field(default=False, init=False)
    _settings_version: int = field(default=0, init=False)
    """Counts new settings and policies: readings taken before one are not judged by it."""

    def __post_init__(self) -> None:
        self._applied = Knobs(self.initial_batch_size, None)
        now = self.monotonic()
        self._last_good_power_s = now
        if self.latency_slo_ms is not None:
            self._guard = LatencyGuard(self.latency_slo_ms, started_s=now)
        self._decision = self.policy.start(self._policy_settings(), now)
        log.info("policy %s started: %s", self.policy.name, self._decision.reason)

    # -- inputs from outside -----------------------------------------------------------
    def update_settings(self, settings: PowerSettings) -> None:
        """A new cap (or ladder, band) arrived: the policy reacts at the next actuation."""
        if settings == self.settings:
            return
        log.info(
            "new settings: cap %.0f W -> %.0f W, band %.2f, %d batch sizes, %d clocks",
            self.settings.cap_watts, settings.cap_watts, settings.band,
            len(settings.batch_sizes), len(settings.clock_levels_mhz),
        )  # fmt: skip
        self.settings = settings
        self._decision = self.policy.update_settings(self._policy_settings(), self.monotonic())
        self._settings_version += 1
        self._log_decision(self._decision)
        self._actuate_now(self._decision)

    def switch_policy(self, policy: Policy) -> None:
        """Hand control to another policy (``spec.power.policy`` changed)."""
        log.info("policy %s -> %s", self.policy.name, policy.name)
        self.policy = policy
        self._decision = policy.start(self._policy_settings(), self.monotonic())
        self._settings_version += 1
        self._log_decision(self._decision)

    def set_latency_slo_ms(self, slo_ms: float | None) -> None:
        """A new ``spec.latencySLO.p99Ms`` (None: none): the guard starts over with it."""
        if slo_ms == self.latency_slo_ms:
            return
        log.info("latency SLO: p99 %s ms", f"{slo_ms:g}" if slo_ms is not None else "none")
        self.latency_slo_ms = slo_ms
        limited = self._guard is not None and self._guard.ceiling is not None
        now = self.monotonic()
        self._guard = LatencyGuard(slo_ms, started_s=now) if slo_ms is not None else None
        if limited:
            self._ladder_changed()

    def _policy_settings(self) -> PowerSettings:
        """The user's settings, with the batch-size ladder the latency SLO leaves."""
        if self._guard is None:
            return self.settings
        ladder = self._guard.ladder(self.settings.batch_sizes)
        if ladder == self.settings.batch_sizes:
            return self.settings
        return replace(self.settings, batch_sizes=ladder)

    def _ladder_changed(self) -> None:
        self._decision = self.policy.update_settings(self._policy_settings(), self.monotonic())
        self._settings_version += 1
        self._log_decision(self._decision)
        self._actuate_now(self._decision)

    def _guard_latency(self, counters: ServerCounters | None, now: float) -> None:
        """Feed the p99 to the SLO guard; a changed ladder reaches the policy at once."""
        if self._guard is None or counters is None:
            return
        changed = self._guard.observe(
            counters.p99_latency_ms,
            applied=self._applied,
            queue_depth=counters.queue_depth,
            batch_sizes=self.settings.batch_sizes,
            clock_levels_mhz=self.settings.clock_levels_mhz,
            now_s=now,
            interval_s=self.sample_interval_s,
        )
        if changed:
            ceiling = self._guard.ceiling
            log.info(
                "latency SLO: p99 %.1f ms against %g ms: batch sizes up to %s",
                counters.p99_latency_ms or math.nan, self._guard.slo_ms,
                ceiling if ceiling is not None else "the top of the ladder",
            )  # fmt: skip
            self._ladder_changed()

    def stop(self) -> None:
        self._stopping = True

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """Sample until :meth:`stop`; then reset clocks. Can be run again after it failed."""
        try:
            await self._actuate(self._decision)
            while not self._stopping:
                snapshot = await self.sample_once()
                self.on_snapshot(snapshot)
        except Exception:
            # Whoever restarts the loop waits first: meanwhile, the lowest clock holds.
            self._hold_lowest_clock()
            raise
        except BaseException:
            await self.shutdown()
            raise
        await self.shutdown()

    async def sample_once(self) -> LoopSnapshot:
        version = self._settings_version
        peak_watts = await self._peak_power_over_interval()
        now = self.monotonic()
        mean_watts = self._mean_power(now, peak_watts)
        counters = await self._server_counters()
        self._check_reload_timeout(now)
        self._guard_latency(counters, now)
        degraded = None
        if self._gpu_lost is not None:
            degraded = f"GPU lost: {self._gpu_lost}"
        elif peak_watts is None and now - self._last_good_power_s > self.stale_after_s:
            degraded = "power readings stopped"
        elif (
            self._clock_failing_since_s is not None
            and now - self._clock_failing_since_s > self.stale_after_s
        ):
            degraded = f"the SM clock cannot be set: {self._clock_error}"
        elif counters is None:
            degraded = "Triton is unreachable"
        observed_watts = peak_watts if peak_watts is not None else math.nan
        self._account(observed_watts, now)
        if degraded is not None:
            decision = self._safe_decision(degraded)
        elif peak_watts is None:
            decision = self._decision  # one missed reading: hold the current settings
        elif version != self._settings_version:
            # New settings (a new cap) arrived during this interval: its readings were
            # taken, at least in part, under the old ones and must not be judged against
            # the new. The policy's answer to them stands until a whole fresh interval.
            decision = self._decision
        else:
            decision = self.policy.step(
                Observation(
                    now_s=now,
                    power_watts=peak_watts,
                    mean_power_watts=mean_watts,
                    batches_completed=self._last_counters.batches,
                    inferences_completed=self._last_counters.inferences,
                    applied=self._applied,
                    reload_in_flight=self._reload is not None,
                    queue_depth=self._last_counters.queue_depth,
                    p99_latency_ms=self._last_counters.p99_latency_ms,
                    refused_batch_sizes=self.reloads.refused(),
                )
            )
        if decision.knobs != self._decision.knobs:
            self._log_decision(decision)
        self._decision = decision
        await self._actuate(decision, allow_reload=counters is not None)
        return self._snapshot(now, observed_watts, mean_watts, degraded)

    async def shutdown(self) -> None:
        """Cancel a reload in flight and give the clocks back to the GPU; idempotent."""
        if self._reload is not None:
            self._reload.cancel()
        if self._clock_locked:
            try:
                self.gpu.reset_sm_clock()
                self._clock_locked = False
                log.info("SM clocks reset to the GPU's defaults")
            except Exception:
                log.exception("could not reset SM clocks on shutdown")

    # -- sampling ----------------------------------------------------------------------
    async def _peak_power_over_interval(self) -> float | None:
        peak: float | None = None
        step_s = self.sample_interval_s / FAST_READS_PER_SAMPLE
        for _ in range(FAST_READS_PER_SAMPLE):
            await self.sleep(step_s)
            try:
                watts = self.gpu.power_watts()
            except GpuLostError as error:
                if self._gpu_lost is None:
                    log.error("GPU lost (%s): safest settings until it answers again", error)
                self._gpu_lost = str(error)
                continue
            except Exception as error:
                # Transient (NVML_ERROR_UNKNOWN, a timeout...): the next read may work; the
                # failsafe starts only once readings are stale for stale_after_s.
                log.debug("power reading failed: %s", error)
                continue
            peak = watts if peak is None else max(peak, watts)
        if peak is not None:
            self._last_good_power_s = self.monotonic()
            if self._gpu_lost is not None:
                log.warning("GPU answers again: readings resume")
                self._gpu_lost = None
        return peak

    def _mean_power(self, now: float, fallback_watts: float | None) -> float:
        try:
            energy = self.gpu.energy_joules()
        except Exception:
            return fallback_watts if fallback_watts is not None else math.nan
        previous, previous_s = self._last_energy_j, self._last_energy_s
        self._last_energy_j = energy
        self._last_energy_s = now
        if previous is None or previous_s is None or now <= previous_s:
            return fallback_watts if fallback_watts is not None else math.nan
        return (energy - previous) / (now - previous_s)

    async def _server_counters(self) -> ServerCounters | None:
        try:
            counters = await self.server.counters()
            if self._server_away:
                await self._batch_size_after_absence()
        except Exception as error:
            if not self._server_away:
                log.warning("Triton does not answer (%s): safest settings until it does", error)
            self._server_away = True
            return None
        if self._server_away:
            log.info("Triton answers again")
            self._server_away = False
        self._last_counters = counters
        return counters

    async def _batch_size_after_absence(self) -> None:
        """Triton was away: it may have restarted, serving the model's own configuration."""
        in_effect = await self.server.max_batch_size()
        if in_effect != self._applied.batch_size:
            log.warning(
                "Triton serves max batch %d, not %d as before it was away (it restarted)",
                in_effect, self._applied.batch_size,
            )  # fmt: skip
            self._applied = replace(self._applied, batch_size=in_effect)

    def _account(self, power_watts: float, now: float) -> None:
        over = not math.isnan(power_watts) and power_watts > self.settings.cap_watts
        if over:
            self._counters.seconds_over_cap += self.sample_interval_s
            if not self._counters.was_over_cap:
                self._counters.violations += 1
        self._counters.was_over_cap = over

    def _inferences_per_second(self, now: float) -> float:
        history = self._inference_history
        history.append((now, self._last_counters.inferences))
        while len(history) > 2 and now - history[1][0] >= THROUGHPUT_WINDOW_S:
            history.popleft()
        (then, before), (_, after) = history[0], history[-1]
        if now <= then:
            return 0.0
        return max(0.0, (after - before) / (now - then))

    # -- actuation ---------------------------------------------------------------------
    def _safe_decision(self, why: str) -> Decision:
        lowest_clock = self.settings.clock_levels_mhz[0] if self.settings.clock_control else None
        return Decision(
            Knobs(self.settings.batch_sizes[0], lowest_clock),
            reason=f"{why}: safest settings until it recovers",
            state="failsafe",
        )

    async def _actuate(self, decision: Decision, allow_reload: bool = True) -> None:
        self._actuate_now(decision, allow_reload)

    def _actuate_now(self, decision: Decision, allow_reload: bool = True) -> None:
        """Set the clock at once; start a reload in the background (needs a running loop)."""
        wanted = decision.knobs
        if wanted.sm_clock_mhz != self._applied.sm_clock_mhz:
            self._set_clock(wanted.sm_clock_mhz)
        if allow_reload and wanted.batch_size != self._applied.batch_size and self._reload is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # not running yet: the first sample actuates it
            self._start_reload(wanted.batch_size)
        elif wanted.batch_size == self._applied.batch_size:
            self._reload_blocked = None

    def _set_clock(self, clock_mhz: int | None) -> None:
        """Set (or reset) the clock; a GPU error other than a refusal is retried next time."""
        try:
            if clock_mhz is None:
                if self._clock_locked:
                    self.gpu.reset_sm_clock()
                    self._clock_locked = False
            else:
                self._clock_locked = True  # even a partial lock must be reset on the way out
                self.gpu.set_locked_sm_clock_mhz(clock_mhz)
        except GpuRefusedError as error:
            log.warning("clock control refused (%s): continuing with the batch size alone", error)
            self.policy.disable_clock_control(str(error))
            self.update_settings(replace(self.settings, clock_levels_mhz=()))
            return
        except GpuError as error:
            # The applied clock stays what it was, so the next actuation tries again.
            self._clock_errors += 1
            self._clock_error = str(error)
            if self._clock_failing_since_s is None:
                self._clock_failing_since_s = self.monotonic()
            if isinstance(error, GpuLostError):
                self._gpu_lost = str(error)
            log.log(
                logging.WARNING if self._clock_errors == 1 else logging.DEBUG,
                "setting the SM clock to %s failed (%s); trying again at the next sample",
                clock_mhz if clock_mhz is not None else "default", error,
            )  # fmt: skip
            return
        if self._clock_errors:
            log.info("SM clock set again after %d failed attempts", self._clock_errors)
            self._clock_errors = 0
            self._clock_failing_since_s = None
        self._applied = replace(self._applied, sm_clock_mhz=clock_mhz)

    def _hold_lowest_clock(self) -> None:
        """Best effort, on the way out of a failed run: the lowest clock of the ladder."""
        if not self.settings.clock_control:
            return
        try:
            self._set_clock(self.settings.clock_levels_mhz[0])
        except Exception:
            log.exception("could not lock the lowest clock after the control loop failed")

    def _start_reload(self, batch_size: int) -> None:
        now = self.monotonic()
        blocked = self.reloads.blocked(batch_size, now)
        self._reload_blocked = blocked
        if blocked is not None:
            if self._blocked_size_logged != batch_size:
                self._blocked_size_logged = batch_size
                log.info("not reloading to max batch %d: %s", batch_size, blocked)
            return
        self._blocked_size_logged = None
        self._reload_size = batch_size
        self._reload_started_s = now
        self._reload = asyncio.create_task(self._reload_batch_size(batch_size))

    def _check_reload_timeout(self, now: float) -> None:
        """A load running past the governor's limit counts as failed and is abandoned."""
        reload = self._reload
        if reload is None:
            return
        elapsed_s = now - self._reload_started_s
        limit_s = self.reloads.timeout_s()
        if elapsed_s <= limit_s:
            return
        self._reload = None
        reload.cancel()
        self._reload_failed(
            self._reload_size, now, f"no answer after {elapsed_s:.0f} s (limit {limit_s:.0f} s)"
        )

    def _reload_failed(self, batch_size: int, now: float, reason: str) -> None:
        self._counters.reload_failures += 1
        outcome = self.reloads.failed(batch_size, now, reason)
        if outcome.quarantined:
            log.error(
                "reload to max batch %d failed (%s); batch %d stays in effect; batch %d is"
                " quarantined: not tried again for %.0f s",
                batch_size, reason, self._applied.batch_size, batch_size,
                outcome.retry_at_s - now,
            )  # fmt: skip
        else:
            log.warning(
                "reload to max batch %d failed (%s); batch %d stays in effect; next try of"
                " batch %d in %.0f s at the earliest",
                batch_size, reason, self._applied.batch_size, batch_size,
                outcome.retry_at_s - now,
            )  # fmt: skip

    async def _reload_batch_size(self, batch_size: int) -> None:
        this = asyncio.current_task()
        try:
            await self.server.apply_max_batch_size(batch_size)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if self._reload is this:
                self._reload_failed(batch_size, self.monotonic(), str(error))
        else:
            if self._reload is this:
                self._counters.reloads += 1
                self.reloads.succeeded(batch_size, self.monotonic() - self._reload_started_s)
                log.info("reloaded: max batch %d -> %d", self._applied.batch_size, batch_size)
                self._applied = replace(self._applied, batch_size=batch_size)
        finally:
            if self._reload is this:
                self._reload = None

    # -- reporting ---------------------------------------------------------------------
    def _log_decision(self, decision: Decision) -> None:
        log.info(
            "decision batch=%d clock=%s state=%s: %s",
            decision.knobs.batch_size,
            decision.knobs.sm_clock_mhz if decision.knobs.sm_clock_mhz is not None else "default",
            decision.state or "-",
            decision.reason,
        )

    def _snapshot(
        self, now: float, power_watts: float, mean_watts: float, degraded: str | None
    ) -> LoopSnapshot:
        energy = self._last_energy_j if self._last_energy_j is not None else math.nan
        guard = self._guard
        return LoopSnapshot(
            now_s=now,
            cap_watts=self.settings.cap_watts,
            power_watts=power_watts,
            mean_power_watts=mean_watts,
            energy_joules=energy,
            batch_size=self._applied.batch_size,
            requested_batch_size=self._decision.knobs.batch_size,
            sm_clock_mhz=self._applied.sm_clock_mhz,
            inferences_per_second=self._inferences_per_second(now),
            seconds_over_cap=self._counters.seconds_over_cap,
            violations=self._counters.violations,
            reloads=self._counters.reloads,
            reload_failures=self._counters.reload_failures,
            policy=self.policy.name,
            policy_state=self._decision.state,
            reason=self._decision.reason,
            clock_control=self.settings.clock_control,
            degraded=degraded,
            quarantined_batch_sizes=self.reloads.quarantined(now),
            reload_blocked=self._reload_blocked,
            cap_infeasible=self._decision.infeasible,
            p99_latency_ms=self._last_counters.p99_latency_ms,
            latency_slo_ms=self.latency_slo_ms,
            slo_misses=guard.misses if guard is not None else 0,
            seconds_over_slo=guard.seconds_over_slo if guard is not None else 0.0,
            slo_batch_ceiling=guard.ceiling if guard is not None else None,
            slo_unmet=guard.unmet if guard is not None else None,
        )
