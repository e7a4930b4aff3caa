"""This pod's entry in ``status.pods[]`` of its PowerCappedInference, built from a snapshot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from capinfer_sidecar.loop import LoopSnapshot


def _watts(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 1)


def pod_status_entry(
    pod_name: str,
    gpu_uuids: Sequence[str],
    snapshot: LoopSnapshot | None,
    now: datetime | None = None,
    *,
    failed_task: str | None = None,
    problem: str | None = None,
    clock_message: str | None = None,
    power_limit_watts: float | None = None,
    backstop_message: str | None = None,
) -> dict[str, Any]:
    """The fields the CRD declares for a pod entry; absent values are left out, not null.

    Without a snapshot (the control loop never sampled) only the name, the GPUs, the time
    and the problem are reported. ``failed_task`` names a supervised task that keeps
    failing; ``problem`` says what keeps the sidecar from following the declared spec (that
    task's error, or a spec it rejected).
    """
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry: dict[str, Any] = {"name": pod_name, "gpus": list(gpu_uuids), "lastUpdate": when}
    if failed_task is not None:
        entry["failedTask"] = failed_task
    if problem is not None:
        entry["problem"] = problem
    if snapshot is None:
        return entry
    entry.update(
        {
            "capWatts": round(snapshot.cap_watts, 1),
            "batchSize": snapshot.batch_size,
            "inferencesPerSecond": round(snapshot.inferences_per_second, 1),
            "secondsOverCap": round(snapshot.seconds_over_cap, 1),
            "reloads": snapshot.reloads,
            "policy": snapshot.policy,
            "policyState": snapshot.policy_state or "unknown",
            "clockControl": snapshot.clock_control,
        }
    )
    power = _watts(snapshot.power_watts)
    if power is not None:
        entry["powerWatts"] = power
    if snapshot.sm_clock_mhz is not None:
        entry["smClockMHz"] = snapshot.sm_clock_mhz
    if snapshot.degraded is not None:
        entry["message"] = snapshot.degraded
    if clock_message is not None and not snapshot.clock_control:
        entry["clockControlMessage"] = clock_message
    if power_limit_watts is not None:
        entry["powerLimitWatts"] = round(power_limit_watts, 1)
    if backstop_message is not None:
        entry["backstopMessage"] = backstop_message
    if snapshot.p99_latency_ms is not None:
        entry["p99LatencyMs"] = round(snapshot.p99_latency_ms, 2)
    if snapshot.latency_slo_ms is not None:
        entry["latencySLOMs"] = snapshot.latency_slo_ms
        entry["sloMisses"] = snapshot.slo_misses
        entry["secondsOverSLO"] = round(snapshot.seconds_over_slo, 1)
    if snapshot.slo_batch_ceiling is not None:
        entry["sloBatchCeiling"] = snapshot.slo_batch_ceiling
    if snapshot.slo_unmet is not None:
        entry["sloMessage"] = snapshot.slo_unmet
    if snapshot.quarantined_batch_sizes:
        entry["quarantinedBatchSizes"] = list(snapshot.quarantined_batch_sizes)
    return entry
