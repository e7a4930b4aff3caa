"""The virtual GPU: power follows the batches it is told about; NVML-style readings."""

from __future__ import annotations

import pytest

from capinfer_sidecar.sim.gpu_model import VirtualGpu
from capinfer_sidecar.sim.profiles import WorkloadProfile, load_profile_set

BATCH = 64


@pytest.fixture(scope="module")
def workload() -> WorkloadProfile:
    return load_profile_set("p40").workload("Res50", "caltech")


def busy_bounds(workload: WorkloadProfile, clock: int | None = None) -> tuple[float, float]:
    nominal = workload.busy_power_watts(BATCH, clock)
    jitter = workload.gpu.power_jitter_fraction
    return nominal * (1 - jitter), nominal * (1 + jitter)


def test_idle_is_the_loaded_floor_or_the_bare_floor(workload: WorkloadProfile) -> None:
    gpu = VirtualGpu(workload)
    assert gpu.true_power_watts(1.0) == workload.gpu.loaded_idle_watts
    gpu.set_model_loaded(False, 2.0)
    assert gpu.true_power_watts(3.0) == workload.gpu.idle_floor_watts


def test_power_spikes_while_a_batch_executes_and_drops_between(workload: WorkloadProfile) -> None:
    gpu = VirtualGpu(workload, seed=3)
    gpu.record_batch(BATCH, 1.0, 1.2)
    low, high = busy_bounds(workload)
    assert low <= gpu.true_power_watts(1.1) <= high
    assert gpu.true_power_watts(1.3) == workload.gpu.loaded_idle_watts
    assert gpu.peak_power_watts(0.9, 1.5) == gpu.true_power_watts(1.1)
    assert gpu.peak_power_watts(1.25, 1.5) == workload.gpu.loaded_idle_watts
    assert (gpu.batches, gpu.inferences) == (1, BATCH)


def test_an_open_batch_counts_before_it_is_finished(workload: WorkloadProfile) -> None:
    gpu = VirtualGpu(workload)
    gpu.start_batch(BATCH, 1.0)
    assert gpu.executing
    low, high = busy_bounds(workload)
    assert low <= gpu.true_power_watts(1.05) <= high  # read while it runs: busy, not idle
    assert gpu.peak_power_watts(0.9, 1.05) == gpu.true_power_watts(1.05)
    assert gpu.energy_joules(1.05) > workload.gpu.loaded_idle_watts * 1.05
    with pytest.raises(RuntimeError, match="has not finished"):
        gpu.start_batch(BATCH, 1.01)
    gpu.finish_batch(1.1)
    assert not gpu.executing


def test_energy_is_the_integral_of_power_and_never_decreases(workload: WorkloadProfile) -> None:
    gpu = VirtualGpu(workload, seed=5)
    idle = workload.gpu.loaded_idle_watts
    readings = []
    for step in range(10):
        start = step * 0.25
        gpu.record_batch(BATCH, start + 0.05, start + 0.2)
        readings.append(gpu.energy_joules(start + 0.25))
    assert readings == sorted(readings)
    low, high = busy_bounds(workload)
    busy_s, idle_s = 10 * 0.15, 10 * 0.10
    assert busy_s * low + idle_s * idle <= readings[-1] <= busy_s * high + idle_s * idle
    assert gpu.energy_millijoules(2.5) == int(readings[-1] * 1000)


def test_a_batch_reported_late_corrects_the_energy(workload: WorkloadProfile) -> None:
    prompt, late = VirtualGpu(workload, seed=1), VirtualGpu(workload, seed=1)
    prompt.record_batch(BATCH, 1.0, 1.5)
    early_reading = late.energy_joules(1.2)  # taken while the batch ran, before it was reported
    late.record_batch(BATCH, 1.0, 1.5)
    assert late.energy_joules(2.0) == pytest.approx(prompt.energy_joules(2.0))
    assert late.energy_joules(2.0) > early_reading


def test_the_one_second_average_lags_instant_power(workload: WorkloadProfile) -> None:
    gpu = VirtualGpu(workload)
    idle = workload.gpu.loaded_idle_watts
    gpu.record_batch(BATCH, 5.0, 7.0)  # continuously busy from t = 5 s
    instant = gpu.true_power_watts(5.01)
    assert gpu.instant_power_watts(5.01) == pytest.approx(instant, abs=5)
    halfway = gpu.average_power_watts(5.5)
    assert halfway == pytest.approx((idle + instant) / 2, abs=2)
    assert gpu.average_power_watts(6.5) == pytest.approx(instant, abs=2)


def test_a_clock_change_takes_effect_after_a_few_milliseconds(workload: WorkloadProfile) -> None:
    gpu = VirtualGpu(workload, clock_mhz=1531)
    effective = gpu.set_clock(544, 1.0)
    assert effective == pytest.approx(1.0 + workload.gpu.clock_change_s)
    assert gpu.clock_mhz(1.001) == 1531
    assert gpu.clock_mhz(effective) == 544
    gpu.record_batch(BATCH, 0.9, 1.1)  # the batch straddles the change
    before, after = gpu.true_power_watts(0.95), gpu.true_power_watts(1.05)
    assert after < before
    assert after / before == pytest.approx(
        workload.busy_power_watts(BATCH, 544) / workload.busy_power_watts(BATCH, 1531)
    )
    gpu.set_clock(None, 2.0)
    assert gpu.clock_mhz(3.0) is None
    assert gpu.effective_clock_mhz(3.0, BATCH) == workload.gpu.default_clock_mhz


def test_readings_are_noisy_but_seeded(workload: WorkloadProfile) -> None:
    def readings(seed: int) -> list[float]:
        gpu = VirtualGpu(workload, seed=seed)
        gpu.record_batch(BATCH, 0.0, 1.0)
        return [gpu.instant_power_watts(0.1 * i) for i in range(10)]

    assert readings(7) == readings(7)
    assert readings(7) != readings(8)
    truth = VirtualGpu(workload, seed=7)
    truth.record_batch(BATCH, 0.0, 1.0)
    assert len(set(readings(7))) > 1  # noise on a constant truth
    assert max(abs(r - truth.true_power_watts(0.5)) for r in readings(7)) < 6 * (
        workload.gpu.power_noise_watts
    )
