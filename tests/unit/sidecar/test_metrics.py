"""The sidecar's Prometheus metrics, rendered from a loop snapshot into a fresh registry."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capinfer_sidecar.follower import SpecStatus
from capinfer_sidecar.loop import LoopSnapshot
from capinfer_sidecar.metrics import SnapshotCollector, SupervisionCollector
from capinfer_sidecar.supervisor import Supervisor

SNAPSHOT = LoopSnapshot(
    now_s=100.0,
    cap_watts=250.0,
    power_watts=243.5,
    mean_power_watts=231.0,
    energy_joules=12_345.0,
    batch_size=32,
    requested_batch_size=64,
    sm_clock_mhz=1410,
    inferences_per_second=880.0,
    seconds_over_cap=1.5,
    violations=3,
    reloads=7,
    reload_failures=1,
    policy="adaptive",
    policy_state="settled",
    reason="inside the band",
    clock_control=True,
    degraded=None,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_nothing_is_exported_before_the_first_sample(registry: CollectorRegistry) -> None:
    SnapshotCollector().register(registry)
    assert generate_latest(registry) == b""


def test_readings_and_knobs_are_exported_in_base_units(registry: CollectorRegistry) -> None:
    SnapshotCollector({"gpu_uuid": "GPU-1"}).register(registry).update(SNAPSHOT)
    labels = {"gpu_uuid": "GPU-1"}
    value = registry.get_sample_value
    assert value("capinfer_gpu_power_watts", labels) == 243.5
    assert value("capinfer_gpu_mean_power_watts", labels) == 231.0
    assert value("capinfer_power_cap_watts", labels) == 250.0
    assert value("capinfer_batch_size", labels) == 32
    assert value("capinfer_requested_batch_size", labels) == 64
    assert value("capinfer_sm_clock_mhz", labels) == 1410
    assert value("capinfer_inferences_per_second", labels) == 880.0
    assert value("capinfer_clock_control", labels) == 1
    assert value("capinfer_degraded", {**labels, "reason": ""}) == 0
    policy = {**labels, "policy": "adaptive", "state": "settled"}
    assert value("capinfer_policy_info", policy) == 1


def test_totals_are_counters(registry: CollectorRegistry) -> None:
    SnapshotCollector().register(registry).update(SNAPSHOT)
    value = registry.get_sample_value
    assert value("capinfer_gpu_energy_joules_total") == 12_345.0
    assert value("capinfer_over_cap_seconds_total") == 1.5
    assert value("capinfer_cap_violations_total") == 3
    assert value("capinfer_reloads_total", {"result": "ok"}) == 7
    assert value("capinfer_reloads_total", {"result": "failed"}) == 1
    families = {
        family.name: family.type
        for family in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert families["capinfer_gpu_energy_joules"] == "counter"
    assert families["capinfer_gpu_power_watts"] == "gauge"


def test_the_latest_snapshot_wins(registry: CollectorRegistry) -> None:
    collector = SnapshotCollector().register(registry)
    collector.update(SNAPSHOT)
    collector.update(replace(SNAPSHOT, cap_watts=180.0, violations=4))
    assert registry.get_sample_value("capinfer_power_cap_watts") == 180.0
    assert registry.get_sample_value("capinfer_cap_violations_total") == 4


def test_unknown_readings_and_free_clocks_are_left_out(registry: CollectorRegistry) -> None:
    degraded = replace(
        SNAPSHOT,
        power_watts=math.nan,
        energy_joules=math.nan,
        sm_clock_mhz=None,
        clock_control=False,
        degraded="power readings stopped",
    )
    SnapshotCollector().register(registry).update(degraded)
    value = registry.get_sample_value
    assert value("capinfer_gpu_power_watts") is None
    assert value("capinfer_gpu_energy_joules_total") is None
    assert value("capinfer_sm_clock_mhz") is None
    assert value("capinfer_clock_control") == 0
    assert value("capinfer_degraded", {"reason": "power readings stopped"}) == 1


def test_quarantined_batch_sizes_are_one_series_each(registry: CollectorRegistry) -> None:
    collector = SnapshotCollector().register(registry)
    collector.update(replace(SNAPSHOT, quarantined_batch_sizes=(32, 64)))
    value = registry.get_sample_value
    assert value("capinfer_reload_quarantined", {"batch_size": "32"}) == 1
    assert value("capinfer_reload_quarantined", {"batch_size": "64"}) == 1
    collector.update(SNAPSHOT)
    assert value("capinfer_reload_quarantined", {"batch_size": "32"}) is None


def test_an_infeasible_cap_is_a_gauge(registry: CollectorRegistry) -> None:
    collector = SnapshotCollector().register(registry)
    collector.update(SNAPSHOT)
    assert registry.get_sample_value("capinfer_cap_infeasible") == 0
    collector.update(replace(SNAPSHOT, cap_infeasible=True, policy_state="cap-infeasible"))
    assert registry.get_sample_value("capinfer_cap_infeasible") == 1


async def test_task_restarts_failing_tasks_and_rejected_specs(
    registry: CollectorRegistry,
) -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    supervisor = Supervisor(monotonic=lambda: now[0], sleep=sleep, failing_after=2)
    spec = SpecStatus()
    SupervisionCollector(supervisor, spec, {"pod": "p"}).register(registry)
    attempts = 0

    async def fails_twice() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise OSError("NVML timeout")

    await supervisor.supervise("control-loop", fails_twice)
    value = registry.get_sample_value
    task = {"pod": "p", "task": "control-loop"}
    assert value("capinfer_task_restarts_total", task) == 2
    assert value("capinfer_task_failing", task) == 0  # it finished: no longer failing
    assert value("capinfer_spec_invalid", {"pod": "p"}) == 0
    running = asyncio.Event()

    async def fails_then_hangs() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 5:
            raise OSError("API server unreachable")
        running.set()
        await asyncio.Event().wait()

    status_task = asyncio.create_task(supervisor.supervise("status", fails_then_hangs))
    await running.wait()
    assert value("capinfer_task_failing", {"pod": "p", "task": "status"}) == 1
    status_task.cancel()
    spec.rejected_total, spec.problem = 3, "spec.power.policy: unknown policy 'Adptive'"
    assert value("capinfer_spec_rejected_total", {"pod": "p"}) == 3
    assert value("capinfer_spec_invalid", {"pod": "p"}) == 1


def test_p99_against_the_slo_is_exported(registry: CollectorRegistry) -> None:
    unmet = "p99 80.0 ms is over the SLO 50 ms: the cap holds the SM clock at 600 MHz"
    SnapshotCollector({"gpu_uuid": "GPU-1"}).register(registry).update(
        replace(
            SNAPSHOT, p99_latency_ms=80.0, latency_slo_ms=50.0, slo_misses=2,
            seconds_over_slo=4.5, slo_batch_ceiling=8, slo_unmet=unmet,
        )
    )  # fmt: skip
    labels = {"gpu_uuid": "GPU-1"}
    value = registry.get_sample_value
    assert value("capinfer_request_p99_latency_seconds", labels) == pytest.approx(0.08)
    assert value("capinfer_latency_slo_p99_seconds", labels) == pytest.approx(0.05)
    assert value("capinfer_latency_slo_batch_ceiling", labels) == 8
    assert value("capinfer_latency_slo_misses_total", labels) == 2
    assert value("capinfer_over_latency_slo_seconds_total", labels) == 4.5
    assert value("capinfer_latency_slo_unmet", {**labels, "reason": unmet}) == 1


def test_without_an_slo_no_slo_series_are_exported(registry: CollectorRegistry) -> None:
    SnapshotCollector().register(registry).update(SNAPSHOT)
    names = {m.name for m in registry.collect()}
    assert not {n for n in names if "slo" in n}
    assert "capinfer_request_p99_latency_seconds" not in names
