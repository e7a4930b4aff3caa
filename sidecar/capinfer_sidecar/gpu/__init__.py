"""GPU devices behind one interface: NVML (real) and a virtual GPU driven by the power model.

Importing this package does not import NVML: ``capinfer_sidecar.gpu.nvml`` does.
"""

from capinfer_sidecar.gpu.base import GpuDevice
from capinfer_sidecar.gpu.errors import (
    GpuError,
    GpuInvalidArgumentError,
    GpuLostError,
    GpuNotFoundError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuRefusedError,
    GpuUnavailableError,
)

__all__ = [
    "GpuDevice",
    "GpuError",
    "GpuInvalidArgumentError",
    "GpuLostError",
    "GpuNotFoundError",
    "GpuNotSupportedError",
    "GpuPermissionError",
    "GpuRefusedError",
    "GpuUnavailableError",
]
