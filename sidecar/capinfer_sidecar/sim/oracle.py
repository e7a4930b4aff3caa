"""The oracle: the best static (batch size, clock) pair whose peak power stays under the cap.

Found by exhaustive search over the ladder and the clock levels the job may use, on the same
model the simulator runs. "Peak power" is the profile's ``peak_power_watts``: the nominal
busy power at the *full* max batch size plus the per-batch jitter bound -- the highest true
power the simulator can ever produce for that pair, so a pair the oracle accepts is never over
the cap in the metrics (which are computed on true power). Sensor noise is left
out: it changes what a policy *sees*, not what the GPU draws. A pair is judged at its max
batch size whatever the load forms, so the oracle holds if the load surges.

For a job whose cap changes, the oracle holds the best pair of each segment and switches
instantly at each change (no reload cost): an upper bound no controller can beat on
saturating load. Its throughput comes from running that schedule through the same control
loop and simulator as the policies (:func:`capinfer_sidecar.simloop.run_oracle`: same
arrivals and seed, reloads that take no time, no faults), and in closed form for saturating
load.
When no pair is under a cap, the oracle takes the pair of lowest peak power and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.sim.config import ClockAccess, RunConfig, SaturatingLoad
from capinfer_sidecar.sim.profiles import WorkloadProfile


@dataclass(frozen=True)
class OraclePair:
    batch_size: int
    clock_mhz: int | None
    throughput_ips: float
    """Under saturating load."""
    peak_power_watts: float
    cap_reachable: bool


def best_static_pair(
    profile: WorkloadProfile,
    cap_watts: float,
    batch_sizes: tuple[int, ...],
    clock_levels_mhz: tuple[int, ...],
) -> OraclePair:
    """Exhaustive search; ties go to the lower peak power. Empty clock levels: default clock."""
    clocks: tuple[int | None, ...] = clock_levels_mhz or (None,)
    candidates = [
        OraclePair(
            batch_size=batch,
            clock_mhz=clock,
            throughput_ips=profile.throughput_ips(batch, clock),
            peak_power_watts=profile.peak_power_watts(batch, clock),
            cap_reachable=True,
        )
        for batch in batch_sizes
        for clock in clocks
    ]
    feasible = [pair for pair in candidates if pair.peak_power_watts <= cap_watts]
    if not feasible:
        coolest = min(candidates, key=lambda pair: pair.peak_power_watts)
        return replace(coolest, cap_reachable=False)
    return max(feasible, key=lambda pair: (pair.throughput_ips, -pair.peak_power_watts))


def oracle_clock_levels(config: RunConfig) -> tuple[int, ...]:
    """The clocks a job may lock: none when clock control is off or refused."""
    if config.clocks is ClockAccess.CONTROLLED:
        return config.profile.gpu.clock_levels_mhz
    return ()


def pair_for(config: RunConfig, cap_watts: float) -> OraclePair:
    return best_static_pair(config.profile, cap_watts, config.ladder, oracle_clock_levels(config))


def closed_form_throughput_ips(config: RunConfig) -> float | None:
    """Time-weighted oracle throughput over the cap segments; None unless load saturates."""
    if not isinstance(config.load, SaturatingLoad):
        return None
    total = 0.0
    for start_s, end_s, cap in config.cap_segments():
        total += pair_for(config, cap).throughput_ips * (end_s - start_s)
    return total / config.duration_s


class OraclePolicy(Policy):
    """Holds the oracle's pair for whatever cap it is given; ignores what it observes."""

    name = "Oracle"

    def __init__(self, config: RunConfig) -> None:
        self._config = config
        self._decision = Decision(Knobs(config.ladder[0], None), reason="not started")

    def _choose(self, settings: PowerSettings) -> Decision:
        pair = pair_for(self._config, settings.cap_watts)
        clock = pair.clock_mhz if settings.clock_control else None
        where = f"{clock} MHz" if clock is not None else "default clock"
        note = "" if pair.cap_reachable else " (no pair is under the cap: the coolest one)"
        self._decision = Decision(
            Knobs(pair.batch_size, clock),
            reason=f"best static pair for {settings.cap_watts:g} W: batch {pair.batch_size}, "
            f"{where}{note}",
            state="oracle",
        )
        return self._decision

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        del now_s
        return self._choose(settings)

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        del now_s
        return self._choose(settings)

    def step(self, observation: Observation) -> Decision:
        del observation
        return self._decision
