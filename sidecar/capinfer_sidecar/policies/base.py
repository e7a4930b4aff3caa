"""The contract between every power policy and whatever drives it (sidecar loop or simulator).

A policy is a pure object: it never sleeps, reads a clock or does I/O. The driver samples the
GPU every ``sample_interval_s``, hands the policy an :class:`Observation` and actuates the
:class:`Decision` it gets back. Changing the clock is cheap (milliseconds); changing the batch
size is a Triton model reload that takes seconds, during which the old batch size keeps
serving -- the observation says which settings are really in effect and whether a reload
is still in flight, so a policy can tell "asked for" from "applied".
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PowerSettings:
    """What the user declared for the controlled GPU (``spec.power`` of the object)."""

    cap_watts: float
    batch_sizes: tuple[int, ...]
    """The batch-size ladder, strictly ascending."""
    clock_levels_mhz: tuple[int, ...] = ()
    """Settable SM clocks, ascending; empty when clocks cannot (or must not) be set."""
    band: float = 0.8
    """alpha: BatchSizer, DVFS and BatchDVFS aim for peak power inside ``[band * cap, cap]``;
    Adaptive has no floor (a new band restarts its planning) and Static ignores it."""

    def __post_init__(self) -> None:
        if self.cap_watts <= 0:
            raise ValueError(f"cap_watts must be positive, got {self.cap_watts}")
        if not self.batch_sizes:
            raise ValueError("batch_sizes must not be empty")
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise ValueError(f"batch_sizes must be strictly ascending, got {self.batch_sizes}")
        if list(self.clock_levels_mhz) != sorted(set(self.clock_levels_mhz)):
            raise ValueError(
                f"clock_levels_mhz must be strictly ascending, got {self.clock_levels_mhz}"
            )
        if not 0.0 < self.band < 1.0:
            raise ValueError(f"band must be in (0, 1), got {self.band}")

    @property
    def clock_control(self) -> bool:
        return bool(self.clock_levels_mhz)

    @property
    def floor_watts(self) -> float:
        return self.band * self.cap_watts


@dataclass(frozen=True)
class Knobs:
    """The two settings a policy moves."""

    batch_size: int
    """Triton's dynamic-batching max batch size."""
    sm_clock_mhz: int | None
    """Locked SM clock; None means clocks are not controlled (the GPU's default)."""


@dataclass(frozen=True)
class Observation:
    """One sample of the GPU and the server, taken by the driver."""

    now_s: float
    """Monotonic time of the sample, in seconds."""
    power_watts: float
    """Peak instantaneous power since the previous sample (what a cap must respect)."""
    mean_power_watts: float
    """Average power since the previous sample (from the energy counter)."""
    batches_completed: int
    """Batches executed since the driver started (cumulative, for 'observe N batches')."""
    inferences_completed: int
    """Inferences executed since the driver started (cumulative)."""
    applied: Knobs
    """Settings really in effect now."""
    reload_in_flight: bool
    """A batch-size change was asked for and Triton has not finished loading it."""
    queue_depth: int | None = None
    """Requests waiting in Triton's queue, when known (tells saturated from light load)."""
    p99_latency_ms: float | None = None
    """The model's p99 request latency in Triton over its recent window (queue + compute),
    when known; ``spec.latencySLO`` is held against it."""
    refused_batch_sizes: frozenset[int] = frozenset()
    """Batch sizes whose last load failed and that have not loaded since: the driver will
    not load them again for a while (backoff, quarantine), so waiting for one is in vain."""


@dataclass(frozen=True)
class Decision:
    """What a policy wants now, and why (one log line per changed decision)."""

    knobs: Knobs
    reason: str
    state: str = ""
    """A short name for the policy's phase (e.g. 'searching', 'settled'), for metrics."""
    extra: dict[str, float] = field(default_factory=dict)
    infeasible: bool = False
    """The cap is below what the least-power setting draws (seen, not guessed): the policy
    holds that setting, and no setting can do better. Cleared when the cap changes."""


class Policy(abc.ABC):
    """A power-cap controller. Subclasses are pure and deterministic."""

    name: str = "policy"

    @abc.abstractmethod
    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        """Begin control (or begin again after a restart) and return the first settings."""

    @abc.abstractmethod
    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        """A new cap/ladder/band arrived (e.g. the object was patched). React at once."""

    @abc.abstractmethod
    def step(self, observation: Observation) -> Decision:
        """Take one sample and return the settings wanted from now on."""

    def measured_settings(self) -> list[tuple[float, float]]:
        """``(peak watts, inferences/s)`` of the settings this policy has measured, for a
        power budget's throughput curve; empty for a policy that keeps no measurements."""
        return []

    def disable_clock_control(self, reason: str) -> None:
        """Clocks turned out not to be settable (NO_PERMISSION...): carry on with batch only.

        The default works for policies that read ``settings.clock_levels_mhz``; the driver
        calls :meth:`update_settings` with an empty clock ladder right after this.
        """
        del reason
