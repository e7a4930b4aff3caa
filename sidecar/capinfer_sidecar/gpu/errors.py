"""Typed GPU errors. Each says what the caller can do next; none needs NVML to be caught."""

from __future__ import annotations


class GpuError(Exception):
    """A GPU operation failed. ``code`` is the driver's error code, when there is one."""

    def __init__(self, operation: str, detail: str, code: int | None = None) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.detail = detail
        self.code = code


class GpuUnavailableError(GpuError):
    """NVML or the driver cannot be used here (no library, driver not loaded...)."""


class GpuNotFoundError(GpuError):
    """No GPU with that identity."""


class GpuLostError(GpuError):
    """The GPU fell off the bus or needs a reset: its readings cannot be trusted."""


class GpuInvalidArgumentError(GpuError):
    """The GPU rejected a value (a clock it does not support, say)."""


class GpuRefusedError(GpuError):
    """The operation is not possible here, now or later: carry on without it."""


class GpuPermissionError(GpuRefusedError):
    """Not allowed: setting clocks needs root (``SYS_ADMIN`` in a container)."""


class GpuNotSupportedError(GpuRefusedError):
    """This GPU or driver does not support the operation."""
