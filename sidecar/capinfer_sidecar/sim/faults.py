"""Faults a workload injects into a simulated run: what production must survive.

Each fault acts where it would in a pod, so the production control loop meets it through
its ports, not through a shortcut:

* **Reloads that fail**: a load of one of ``failing_sizes`` is refused by Triton after
  taking its reload time; any other load fails with ``probability`` (seeded); a load of
  one of ``hanging_sizes`` never answers (the loop's governor abandons it).
* **Triton outages**: during a window Triton answers neither statistics nor loads (a load
  in flight when the window starts fails); the loaded model keeps serving requests.
* **Power-reading errors**: during a window every power and energy read fails, with a
  transient NVML error (``transient``, e.g. ``NVML_ERROR_UNKNOWN``) or ``GPU_IS_LOST``
  (``lost``). A transient window longer than the loop's ``stale_after_s`` (2 s) is a stale
  readings outage; a short one is only retried.
* **Clock errors**: during a window setting (or resetting) the SM clock fails with a
  transient NVML error.
* **Cap storms** are not here: they are cap changes, expanded into the job's
  ``cap_changes`` by the workload parser (the oracle follows them too).

Pure data and questions about time; the simulated GPU and Triton ask them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """``[at_s, at_s + duration_s)``."""

    at_s: float
    duration_s: float

    def __post_init__(self) -> None:
        if self.at_s < 0:
            raise ValueError(f"a fault window starts at t >= 0, got {self.at_s}")
        if self.duration_s <= 0:
            raise ValueError(f"a fault window lasts a positive time, got {self.duration_s}")

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    def covers(self, at_s: float) -> bool:
        return self.at_s <= at_s < self.end_s

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return self.at_s <= end_s and start_s < self.end_s


class PowerErrorKind(enum.Enum):
    TRANSIENT = "transient"
    """``NVML_ERROR_UNKNOWN``: the next read may work."""
    LOST = "lost"
    """``NVML_ERROR_GPU_IS_LOST``: the loop's failsafe starts at once."""


@dataclass(frozen=True)
class PowerErrorWindow(Window):
    kind: PowerErrorKind = PowerErrorKind.TRANSIENT


@dataclass(frozen=True)
class ReloadFaults:
    failing_sizes: tuple[int, ...] = ()
    """Loads of these max batch sizes always fail."""
    probability: float = 0.0
    """Any other load fails with this probability."""
    hanging_sizes: tuple[int, ...] = ()
    """Loads of these sizes never answer."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"a failure probability is in [0, 1], got {self.probability}")
        both = set(self.failing_sizes) & set(self.hanging_sizes)
        if both:
            raise ValueError(f"batch size {min(both)} cannot both fail and hang")


@dataclass(frozen=True)
class Faults:
    reloads: ReloadFaults = ReloadFaults()
    triton_outages: tuple[Window, ...] = ()
    power_errors: tuple[PowerErrorWindow, ...] = ()
    clock_errors: tuple[Window, ...] = ()

    @property
    def any(self) -> bool:
        return self != Faults()

    def triton_down(self, at_s: float) -> bool:
        return any(w.covers(at_s) for w in self.triton_outages)

    def triton_down_during(self, start_s: float, end_s: float) -> bool:
        return any(w.overlaps(start_s, end_s) for w in self.triton_outages)

    def power_error(self, at_s: float) -> PowerErrorKind | None:
        for window in self.power_errors:
            if window.covers(at_s):
                return window.kind
        return None

    def clock_error(self, at_s: float) -> bool:
        return any(w.covers(at_s) for w in self.clock_errors)
