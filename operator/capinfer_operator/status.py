"""Pure status logic: conditions and the aggregates shown by ``kubectl get pci``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Condition = dict[str, Any]


def condition(
    kind: str, status: bool | None, reason: str, message: str, *, generation: int, now: str
) -> Condition:
    return {
        "type": kind,
        "status": "Unknown" if status is None else ("True" if status else "False"),
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now,
    }


def updated_conditions(
    existing: Sequence[Mapping[str, Any]], updates: Sequence[Condition]
) -> list[Condition]:
    """The updates, each keeping its old transition time when its status did not change."""
    old_by_type = {str(c.get("type")): c for c in existing}
    result = []
    for update in updates:
        kept = dict(update)
        old = old_by_type.get(update["type"])
        if old is not None and old.get("status") == update["status"]:
            kept["lastTransitionTime"] = old.get("lastTransitionTime", update["lastTransitionTime"])
        result.append(kept)
    return result


def readiness(
    deployment_status: Mapping[str, Any] | None, desired: int, generation: int, now: str
) -> tuple[dict[str, Any], Condition]:
    """Replica counts from the Deployment and the Ready condition they imply."""
    status = deployment_status or {}
    replicas = int(status.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    counted = f"{ready}/{desired} pods ready"
    if desired == 0:
        ok, reason, message = True, "ScaledToZero", "no replicas requested"
    elif ready >= desired:
        ok, reason, message = True, "PodsReady", counted
    else:
        ok, reason, message = False, "PodsNotReady", counted
    cond = condition("Ready", ok, reason, message, generation=generation, now=now)
    return {"replicas": replicas, "readyReplicas": ready}, cond


def aggregate_pods(
    pods: Sequence[Mapping[str, Any]], cap_watts: float, generation: int, now: str
) -> tuple[dict[str, Any], list[Condition]]:
    """Totals over the sidecars' entries, and the CapMet / ClockControl conditions."""
    if not pods:
        return {}, [
            condition(
                "CapMet",
                None,
                "NoReports",
                "no sidecar has reported yet",
                generation=generation,
                now=now,
            )
        ]
    powers = [float(p["powerWatts"]) for p in pods if "powerWatts" in p]
    batches = [int(p["batchSize"]) for p in pods if "batchSize" in p]
    clocks = [int(p["smClockMHz"]) for p in pods if "smClockMHz" in p]
    fields: dict[str, Any] = {"capWatts": cap_watts}
    if powers:
        fields["powerWatts"] = round(sum(powers), 1)
    if batches:
        fields["batchSize"] = min(batches)
    if clocks:
        fields["smClockMHz"] = min(clocks)
    # A pod counts as over the cap only once its sidecar holds the current cap.
    over = [
        str(p["name"])
        for p in pods
        if "powerWatts" in p and float(p.get("capWatts", cap_watts)) == cap_watts
        and float(p["powerWatts"]) > cap_watts
    ]  # fmt: skip
    if over:
        cap_met = condition(
            "CapMet", False, "OverCap", f"over {cap_watts:g} W: {', '.join(sorted(over))}",
            generation=generation, now=now,
        )  # fmt: skip
    else:
        cap_met = condition(
            "CapMet",
            True,
            "UnderCap",
            f"every pod under {cap_watts:g} W",
            generation=generation,
            now=now,
        )
    refused = [str(p["name"]) for p in pods if p.get("clockControl") is False]
    if refused:
        clock = condition(
            "ClockControl", False, "BatchSizeOnly",
            f"clocks cannot be locked in {', '.join(sorted(refused))}: batch size only",
            generation=generation, now=now,
        )  # fmt: skip
    else:
        clock = condition(
            "ClockControl", True, "Available", "clocks lockable", generation=generation, now=now
        )
    return fields, [cap_met, clock]
