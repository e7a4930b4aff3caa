"""The virtual GPU's injected faults raise what the NVML device raises, for as long as asked."""

from __future__ import annotations

import pytest

from capinfer_sidecar.gpu.errors import GpuError, GpuLostError
from capinfer_sidecar.gpu.nvml import NVML_ERROR_CODES
from capinfer_sidecar.gpu.virtual import VirtualGpuDevice, _BatchReportProtocol
from capinfer_sidecar.sim.profiles import load_profile_set


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def device(clock: Clock) -> VirtualGpuDevice:
    profile = load_profile_set("p40").workload("Res50", "imagenet")
    return VirtualGpuDevice(profile, clock)


def test_a_transient_fault_fails_readings_for_its_duration() -> None:
    clock = Clock()
    gpu = device(clock)
    gpu.inject_fault("unknown", 0.5)
    with pytest.raises(GpuError) as raised:
        gpu.power_watts()
    assert type(raised.value) is GpuError
    assert raised.value.code == NVML_ERROR_CODES["unknown"] == 999
    with pytest.raises(GpuError):
        gpu.energy_joules()
    clock.now += 0.5
    assert gpu.power_watts() > 0


def test_a_lost_gpu_fails_every_reading_until_it_is_cleared() -> None:
    clock = Clock()
    gpu = device(clock)
    protocol = _BatchReportProtocol(gpu)
    protocol.datagram_received(b"F gpu_is_lost 60\n", None)
    with pytest.raises(GpuLostError):
        gpu.power_watts()
    with pytest.raises(GpuLostError):
        gpu.sm_clock_mhz()
    protocol.datagram_received(b"F clear 0\n", None)
    assert gpu.power_watts() > 0
    assert protocol.malformed == 0


def test_an_unknown_fault_kind_is_a_malformed_report() -> None:
    gpu = device(Clock())
    protocol = _BatchReportProtocol(gpu)
    protocol.datagram_received(b"F melted 1\n", None)
    assert protocol.malformed == 1
    assert gpu.power_watts() > 0
