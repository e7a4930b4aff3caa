"""This pod's status entry: what the loop knows, and what keeps it from following the spec."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from test_metrics import SNAPSHOT

from capinfer_sidecar.status import pod_status_entry

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_healthy_entry_has_no_problem_fields() -> None:
    entry = pod_status_entry("pod-a", ["GPU-1"], SNAPSHOT, NOW)
    assert entry["capWatts"] == 250.0 and entry["batchSize"] == 32
    assert entry["lastUpdate"] == "2026-01-02T03:04:05Z"
    for absent in ("failedTask", "problem", "message", "quarantinedBatchSizes"):
        assert absent not in entry


def test_a_failing_task_and_quarantined_sizes_are_reported() -> None:
    snapshot = replace(SNAPSHOT, quarantined_batch_sizes=(64,), degraded="GPU lost: x")
    entry = pod_status_entry(
        "pod-a", ["GPU-1"], snapshot, NOW,
        failed_task="control-loop", problem="control-loop keeps failing (3 times in a row): x",
    )  # fmt: skip
    assert entry["failedTask"] == "control-loop"
    assert entry["problem"].startswith("control-loop keeps failing")
    assert entry["quarantinedBatchSizes"] == [64]
    assert entry["message"] == "GPU lost: x"


def test_without_a_sample_only_the_problem_is_reported() -> None:
    entry = pod_status_entry("pod-a", [], None, NOW, failed_task="control-loop", problem="p")
    assert entry == {
        "name": "pod-a",
        "gpus": [],
        "lastUpdate": "2026-01-02T03:04:05Z",
        "failedTask": "control-loop",
        "problem": "p",
    }


def test_p99_the_slo_and_its_misses_are_reported() -> None:
    snapshot = replace(
        SNAPSHOT, p99_latency_ms=61.234, latency_slo_ms=50.0, slo_misses=3,
        seconds_over_slo=12.34, slo_batch_ceiling=16, slo_unmet="the cap wins",
    )  # fmt: skip
    entry = pod_status_entry("pod-a", ["GPU-1"], snapshot)
    assert entry["p99LatencyMs"] == 61.23 and entry["latencySLOMs"] == 50.0
    assert entry["sloMisses"] == 3 and entry["secondsOverSLO"] == 12.3
    assert entry["sloBatchCeiling"] == 16 and entry["sloMessage"] == "the cap wins"
    plain = pod_status_entry("pod-a", ["GPU-1"], SNAPSHOT)
    assert not {"p99LatencyMs", "latencySLOMs", "sloMisses", "sloMessage"} & set(plain)
