"""The one interface every GPU device implements: NVML for real GPUs, a virtual GPU for tests.

Units are in every name. Readings take no time argument: a device whose readings depend
on time (the virtual GPU) takes its clock when it is built, so the loop reads every device
the same way and tests can hand a virtual device a fake clock.
"""

from __future__ import annotations

import abc


class GpuDevice(abc.ABC):
    """One GPU, read and steered by the sidecar."""

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

    @abc.abstractmethod
    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        """Lock the SM clock at ``clock_mhz``; :class:`GpuRefusedError` if not allowed."""

    @abc.abstractmethod
    def reset_sm_clock(self) -> None:
        """Give the SM clock back to the GPU's own management."""
