"""Real GPUs through NVML (``pynvml``): readings and typed errors.

Only readings live here: they need no privilege. The ``Set*`` calls (locked clocks, the
board power limit) belong to the node agent (``capinfer_node_agent.nvml``), the one
privileged process on a GPU node; it opens devices through the same :class:`NvmlSession`.

Every NVML call goes through :func:`nvml_errors`, which turns NVML's error codes into the
typed errors of :mod:`capinfer_sidecar.gpu.errors` (``raise … from``), so no caller ever
catches a ``pynvml`` class. GPUs are found by UUID: a pod may hold several, and indices
differ between the sidecar's and Triton's view of the node while UUIDs do not.

NVML must be initialised around the use of these devices: ``with NvmlSession() as nvml:``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from capinfer_sidecar.gpu.base import GpuDevice
from capinfer_sidecar.gpu.errors import (
    GpuError,
    GpuInvalidArgumentError,
    GpuLostError,
    GpuNotFoundError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
)

with warnings.catch_warnings():
    # The 'pynvml' distribution warns that 'nvidia-ml-py' replaces it; the module is the same.
    warnings.simplefilter("ignore", FutureWarning)
    import pynvml

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_ERROR_TYPES: dict[int, type[GpuError]] = {
    pynvml.NVML_ERROR_NO_PERMISSION: GpuPermissionError,
    pynvml.NVML_ERROR_NOT_SUPPORTED: GpuNotSupportedError,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: GpuNotSupportedError,
    pynvml.NVML_ERROR_NOT_FOUND: GpuNotFoundError,
    pynvml.NVML_ERROR_INVALID_ARGUMENT: GpuInvalidArgumentError,
    pynvml.NVML_ERROR_GPU_IS_LOST: GpuLostError,
    pynvml.NVML_ERROR_RESET_REQUIRED: GpuLostError,
    pynvml.NVML_ERROR_UNINITIALIZED: GpuUnavailableError,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: GpuUnavailableError,
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: GpuUnavailableError,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: GpuUnavailableError,
}


def gpu_error_from_nvml(operation: str, error: pynvml.NVMLError) -> GpuError:
    code = int(error.value)
    return _ERROR_TYPES.get(code, GpuError)(operation, str(error), code)


NVML_ERROR_CODES: dict[str, int] = {
    name.removeprefix("NVML_ERROR_").lower(): value
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}
"""NVML's return codes by name: ``unknown``, ``timeout``, ``gpu_is_lost``..."""


def gpu_error_for_code(operation: str, code: int) -> GpuError:
    """The error a call that got NVML return ``code`` raises (the virtual GPU's faults too)."""
    return gpu_error_from_nvml(operation, pynvml.NVMLError(code))


def nvml_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``; an NVML error becomes the matching :class:`GpuError`."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except pynvml.NVMLError as error:
            raise gpu_error_from_nvml(function.__qualname__, error) from error

    return wrapper


def nvml_is_available() -> bool:
    """Whether NVML can be initialised here; says why not in the log instead of raising."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.warning("NVML is not available (%s): no real GPU can be read", error)
        return False
    pynvml.nvmlShutdown()  # nvmlInit is reference-counted: give this one back
    return True


_FIELD_VALUE_ATTRIBUTES = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def _field_number(field: Any) -> float:
    """The number in an ``nvmlFieldValue_t``; its own return code raises like a call."""
    if field.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(field.nvmlReturn)
    return float(getattr(field.value, _FIELD_VALUE_ATTRIBUTES[field.valueType]))


class NvmlGpu(GpuDevice):
    """One GPU through NVML. Build it with :meth:`NvmlSession.gpus`."""

    def __init__(self, handle: Any, uuid: str, name: str) -> None:
        self._handle = handle
        self._uuid = uuid
        self._name = name
        self._instant_power = True
        """False once the GPU said it has no instant-power field: use the average."""

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def name(self) -> str:
        return self._name

    def power_watts(self) -> float:
        if self._instant_power:
            try:
                return self._instant_power_watts()
            except GpuNotSupportedError as error:
                self._instant_power = False
                log.info(
                    "GPU %s has no instant power reading (%s): using NVML's power usage",
                    self._uuid, error,
                )  # fmt: skip
        return self.average_power_watts()

    @nvml_errors
    def _instant_power_watts(self) -> float:
        (field,) = pynvml.nvmlDeviceGetFieldValues(self._handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])
        return _field_number(field) / 1000.0

    @nvml_errors
    def average_power_watts(self) -> float:
        return float(pynvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0

    @nvml_errors
    def energy_joules(self) -> float:
        return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1000.0

    @nvml_errors
    def sm_utilization_percent(self) -> float:
        """Percent of the last sample period (1/6 s to 1 s) in which a kernel was running.

        Not part of :class:`GpuDevice`: characterization reads it, the control loop does not.
        """
        return float(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    @nvml_errors
    def memory_used_bytes(self) -> int:
        """Device memory in use by every process on the GPU."""
        return int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    @nvml_errors
    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        # Graphics clocks are listed per memory clock; the highest memory clock is the one
        # an inference server runs at.
        memory_mhz = max(pynvml.nvmlDeviceGetSupportedMemoryClocks(self._handle))
        clocks = pynvml.nvmlDeviceGetSupportedGraphicsClocks(self._handle, memory_mhz)
        return tuple(sorted({int(clock) for clock in clocks}))

    @nvml_errors
    def sm_clock_mhz(self) -> int:
        return int(pynvml.nvmlDeviceGetClockInfo(self._handle, pynvml.NVML_CLOCK_SM))

    @nvml_errors
    def power_limit_watts(self) -> float:
        return float(pynvml.nvmlDeviceGetEnforcedPowerLimit(self._handle)) / 1000.0

    @property
    def handle(self) -> Any:
        """NVML's handle of this GPU, for the node agent's privileged calls."""
        return self._handle


class NvmlSession:
    """NVML initialised for the life of the ``with`` block; finds GPUs by UUID."""

    def __enter__(self) -> NvmlSession:
        nvml_errors(pynvml.nvmlInit)()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        nvml_errors(pynvml.nvmlShutdown)()

    @nvml_errors
    def uuids(self) -> list[str]:
        """The UUIDs of every GPU this process can see, in NVML's index order."""
        count = pynvml.nvmlDeviceGetCount()
        return [
            str(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index)))
            for index in range(count)
        ]

    def gpus(self, uuids: Sequence[str]) -> list[NvmlGpu]:
        """The GPUs with these UUIDs, in the order given; :class:`GpuNotFoundError` names
        the first one that is not visible (with what is)."""
        if not uuids:
            raise ValueError("no GPU UUID given")
        return [self._gpu(uuid) for uuid in uuids]

    def _gpu(self, uuid: str) -> NvmlGpu:
        try:
            return self._open(uuid)
        except (GpuNotFoundError, GpuInvalidArgumentError) as error:
            raise GpuNotFoundError(
                "NvmlSession.gpus",
                f"no GPU {uuid} among those visible here: {', '.join(self.uuids()) or 'none'}",
                error.code,
            ) from error

    @nvml_errors
    def _open(self, uuid: str) -> NvmlGpu:
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        return NvmlGpu(handle, uuid, str(pynvml.nvmlDeviceGetName(handle)))
