"""What a simulated run is: the job's GPU profile, cap schedule, load, knobs and faults.

The run itself is :func:`capinfer_sidecar.simloop.run`: the production control loop on
virtual time against the simulated GPU and Triton of :mod:`capinfer_sidecar.sim.world`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from capinfer_sidecar.policies.base import PowerSettings
from capinfer_sidecar.sim.faults import Faults
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
    faults: Faults = field(default_factory=Faults)
    latency_slo_ms: float | None = None
    """``spec.latencySLO.p99Ms`` for the run's control loop; None: no SLO."""

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
