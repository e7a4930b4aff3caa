"""The privileged NVML calls: locked SM clocks and the board power limit.

Every call goes through :func:`capinfer_sidecar.gpu.nvml.nvml_errors`, so a refusal is a
typed :class:`~capinfer_sidecar.gpu.errors.GpuPermissionError` and never a ``pynvml``
class. Limits are in milliwatts in NVML and in watts here.
"""

from __future__ import annotations

import warnings

from capinfer_sidecar.gpu.base import GpuControls, PowerLimitRange
from capinfer_sidecar.gpu.nvml import NvmlGpu, nvml_errors

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # 'pynvml' names its successor
    import pynvml


class NvmlControls(GpuControls):
    """The knobs of one real GPU; open it with :meth:`NvmlSession.gpus`."""

    def __init__(self, gpu: NvmlGpu) -> None:
        self._gpu = gpu
        self._handle = gpu.handle

    @property
    def uuid(self) -> str:
        return self._gpu.uuid

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return self._gpu.supported_sm_clocks_mhz()

    @nvml_errors
    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        pynvml.nvmlDeviceSetGpuLockedClocks(self._handle, clock_mhz, clock_mhz)

    @nvml_errors
    def reset_sm_clock(self) -> None:
        pynvml.nvmlDeviceResetGpuLockedClocks(self._handle)

    @nvml_errors
    def power_limit_range(self) -> PowerLimitRange:
        low_mw, high_mw = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(self._handle)
        default_mw = pynvml.nvmlDeviceGetPowerManagementDefaultLimit(self._handle)
        return PowerLimitRange(low_mw / 1000.0, high_mw / 1000.0, default_mw / 1000.0)

    @nvml_errors
    def set_power_limit_watts(self, watts: float) -> None:
        pynvml.nvmlDeviceSetPowerManagementLimit(self._handle, round(watts * 1000))

    @nvml_errors
    def enforced_power_limit_watts(self) -> float:
        return float(pynvml.nvmlDeviceGetEnforcedPowerLimit(self._handle)) / 1000.0
