"""A tiny synthetic GPU and driver loop for policy tests (deliberately not the sim package).

Peak power is a table per batch size at the top clock, scaled down with the clock as
``idle + dynamic * (clock / top) ** 2``. A batch takes ``(base + per_item * batch) * top /
clock`` seconds. A batch-size change is a reload of ``reload_s`` seconds during which the old
batch size keeps serving; a clock change is in effect at the next sample.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings

P40_CLOCKS_MHZ = (544, 632, 734, 835, 949, 1063, 1189, 1303, 1430, 1531)
PAPER_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ToyGpu:
    peak_watts_at_top: Mapping[int, float]
    """Peak power per batch size at the top clock (or with clocks not controlled)."""
    idle_watts: float = 50.0
    top_clock_mhz: int = P40_CLOCKS_MHZ[-1]
    reload_s: float = 2.0
    batch_base_s: float = 0.01
    per_item_s: float = 0.001
    noise_watts: float = 0.0
    seed: int = 0
    light_load_batch: int | None = None
    """Under light load the batcher forms batches of at most this size, whatever the max."""
    refused_batches: frozenset[int] = frozenset()
    """Batch sizes whose reload fails (the old one keeps serving)."""

    def formed(self, knobs: Knobs) -> Knobs:
        """The batch actually formed (the max batch size under a saturating load)."""
        if self.light_load_batch is None or knobs.batch_size <= self.light_load_batch:
            return knobs
        sizes = [b for b in self.peak_watts_at_top if b <= self.light_load_batch]
        return Knobs(max(sizes), knobs.sm_clock_mhz)

    def peak_watts(self, knobs: Knobs) -> float:
        knobs = self.formed(knobs)
        ratio = self._clock_ratio(knobs)
        dynamic = self.peak_watts_at_top[knobs.batch_size] - self.idle_watts
        return self.idle_watts + dynamic * ratio**2

    def batch_time_s(self, knobs: Knobs) -> float:
        knobs = self.formed(knobs)
        return (self.batch_base_s + self.per_item_s * knobs.batch_size) / self._clock_ratio(knobs)

    def throughput(self, knobs: Knobs) -> float:
        return self.formed(knobs).batch_size / self.batch_time_s(knobs)

    def _clock_ratio(self, knobs: Knobs) -> float:
        clock = knobs.sm_clock_mhz or self.top_clock_mhz
        return clock / self.top_clock_mhz


@dataclass
class Run:
    """Everything that happened, one entry per sample."""

    observations: list[Observation] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    wanted_before: list[Knobs] = field(default_factory=list)
    """The settings asked for when each sample was taken (before the policy saw it)."""
    caps_watts: list[float] = field(default_factory=list)
    true_peaks_watts: list[float] = field(default_factory=list)

    def batches_asked(self) -> list[int]:
        """The batch sizes asked for, with consecutive repeats collapsed."""
        walk: list[int] = []
        for decision in self.decisions:
            if not walk or walk[-1] != decision.knobs.batch_size:
                walk.append(decision.knobs.batch_size)
        return walk

    def reloads(self) -> int:
        return len(self.batches_asked()) - 1

    def seconds_over_cap(self, dt_s: float) -> float:
        pairs = zip(self.true_peaks_watts, self.caps_watts, strict=True)
        return dt_s * sum(1 for peak, cap in pairs if peak > cap)

    def mean_throughput(self) -> float:
        last = self.observations[-1]
        return last.inferences_completed / last.now_s

    def throughput_between(self, start_s: float, end_s: float) -> float:
        inside = [o for o in self.observations if start_s <= o.now_s <= end_s]
        first, last = inside[0], inside[-1]
        return (last.inferences_completed - first.inferences_completed) / (last.now_s - first.now_s)


def oracle(gpu: ToyGpu, settings: PowerSettings) -> tuple[float, Knobs]:
    """The best static pair whose peak power stays under the cap, by exhaustive search."""
    clocks: tuple[int | None, ...] = settings.clock_levels_mhz or (None,)
    pairs = [Knobs(b, c) for b in settings.batch_sizes for c in clocks]
    fitting = [k for k in pairs if gpu.peak_watts(k) <= settings.cap_watts]
    best = max(fitting, key=gpu.throughput)
    return gpu.throughput(best), best


def drive(
    policy: Policy,
    gpu: ToyGpu,
    settings: PowerSettings,
    duration_s: float,
    *,
    dt_s: float = 0.1,
    cap_changes: Mapping[float, float] | None = None,
    settings_changes: Mapping[float, PowerSettings] | None = None,
    queue_depth: int | None = None,
    report_refusals: bool = False,
) -> Run:
    """Run ``policy`` on ``gpu`` for ``duration_s``; the first decision is loaded at t=0.

    With ``report_refusals`` each observation names the sizes whose last load failed, as
    the control loop does.
    """
    refused: set[int] = set()
    rng = random.Random(gpu.seed)
    run = Run()
    decision = policy.start(settings, 0.0)
    applied = decision.knobs
    pending: Knobs | None = None
    reload_done_s = math.inf
    batches = 0.0
    inferences = 0
    changes: dict[float, PowerSettings] = dict(settings_changes or {})
    for at_s, cap_watts in (cap_changes or {}).items():
        changes[at_s] = PowerSettings(
            cap_watts=cap_watts,
            batch_sizes=settings.batch_sizes,
            clock_levels_mhz=settings.clock_levels_mhz,
            band=settings.band,
        )
    steps = round(duration_s / dt_s)
    for i in range(1, steps + 1):
        now_s = round(i * dt_s, 9)
        start_s = now_s - dt_s
        for at_s in sorted(t for t in changes if start_s < t <= now_s):
            settings = changes[at_s]
            decision = policy.update_settings(settings, at_s)
        # Clocks take effect within the interval; batch sizes after the reload.
        applied = Knobs(applied.batch_size, decision.knobs.sm_clock_mhz)
        if pending is None and decision.knobs.batch_size != applied.batch_size:
            # A load that failed is tried again while the policy still asks for it.
            pending = Knobs(decision.knobs.batch_size, None)
            reload_done_s = start_s + gpu.reload_s
        peak = gpu.peak_watts(applied)
        if pending is not None and reload_done_s <= now_s:
            if pending.batch_size not in gpu.refused_batches:
                applied = Knobs(pending.batch_size, applied.sm_clock_mhz)
                peak = max(peak, gpu.peak_watts(applied))
                refused.discard(pending.batch_size)
            else:
                refused.add(pending.batch_size)
            pending = None
            reload_done_s = math.inf
        before = int(batches)
        batches += dt_s / gpu.batch_time_s(applied)
        inferences += (int(batches) - before) * gpu.formed(applied).batch_size
        # As the control loop reads: the highest of its five noisy reads in the interval.
        noise = max(rng.gauss(0.0, gpu.noise_watts) for _ in range(5)) if gpu.noise_watts else 0.0
        observed = peak + noise
        observation = Observation(
            now_s=now_s,
            power_watts=observed,
            mean_power_watts=min(observed, peak * 0.9),
            batches_completed=int(batches),
            inferences_completed=inferences,
            applied=applied,
            reload_in_flight=pending is not None,
            queue_depth=queue_depth,
            refused_batch_sizes=frozenset(refused) if report_refusals else frozenset(),
        )
        run.wanted_before.append(decision.knobs)
        decision = policy.step(observation)
        run.observations.append(observation)
        run.decisions.append(decision)
        run.caps_watts.append(settings.cap_watts)
        run.true_peaks_watts.append(peak)
    return run
