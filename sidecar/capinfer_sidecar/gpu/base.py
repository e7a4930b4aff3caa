"""A GPU's interfaces: readings (:class:`GpuDevice`) and privileged knobs (:class:`GpuControls`).

Readings need no privilege and are what the sidecar uses. The knobs (locked SM clocks, the
board power limit) need root and ``CAP_SYS_ADMIN`` on a real GPU: only the node agent
(``capinfer_node_agent``) holds an implementation of :class:`GpuControls` for NVML; the
sidecar reaches them through the agent. The virtual GPU implements both, sharing its knob
state through a file the way a real GPU shares it through the driver.

Units are in every name. Readings take no time argument: a device whose readings depend
on time (the virtual GPU) takes its clock when it is built, so the loop reads every device
the same way and tests can hand a virtual device a fake clock.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


class GpuDevice(abc.ABC):
    """One GPU, as the sidecar reads it."""

    @property
    @abc.abstractmethod
    def uuid(self) -> str:
        """The GPU's UUID (``GPU-…``), the identity that survives re-enumeration."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The product name, e.g. ``NVIDIA H100 80GB HBM3``."""

    @abc.abstractmethod
    def power_watts(self) -> float:
        """Instantaneous board power (what a cap must respect)."""

    @abc.abstractmethod
    def average_power_watts(self) -> float:
        """Power averaged by the device (1 s on H100-class GPUs, instant on older ones)."""

    @abc.abstractmethod
    def energy_joules(self) -> float:
        """Energy used since the driver loaded: a counter that only grows."""

    @abc.abstractmethod
    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        """SM clocks that can be locked, ascending, without duplicates."""

    @abc.abstractmethod
    def sm_clock_mhz(self) -> int:
        """The SM clock now."""

    @abc.abstractmethod
    def power_limit_watts(self) -> float:
        """The power limit the GPU enforces by itself."""


@dataclass(frozen=True)
class PowerLimitRange:
    """What the board power limit of a card may be set to, and its default."""

    min_watts: float
    max_watts: float
    default_watts: float

    def clamp(self, watts: float) -> float:
        return min(max(watts, self.min_watts), self.max_watts)


class GpuControls(abc.ABC):
    """The privileged knobs of one GPU: locked SM clocks and the board power limit."""

    @property
    @abc.abstractmethod
    def uuid(self) -> str:
        """The GPU's UUID (``GPU-…``)."""

    @abc.abstractmethod
    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        """SM clocks that can be locked, ascending."""

    @abc.abstractmethod
    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        """Lock the SM clock at ``clock_mhz``; :class:`GpuRefusedError` if not allowed."""

    @abc.abstractmethod
    def reset_sm_clock(self) -> None:
        """Give the SM clock back to the GPU's own management."""

    @abc.abstractmethod
    def power_limit_range(self) -> PowerLimitRange:
        """The card's power limit constraints and default (NVML's, in watts)."""

    @abc.abstractmethod
    def set_power_limit_watts(self, watts: float) -> None:
        """Set the board power limit; the value must be inside :meth:`power_limit_range`."""

    @abc.abstractmethod
    def enforced_power_limit_watts(self) -> float:
        """The limit the GPU enforces now (read back after a set)."""
