"""What a run achieved, computed from its trace on the *true* power (not the noisy readings).

- *Over the cap*: a sample interval is over when its true peak power exceeds the cap in
  effect (as the sidecar's ``secondsOverCap`` counts samples). A new cap binds from its
  change plus the clock-change latency: what the GPU drew before any controller could act
  is not held against it. Reported as a fraction of the intervals and as the worst
  overshoot in watts.
- *Settling after a cap change* at ``t``, within its segment (until the next change or the
  end): the later of (a) the time from which the true peak stays under the new cap for
  ``SETTLE_HOLD_S`` (or to the end of the segment) and (b) the time at which the throughput
  (1 s trailing mean, from ``t`` on) first reaches 95% of what the policy averaged over the
  last third of the segment. None when the run never holds under the cap that long. Later
  excursions (a load burst) count in the time over the cap, not here. Under open-loop
  arrivals the throughput follows the load, not the controller, so only (a) counts.
- *Average batch size*: of the max batch size in effect (time-weighted; what the paper's
  Fig. 6 shows) and of the batches actually formed (smaller under light load).
- *Latency*: the p99 request latency over the whole run (queue + preparation + execution,
  :mod:`capinfer_sidecar.sim.latency`), and, with a latency SLO, the time Triton's p99 (its
  60 s window, what the sidecar holds the SLO against) spent over it and the misses the
  sidecar counted.
- *What production's safety did*, as the control loop counted it: failed loads (refused,
  lost to an outage, or abandoned by the reload governor) per minute of run, the time the
  loop spent on its safe settings (the failsafe), the times its supervisor had to start it
  again, and the batch sizes quarantined at the end.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from capinfer_sidecar.sim.config import SaturatingLoad
from capinfer_sidecar.sim.world import RunResult, Trace

SETTLE_THROUGHPUT_FRACTION = 0.95
SETTLE_HOLD_S = 5.0
THROUGHPUT_WINDOW_S = 1.0


@dataclass(frozen=True)
class Settling:
    """How a run followed one cap change."""

    at_s: float
    from_watts: float
    to_watts: float
    settling_s: float | None
    """None: never held under the cap for ``SETTLE_HOLD_S`` within the segment."""
    under_cap_s: float | None
    throughput_s: float


@dataclass(frozen=True)
class RunMetrics:
    throughput_ips: float
    over_cap_fraction: float
    seconds_over_cap: float
    worst_overshoot_watts: float
    """The largest true peak above the cap; 0 when never over."""
    settling: tuple[Settling, ...]
    reloads: int
    reload_failures: int
    failed_loads_per_minute: float
    failsafe_s: float
    """Time on the loop's safe settings (stale or failing readings, lost GPU, Triton down)."""
    loop_failures: int
    """Times the control loop raised and was started again by its supervisor."""
    quarantined_batch_sizes: tuple[int, ...]
    clock_changes: int
    mean_batch_setting: float
    mean_formed_batch: float
    mean_power_watts: float
    energy_joules: float
    cpu_s: float
    speedup: float
    p99_latency_ms: float | None = None
    latency_slo_ms: float | None = None
    seconds_over_slo: float = 0.0
    slo_misses: int = 0

    @property
    def worst_settling_s(self) -> float | None:
        """The slowest settling over all cap changes; None if one never settled."""
        if any(s.settling_s is None for s in self.settling):
            return None
        return max((s.settling_s for s in self.settling if s.settling_s is not None), default=0.0)


def compute_metrics(result: RunResult) -> RunMetrics:
    trace = result.trace
    config = result.config
    overshoots = [p - c for p, c in zip(trace.true_peak_watts, trace.cap_watts, strict=True)]
    over = sum(1 for o in overshoots if o > 0)
    samples = max(len(trace), 1)
    segments = config.cap_segments()
    saturating = isinstance(config.load, SaturatingLoad)
    settling = [
        settle(trace, start_s, end_s, cap, previous_cap, throughput_counts=saturating)
        for (_, _, previous_cap), (start_s, end_s, cap) in itertools.pairwise(segments)
    ]
    return RunMetrics(
        throughput_ips=result.throughput_ips,
        over_cap_fraction=over / samples,
        seconds_over_cap=over * trace.sample_interval_s,
        worst_overshoot_watts=max([0.0, *overshoots]),
        settling=tuple(settling),
        reloads=result.reloads,
        reload_failures=result.reload_failures,
        failed_loads_per_minute=60.0 * result.reload_failures / config.duration_s,
        failsafe_s=result.failsafe_s,
        loop_failures=result.loop_failures,
        quarantined_batch_sizes=result.quarantined_batch_sizes,
        clock_changes=result.clock_changes,
        mean_batch_setting=sum(trace.batch_size) / samples,
        mean_formed_batch=result.inferences / result.batches if result.batches else 0.0,
        mean_power_watts=result.energy_joules / config.duration_s,
        energy_joules=result.energy_joules,
        cpu_s=result.cpu_s,
        speedup=result.speedup,
        p99_latency_ms=result.p99_latency_ms,
        latency_slo_ms=config.latency_slo_ms,
        seconds_over_slo=result.seconds_over_slo,
        slo_misses=result.slo_misses,
    )


def settle(
    trace: Trace,
    at_s: float,
    end_s: float,
    cap_watts: float,
    from_watts: float,
    *,
    throughput_counts: bool = True,
) -> Settling:
    """Settling after the cap change at ``at_s`` (see the module docstring)."""
    eps = 1e-9
    indices = [i for i, t in enumerate(trace.time_s) if at_s < t <= end_s + eps]
    if not indices:
        return Settling(at_s, from_watts, cap_watts, 0.0, 0.0, 0.0)
    under_cap_s = _under_cap_s(trace, indices, at_s, cap_watts)
    throughput_s = _throughput_settling_s(trace, indices, at_s, end_s) if throughput_counts else 0.0
    settling_s = None if under_cap_s is None else max(under_cap_s, throughput_s)
    return Settling(at_s, from_watts, cap_watts, settling_s, under_cap_s, throughput_s)


def _under_cap_s(trace: Trace, indices: list[int], at_s: float, cap_watts: float) -> float | None:
    """Time from the change to the start of the first stretch held under the cap."""
    hold = max(1, round(SETTLE_HOLD_S / trace.sample_interval_s))
    clean = 0
    for position, index in enumerate(indices):
        clean = clean + 1 if trace.true_peak_watts[index] <= cap_watts else 0
        if clean >= hold or (clean and position == len(indices) - 1):
            first = indices[position - clean + 1]
            return _seconds(trace.time_s[first] - trace.sample_interval_s - at_s)
    return None


def _throughput_settling_s(trace: Trace, indices: list[int], at_s: float, end_s: float) -> float:
    tail_from_s = end_s - (end_s - at_s) / 3.0
    tail = [trace.throughput_ips[i] for i in indices if trace.time_s[i] > tail_from_s]
    target = SETTLE_THROUGHPUT_FRACTION * (sum(tail) / len(tail)) if tail else 0.0
    if target <= 0:
        return 0.0
    window = max(1, round(THROUGHPUT_WINDOW_S / trace.sample_interval_s))
    for position, index in enumerate(indices):
        first = max(0, position - window + 1)
        recent = [trace.throughput_ips[i] for i in indices[first : position + 1]]
        if sum(recent) / len(recent) >= target:
            return _seconds(trace.time_s[index] - at_s)
    return _seconds(trace.time_s[indices[-1]] - at_s)


def _seconds(duration_s: float) -> float:
    """A duration on the sample grid, without float dust (and never negative)."""
    return max(0.0, round(duration_s, 6))
