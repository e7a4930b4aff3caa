"""Pure status logic: conditions and the aggregates shown by ``kubectl get pci``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Condition = dict[str, Any]

STALE_REPORT_S = 60.0
"""A pod entry not refreshed for this long belongs to a pod that is gone (sidecars write
every few seconds and remove their entry when they stop; a killed pod cannot)."""

NUMBERS_REFRESH_S = 2.0
"""Least time between two writes of the aggregate numbers of one object: the sidecars
write every few seconds each, and every write of ours wakes every watcher again."""


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


def without_time(condition: Mapping[str, Any]) -> dict[str, Any]:
    """A condition without its transition time: what tells two writes apart."""
    return {k: v for k, v in condition.items() if k != "lastTransitionTime"}


def conditions_already_set(
    updated: Sequence[Mapping[str, Any]], existing: Sequence[Mapping[str, Any]]
) -> bool:
    """Every updated condition is already there, transition time aside."""
    present = [without_time(c) for c in existing]
    return all(without_time(c) in present for c in updated)


# -- replicas ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeploymentState:
    """What the Deployment controller reports, reduced to what readiness needs."""

    replicas: int
    ready_replicas: int
    updated_replicas: int
    observed: bool
    """The controller has seen the Deployment's latest spec (its counts are current)."""
    generation: int = 0
    observed_generation: int = 0

    @classmethod
    def from_deployment(cls, deployment: Mapping[str, Any]) -> DeploymentState:
        """From a Deployment as the API serves it (camelCase keys)."""
        status = deployment.get("status") or {}
        generation = int((deployment.get("metadata") or {}).get("generation") or 0)
        observed_generation = int(status.get("observedGeneration") or 0)
        return cls(
            replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            observed=observed_generation >= generation,
            generation=generation,
            observed_generation=observed_generation,
        )

    def later_than(self, other: DeploymentState) -> bool:
        """Certainly a later state of the same Deployment: a newer spec, or a newer spec seen
        by its controller. (Counts alone cannot order two states.)"""
        return (self.generation, self.observed_generation) > (
            other.generation,
            other.observed_generation,
        )


def readiness(
    deployment: DeploymentState | None, desired: int, generation: int, now: str
) -> tuple[dict[str, Any], Condition]:
    """Replica counts from the Deployment and the Ready condition they imply."""
    if deployment is None:
        cond = condition(
            "Ready", False, "NoDeployment", "the Deployment does not exist yet",
            generation=generation, now=now,
        )  # fmt: skip
        return {"replicas": 0, "readyReplicas": 0}, cond
    counts = {"replicas": deployment.replicas, "readyReplicas": deployment.ready_replicas}
    ready = f"{deployment.ready_replicas}/{desired} pods ready"
    rolling = not deployment.observed or deployment.updated_replicas < desired
    leftovers = deployment.replicas > deployment.updated_replicas
    if desired == 0 and deployment.replicas == 0:
        ok, reason, message = True, "ScaledToZero", "no replicas requested"
    elif rolling or leftovers:
        updated = f"{deployment.updated_replicas}/{desired} pods updated"
        ok, reason, message = False, "RollingOut", f"{updated}, {ready}"
    elif deployment.replicas > desired:
        # Surplus pods of the current template still serve while they go.
        ok, reason = True, "ScalingDown"
        message = f"{deployment.replicas} pods, scaling down to {desired}"
    elif deployment.ready_replicas >= desired:
        ok, reason, message = True, "PodsReady", ready
    else:
        ok, reason, message = False, "PodsNotReady", ready
    return counts, condition("Ready", ok, reason, message, generation=generation, now=now)


# -- the sidecars' reports --------------------------------------------------------------------
def _age_s(entry: Mapping[str, Any], now: datetime) -> float | None:
    stamp = entry.get("lastUpdate")
    if not isinstance(stamp, str):
        return None
    try:
        written = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - written).total_seconds()


def stale_pods(
    pods: Sequence[Mapping[str, Any]], now: datetime, stale_after_s: float = STALE_REPORT_S
) -> list[str]:
    """Names of entries whose sidecar stopped writing long ago (an entry never dated counts
    as fresh: nothing says it is old)."""
    return [
        str(p["name"]) for p in pods if (age := _age_s(p, now)) is not None and age > stale_after_s
    ]


def removal_patch(pods: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """A JSON patch removing the named entries of ``status.pods``.

    Each removal is guarded by a test of the name at that index, so a list that changed
    meanwhile fails the whole patch instead of losing a live pod's entry. Indices go from
    the last down so that earlier removals do not shift later ones.
    """
    operations: list[dict[str, Any]] = []
    for index in sorted((i for i, p in enumerate(pods) if p.get("name") in names), reverse=True):
        path = f"/status/pods/{index}"
        operations.append({"op": "test", "path": f"{path}/name", "value": pods[index]["name"]})
        operations.append({"op": "remove", "path": path})
    return operations


def aggregate_pods(
    pods: Sequence[Mapping[str, Any]],
    cap_watts: float,
    generation: int,
    now: str,
    *,
    clock_control_wanted: bool = True,
) -> tuple[dict[str, Any], list[Condition]]:
    """Totals over the sidecars' entries, and the CapMet / ClockControl conditions."""
    if not pods:
        unknown = "no sidecar has reported yet"
        return {}, [
            condition("CapMet", None, "NoReports", unknown, generation=generation, now=now),
            condition("ClockControl", None, "NoReports", unknown, generation=generation, now=now),
        ]
    powers = [float(p["powerWatts"]) for p in pods if "powerWatts" in p]
    caps = [float(p["capWatts"]) for p in pods if "capWatts" in p]
    batches = [int(p["batchSize"]) for p in pods if "batchSize" in p]
    clocks = [int(p["smClockMHz"]) for p in pods if "smClockMHz" in p]
    fields: dict[str, Any] = {}
    if caps:
        fields["capWatts"] = max(caps)
    if powers:
        fields["powerWatts"] = round(sum(powers), 1)
    if batches:
        fields["batchSize"] = min(batches)
    if clocks:
        fields["smClockMHz"] = min(clocks)
    # A pod counts as over the cap only once its sidecar holds the current cap: a sidecar
    # still on an old, higher cap is catching up, not failing.
    behind = sorted(
        str(p["name"]) for p in pods if float(p.get("capWatts", cap_watts)) != cap_watts
    )
    over = sorted(
        str(p["name"])
        for p in pods
        if "powerWatts" in p and str(p["name"]) not in behind
        and float(p["powerWatts"]) > cap_watts
    )  # fmt: skip
    # What a sidecar says about itself: a task that keeps failing (the cap may not be
    # followed), a spec it could not apply (it follows the last good one), safe settings.
    failing = [p for p in pods if p.get("failedTask")]
    not_applied = [p for p in pods if p.get("problem") and not p.get("failedTask")]
    degraded = [p for p in pods if p.get("message")]
    if over:
        cap_met = condition(
            "CapMet", False, "OverCap", f"over {cap_watts:g} W: {', '.join(over)}",
            generation=generation, now=now,
        )  # fmt: skip
    elif failing:
        cap_met = condition(
            "CapMet", False, "SidecarFailing", _pod_messages(failing, "problem"),
            generation=generation, now=now,
        )  # fmt: skip
    elif not_applied:
        cap_met = condition(
            "CapMet", False, "SpecNotApplied", _pod_messages(not_applied, "problem"),
            generation=generation, now=now,
        )  # fmt: skip
    elif degraded:
        cap_met = condition(
            "CapMet", None, "Degraded",
            f"on safe settings: {_pod_messages(degraded, 'message')}",
            generation=generation, now=now,
        )  # fmt: skip
    elif behind:
        cap_met = condition(
            "CapMet", None, "CapChanging",
            f"{', '.join(behind)} not yet on the {cap_watts:g} W cap",
            generation=generation, now=now,
        )  # fmt: skip
    else:
        cap_met = condition(
            "CapMet", True, "UnderCap", f"every pod under {cap_watts:g} W",
            generation=generation, now=now,
        )  # fmt: skip
    refused_pods = [p for p in pods if p.get("clockControl") is False]
    refused = sorted(str(p["name"]) for p in refused_pods)
    if not clock_control_wanted:
        clock = condition(
            "ClockControl", False, "Disabled", "spec.power.clockControl.enabled is false",
            generation=generation, now=now,
        )  # fmt: skip
    elif refused:
        clock = condition(
            "ClockControl", False, "BatchSizeOnly",
            f"clocks cannot be locked, batch size only: "
            f"{_pod_messages(refused_pods, 'clockControlMessage')}",
            generation=generation, now=now,
        )  # fmt: skip
    else:
        clock = condition(
            "ClockControl", True, "Available", "clocks lockable", generation=generation, now=now
        )
    return fields, [cap_met, clock]


CAP_WINS_MARK = "the cap wins"
"""How a sidecar's sloMessage says the cap is what keeps the SLO from holding."""


def latency_slo_status(
    pods: Sequence[Mapping[str, Any]], slo_ms: float | None, generation: int, now: str
) -> tuple[dict[str, Any], list[Condition]]:
    """The worst p99 over the pods and, with ``spec.latencySLO``, the LatencySLO condition."""
    p99s = [float(p["p99LatencyMs"]) for p in pods if "p99LatencyMs" in p]
    fields: dict[str, Any] = {"p99LatencyMs": max(p99s)} if p99s else {}
    if slo_ms is None:
        return fields, []
    fields["sloMisses"] = sum(int(p.get("sloMisses", 0)) for p in pods)
    unmet = [p for p in pods if p.get("sloMessage")]
    over = sorted(
        str(p["name"]) for p in pods if float(p.get("p99LatencyMs", 0.0)) > slo_ms
    )  # fmt: skip
    if unmet:
        cap_wins = any(CAP_WINS_MARK in str(p["sloMessage"]) for p in unmet)
        cond = condition(
            "LatencySLO", False, "CapWins" if cap_wins else "Unreachable",
            _pod_messages(unmet, "sloMessage"), generation=generation, now=now,
        )  # fmt: skip
    elif over:
        cond = condition(
            "LatencySLO", False, "OverSLO",
            f"p99 over {slo_ms:g} ms, batch sizes coming down: {', '.join(over)}",
            generation=generation, now=now,
        )  # fmt: skip
    elif not p99s:
        cond = condition(
            "LatencySLO", None, "NoLatency",
            "Triton reports no p99 yet (no requests, or its latency summaries are off)",
            generation=generation, now=now,
        )  # fmt: skip
    else:
        cond = condition(
            "LatencySLO", True, "WithinSLO", f"every pod's p99 under {slo_ms:g} ms",
            generation=generation, now=now,
        )  # fmt: skip
    return fields, [cond]


def _pod_messages(pods: Sequence[Mapping[str, Any]], key: str) -> str:
    """``pod-a: why; pod-b: why``, sorted by pod."""
    return "; ".join(f"{p['name']}: {p.get(key) or 'no details'}" for p in sorted(
        pods, key=lambda p: str(p["name"])
    ))  # fmt: skip


def numbers_due(
    current: Mapping[str, Any],
    fields: Mapping[str, Any],
    conditions_changed: bool,
    since_last_write_s: float | None,
) -> bool:
    """Whether the aggregates are worth a write now.

    A condition change always is; numbers alone at most every ``NUMBERS_REFRESH_S``. The
    next sidecar report, seconds later, brings anything held back.
    """
    if conditions_changed:
        return True
    if all(current.get(k) == v for k, v in fields.items()):
        return False
    return since_last_write_s is None or since_last_write_s >= NUMBERS_REFRESH_S
