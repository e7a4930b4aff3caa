"""The NVML device with ``pynvml``'s functions patched (autospec): no GPU needed.

Constants and error classes stay the real ``pynvml`` ones, so error codes map exactly as
they would on a GPU node.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from capinfer_node_agent.nvml import NvmlControls
from capinfer_sidecar.gpu import (
    GpuError,
    GpuInvalidArgumentError,
    GpuLostError,
    GpuNotFoundError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuRefusedError,
    GpuUnavailableError,
)
from capinfer_sidecar.gpu.nvml import NvmlSession, nvml_is_available

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import pynvml

NVML_FUNCTIONS = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetSupportedMemoryClocks",
    "nvmlDeviceGetSupportedGraphicsClocks",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceSetGpuLockedClocks",
    "nvmlDeviceResetGpuLockedClocks",
    "nvmlDeviceGetPowerManagementLimitConstraints",
    "nvmlDeviceGetPowerManagementDefaultLimit",
    "nvmlDeviceSetPowerManagementLimit",
)


@dataclass
class FakeGpu:
    uuid: str
    name: str
    instant_mw: int
    average_mw: int
    energy_mj: int
    instant_return: int = pynvml.NVML_SUCCESS
    graphics_clocks_mhz: dict[int, list[int]] = field(default_factory=dict)


def instant_power_field(gpu: FakeGpu) -> Any:
    values = (pynvml.c_nvmlFieldValue_t * 1)()
    values[0].fieldId = pynvml.NVML_FI_DEV_POWER_INSTANT
    values[0].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    values[0].nvmlReturn = gpu.instant_return
    values[0].value.uiVal = gpu.instant_mw
    return values


H100_A = FakeGpu(
    "GPU-aaaa", "NVIDIA H100 80GB HBM3", 312_000, 290_500, 9_000_000,
    graphics_clocks_mhz={2619: [1980, 1965, 345, 1980, 210], 1593: [1410, 210]},
)  # fmt: skip
H100_B = FakeGpu("GPU-bbbb", "NVIDIA H100 80GB HBM3", 141_000, 150_000, 4_500_500)


@pytest.fixture
def nvml() -> Iterator[SimpleNamespace]:
    """pynvml's functions, autospecced, over a node with two GPUs (handles are the fakes)."""
    gpus = {gpu.uuid: gpu for gpu in (H100_A, H100_B)}
    with contextlib.ExitStack() as stack:
        fake = SimpleNamespace(
            **{
                name: stack.enter_context(mock.patch.object(pynvml, name, autospec=True))
                for name in NVML_FUNCTIONS
            }
        )

        def by_uuid(uuid: str) -> FakeGpu:
            if uuid not in gpus:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            return gpus[uuid]

        fake.nvmlDeviceGetCount.return_value = len(gpus)
        fake.nvmlDeviceGetHandleByIndex.side_effect = lambda index: list(gpus.values())[index]
        fake.nvmlDeviceGetHandleByUUID.side_effect = by_uuid
        fake.nvmlDeviceGetUUID.side_effect = lambda gpu: gpu.uuid
        fake.nvmlDeviceGetName.side_effect = lambda gpu: gpu.name
        fake.nvmlDeviceGetFieldValues.side_effect = lambda gpu, _ids: instant_power_field(gpu)
        fake.nvmlDeviceGetPowerUsage.side_effect = lambda gpu: gpu.average_mw
        fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = lambda gpu: gpu.energy_mj
        fake.nvmlDeviceGetSupportedMemoryClocks.side_effect = lambda gpu: list(
            gpu.graphics_clocks_mhz
        )
        fake.nvmlDeviceGetSupportedGraphicsClocks.side_effect = lambda gpu, memory_mhz: (
            gpu.graphics_clocks_mhz[memory_mhz]
        )
        yield fake


def test_gpus_are_picked_by_uuid_in_the_order_given(nvml: SimpleNamespace) -> None:
    with NvmlSession() as session:
        second, first = session.gpus(["GPU-bbbb", "GPU-aaaa"])
    assert (second.uuid, first.uuid) == ("GPU-bbbb", "GPU-aaaa")
    assert second.name == "NVIDIA H100 80GB HBM3"
    assert second.power_watts() == pytest.approx(141.0)
    assert first.power_watts() == pytest.approx(312.0)
    nvml.nvmlInit.assert_called_once_with()
    nvml.nvmlShutdown.assert_called_once_with()


def test_an_unknown_uuid_names_the_visible_gpus(nvml: SimpleNamespace) -> None:
    with NvmlSession() as session, pytest.raises(GpuNotFoundError) as raised:
        session.gpus(["GPU-aaaa", "GPU-zzzz"])
    message = str(raised.value)
    assert "GPU-zzzz" in message
    assert "GPU-aaaa, GPU-bbbb" in message
    assert raised.value.code == pynvml.NVML_ERROR_NOT_FOUND


def test_readings_are_converted_to_base_units(nvml: SimpleNamespace) -> None:
    nvml.nvmlDeviceGetClockInfo.return_value = 1755
    nvml.nvmlDeviceGetEnforcedPowerLimit.return_value = 700_000
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-aaaa"])
        assert gpu.average_power_watts() == pytest.approx(290.5)
        assert gpu.energy_joules() == pytest.approx(9000.0)
        assert gpu.sm_clock_mhz() == 1755
        assert gpu.power_limit_watts() == pytest.approx(700.0)
    nvml.nvmlDeviceGetClockInfo.assert_called_once_with(H100_A, pynvml.NVML_CLOCK_SM)


def test_utilization_and_memory_are_read_from_the_chosen_gpu(nvml: SimpleNamespace) -> None:
    nvml.nvmlDeviceGetUtilizationRates.return_value = SimpleNamespace(gpu=87, memory=40)
    nvml.nvmlDeviceGetMemoryInfo.return_value = SimpleNamespace(
        total=80 * 2**30, free=70 * 2**30, used=10 * 2**30
    )
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-bbbb"])
        assert gpu.sm_utilization_percent() == pytest.approx(87.0)
        assert gpu.memory_used_bytes() == 10 * 2**30
    nvml.nvmlDeviceGetUtilizationRates.assert_called_once_with(H100_B)
    nvml.nvmlDeviceGetMemoryInfo.assert_called_once_with(H100_B)


def test_utilization_unsupported_is_a_typed_error(nvml: SimpleNamespace) -> None:
    nvml.nvmlDeviceGetUtilizationRates.side_effect = pynvml.NVMLError(
        pynvml.NVML_ERROR_NOT_SUPPORTED
    )
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-aaaa"])
        with pytest.raises(GpuNotSupportedError):
            gpu.sm_utilization_percent()


def test_supported_clocks_are_those_at_the_highest_memory_clock(nvml: SimpleNamespace) -> None:
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-aaaa"])
        assert gpu.supported_sm_clocks_mhz() == (210, 345, 1965, 1980)
    nvml.nvmlDeviceGetSupportedGraphicsClocks.assert_called_once_with(H100_A, 2619)


def test_instant_power_falls_back_to_power_usage_once_unsupported(
    nvml: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    older = FakeGpu(
        "GPU-aaaa", "NVIDIA A100", 0, 222_000, 0, instant_return=pynvml.NVML_ERROR_NOT_SUPPORTED
    )
    nvml.nvmlDeviceGetHandleByUUID.side_effect = lambda uuid: older
    with NvmlSession() as session, caplog.at_level(logging.INFO):
        (gpu,) = session.gpus(["GPU-aaaa"])
        assert gpu.power_watts() == pytest.approx(222.0)
        assert gpu.power_watts() == pytest.approx(222.0)
    # The field is asked once; after NOT_SUPPORTED the GPU is read by its power usage.
    assert nvml.nvmlDeviceGetFieldValues.call_count == 1
    assert "no instant power reading" in caplog.text


def test_a_driver_without_the_field_call_falls_back_too(nvml: SimpleNamespace) -> None:
    nvml.nvmlDeviceGetFieldValues.side_effect = pynvml.NVMLError(
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    )
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-bbbb"])
        assert gpu.power_watts() == pytest.approx(150.0)


def test_the_sidecars_devices_have_no_privileged_knob(nvml: SimpleNamespace) -> None:
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-aaaa"])
    assert not any(name.startswith(("set_", "reset_")) for name in dir(gpu))


def test_no_permission_on_clock_control_is_a_typed_refusal(nvml: SimpleNamespace) -> None:
    nvml.nvmlDeviceSetGpuLockedClocks.side_effect = pynvml.NVMLError(
        pynvml.NVML_ERROR_NO_PERMISSION
    )
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-aaaa"])
        with pytest.raises(GpuPermissionError) as raised:
            NvmlControls(gpu).set_locked_sm_clock_mhz(1410)
    assert isinstance(raised.value, GpuRefusedError)
    assert isinstance(raised.value.__cause__, pynvml.NVMLError_NoPermission)
    assert "set_locked_sm_clock_mhz" in str(raised.value)
    nvml.nvmlDeviceSetGpuLockedClocks.assert_called_once_with(H100_A, 1410, 1410)


def test_clocks_are_locked_and_reset_on_the_chosen_gpu(nvml: SimpleNamespace) -> None:
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-bbbb"])
        controls = NvmlControls(gpu)
        controls.set_locked_sm_clock_mhz(1200)
        controls.reset_sm_clock()
    nvml.nvmlDeviceSetGpuLockedClocks.assert_called_once_with(H100_B, 1200, 1200)
    nvml.nvmlDeviceResetGpuLockedClocks.assert_called_once_with(H100_B)


def test_the_board_power_limit_is_set_in_milliwatts_and_read_back(nvml: SimpleNamespace) -> None:
    nvml.nvmlDeviceGetPowerManagementLimitConstraints.return_value = (200_000, 700_000)
    nvml.nvmlDeviceGetPowerManagementDefaultLimit.return_value = 700_000
    nvml.nvmlDeviceGetEnforcedPowerLimit.return_value = 350_000
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-aaaa"])
        controls = NvmlControls(gpu)
        limits = controls.power_limit_range()
        controls.set_power_limit_watts(limits.clamp(350.4))
        enforced = controls.enforced_power_limit_watts()
    assert (limits.min_watts, limits.max_watts, limits.default_watts) == (200.0, 700.0, 700.0)
    assert limits.clamp(120.0) == 200.0 and limits.clamp(900.0) == 700.0
    nvml.nvmlDeviceSetPowerManagementLimit.assert_called_once_with(H100_A, 350_400)
    assert enforced == 350.0


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (pynvml.NVML_ERROR_NO_PERMISSION, GpuPermissionError),
        (pynvml.NVML_ERROR_NOT_SUPPORTED, GpuNotSupportedError),
        (pynvml.NVML_ERROR_GPU_IS_LOST, GpuLostError),
        (pynvml.NVML_ERROR_INVALID_ARGUMENT, GpuInvalidArgumentError),
        (pynvml.NVML_ERROR_UNINITIALIZED, GpuUnavailableError),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, GpuUnavailableError),
        (pynvml.NVML_ERROR_TIMEOUT, GpuError),
    ],
)
def test_nvml_error_codes_become_typed_errors(
    nvml: SimpleNamespace, code: int, error_type: type[GpuError]
) -> None:
    nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = pynvml.NVMLError(code)
    with NvmlSession() as session:
        (gpu,) = session.gpus(["GPU-aaaa"])
        with pytest.raises(GpuError) as raised:
            gpu.energy_joules()
    assert type(raised.value) is error_type
    assert raised.value.code == code
    assert isinstance(raised.value.__cause__, pynvml.NVMLError)


def test_nvml_is_available_logs_and_says_no_instead_of_raising(
    nvml: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    nvml.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with caplog.at_level(logging.WARNING):
        assert nvml_is_available() is False
    assert "NVML is not available" in caplog.text
    nvml.nvmlShutdown.assert_not_called()


def test_nvml_is_available_gives_back_its_initialisation(nvml: SimpleNamespace) -> None:
    assert nvml_is_available() is True
    nvml.nvmlShutdown.assert_called_once_with()


def test_a_session_without_nvml_raises_a_typed_error(nvml: SimpleNamespace) -> None:
    nvml.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(GpuUnavailableError), NvmlSession():
        pass


def test_the_real_nvml_here_agrees_with_nvml_is_available() -> None:
    """Unpatched: on this machine NVML either works or fails with a typed error."""
    if nvml_is_available():
        with NvmlSession() as session:
            assert all(uuid.startswith(("GPU-", "MIG-")) for uuid in session.uuids())
    else:
        with pytest.raises(GpuUnavailableError), NvmlSession():
            pass
