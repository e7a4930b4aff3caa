"""Status logic without a cluster: readiness, aggregates, stale reports, write pacing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from capinfer_operator.status import (
    NUMBERS_REFRESH_S,
    STALE_REPORT_S,
    DeploymentState,
    aggregate_pods,
    latency_slo_status,
    numbers_due,
    readiness,
    removal_patch,
    stale_pods,
    updated_conditions,
)

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def state(replicas: int, ready: int, updated: int, observed: bool = True) -> DeploymentState:
    return DeploymentState(replicas, ready, updated, observed)


@pytest.mark.parametrize(
    ("deployment", "desired", "expected"),
    [
        (None, 2, ("False", "NoDeployment")),
        (state(2, 2, 2), 2, ("True", "PodsReady")),
        (state(2, 1, 2), 2, ("False", "PodsNotReady")),
        (state(3, 2, 1), 2, ("False", "RollingOut")),  # an old pod still runs
        (state(2, 2, 2, observed=False), 2, ("False", "RollingOut")),
        (state(0, 0, 0), 0, ("True", "ScaledToZero")),
        (state(1, 1, 1), 0, ("True", "ScalingDown")),
    ],
)
def test_readiness(
    deployment: DeploymentState | None, desired: int, expected: tuple[str, str]
) -> None:
    _, ready = readiness(deployment, desired, generation=4, now="t")
    assert (ready["status"], ready["reason"]) == expected
    assert ready["observedGeneration"] == 4


def test_deployment_state_from_the_api_shape() -> None:
    served = {
        "metadata": {"generation": 3},
        "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2},
    }
    found = DeploymentState.from_deployment(served)
    assert found == DeploymentState(2, 2, 0, observed=False, generation=3, observed_generation=2)
    assert DeploymentState.from_deployment({}).observed


def test_aggregates_sum_power_and_take_the_weakest_knobs() -> None:
    pods = [
        {"name": "a", "powerWatts": 170.0, "capWatts": 180, "batchSize": 64, "smClockMHz": 1300},
        {"name": "b", "powerWatts": 185.0, "capWatts": 180, "batchSize": 32, "clockControl": False},
    ]
    fields, conditions = aggregate_pods(pods, 180, generation=3, now="t")
    assert fields == {"capWatts": 180, "powerWatts": 355.0, "batchSize": 32, "smClockMHz": 1300}
    by_type = {c["type"]: c for c in conditions}
    assert by_type["CapMet"]["status"] == "False" and "b" in by_type["CapMet"]["message"]
    assert by_type["ClockControl"]["reason"] == "BatchSizeOnly"


def test_a_sidecar_still_on_the_old_cap_is_catching_up_not_failing() -> None:
    pods = [
        {"name": "a", "powerWatts": 150.0, "capWatts": 120},
        {"name": "b", "powerWatts": 170.0, "capWatts": 180},
    ]
    fields, conditions = aggregate_pods(pods, 120, generation=2, now="t")
    cap_met = conditions[0]
    assert (cap_met["status"], cap_met["reason"]) == ("False", "OverCap")
    assert "a" in cap_met["message"] and "b" not in cap_met["message"]
    assert fields["capWatts"] == 180  # not every sidecar holds the new cap yet
    calm = [{"name": "b", "powerWatts": 170.0, "capWatts": 180}]
    _, conditions = aggregate_pods(calm, 120, generation=2, now="t")
    assert (conditions[0]["status"], conditions[0]["reason"]) == ("Unknown", "CapChanging")


def test_a_sidecar_whose_task_keeps_failing_makes_cap_met_false_not_changing() -> None:
    # The cap follower died on the old cap: before, this read "CapChanging" forever.
    pods = [
        {"name": "a", "powerWatts": 150.0, "capWatts": 180},
        {
            "name": "b", "powerWatts": 150.0, "capWatts": 180, "failedTask": "cap-follower",
            "problem": "cap-follower keeps failing (3 times in a row): GpuError: Unknown Error",
        },
    ]  # fmt: skip
    _, conditions = aggregate_pods(pods, 120, generation=2, now="t")
    cap_met = conditions[0]
    assert (cap_met["status"], cap_met["reason"]) == ("False", "SidecarFailing")
    assert cap_met["message"].startswith("b: cap-follower keeps failing")
    assert "a:" not in cap_met["message"]


def test_a_spec_a_sidecar_rejected_makes_cap_met_false() -> None:
    pods = [
        {
            "name": "a", "powerWatts": 150.0, "capWatts": 180,
            "problem": "spec.power not applied, the last good settings stay: unknown policy",
        },
    ]  # fmt: skip
    _, conditions = aggregate_pods(pods, 180, generation=2, now="t")
    assert (conditions[0]["status"], conditions[0]["reason"]) == ("False", "SpecNotApplied")
    assert "unknown policy" in conditions[0]["message"]


def test_a_degraded_sidecar_makes_cap_met_unknown() -> None:
    pods = [
        {"name": "a", "capWatts": 180, "message": "GPU lost: nvmlDeviceGetFieldValues"},
        {"name": "b", "powerWatts": 150.0, "capWatts": 180},
    ]
    _, conditions = aggregate_pods(pods, 180, generation=2, now="t")
    cap_met = conditions[0]
    assert (cap_met["status"], cap_met["reason"]) == ("Unknown", "Degraded")
    assert "a: GPU lost" in cap_met["message"]


def test_over_the_cap_is_said_first() -> None:
    pods = [
        {"name": "a", "powerWatts": 200.0, "capWatts": 180},
        {"name": "b", "capWatts": 180, "failedTask": "control-loop", "problem": "x"},
    ]
    _, conditions = aggregate_pods(pods, 180, generation=2, now="t")
    assert conditions[0]["reason"] == "OverCap"


def test_clock_control_switched_off_by_the_user_is_not_a_failure_of_the_node() -> None:
    pods = [{"name": "a", "powerWatts": 100.0, "capWatts": 180, "clockControl": False}]
    _, conditions = aggregate_pods(pods, 180, 1, "t", clock_control_wanted=False)
    clock = {c["type"]: c for c in conditions}["ClockControl"]
    assert (clock["status"], clock["reason"]) == ("False", "Disabled")


def test_no_reports_yet() -> None:
    fields, conditions = aggregate_pods([], 180, 1, "t")
    assert fields == {}
    assert {c["type"]: c["status"] for c in conditions} == {
        "CapMet": "Unknown",
        "ClockControl": "Unknown",
    }


def stamp(age_s: float) -> str:
    return (NOW - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_stale_reports_are_found_and_removed_by_a_guarded_patch() -> None:
    pods: list[dict[str, Any]] = [
        {"name": "old-1", "lastUpdate": stamp(STALE_REPORT_S + 5)},
        {"name": "live", "lastUpdate": stamp(2)},
        {"name": "undated"},
        {"name": "old-2", "lastUpdate": stamp(3600)},
    ]
    stale = stale_pods(pods, NOW)
    assert stale == ["old-1", "old-2"]
    assert removal_patch(pods, stale) == [
        {"op": "test", "path": "/status/pods/3/name", "value": "old-2"},
        {"op": "remove", "path": "/status/pods/3"},
        {"op": "test", "path": "/status/pods/0/name", "value": "old-1"},
        {"op": "remove", "path": "/status/pods/0"},
    ]


def test_numbers_alone_are_paced_conditions_are_not() -> None:
    current = {"powerWatts": 100.0}
    moved = {"powerWatts": 101.0}
    assert not numbers_due(current, current, conditions_changed=False, since_last_write_s=None)
    assert numbers_due(current, moved, conditions_changed=False, since_last_write_s=None)
    soon = NUMBERS_REFRESH_S / 2
    assert not numbers_due(current, moved, conditions_changed=False, since_last_write_s=soon)
    assert numbers_due(current, moved, conditions_changed=True, since_last_write_s=soon)
    later = NUMBERS_REFRESH_S
    assert numbers_due(current, moved, conditions_changed=False, since_last_write_s=later)


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "early"}]
    _, same = readiness(state(1, 1, 1), 1, generation=1, now="late")
    assert updated_conditions(old, [same])[0]["lastTransitionTime"] == "early"
    _, flipped = readiness(state(1, 0, 1), 1, generation=1, now="late")
    assert updated_conditions(old, [flipped])[0]["lastTransitionTime"] == "late"


def test_latency_slo_condition_says_when_the_cap_wins() -> None:
    now = "2025-01-01T12:00:00Z"
    within = [{"name": "a", "p99LatencyMs": 30.0, "sloMisses": 1}, {"name": "b"}]
    fields, (cond,) = latency_slo_status(within, 50.0, 4, now)
    assert fields == {"p99LatencyMs": 30.0, "sloMisses": 1}
    assert (cond["type"], cond["status"], cond["reason"]) == ("LatencySLO", "True", "WithinSLO")
    over = [{"name": "a", "p99LatencyMs": 70.0}]
    assert latency_slo_status(over, 50.0, 4, now)[1][0]["reason"] == "OverSLO"
    capped = [{"name": "a", "p99LatencyMs": 70.0, "sloMessage": "p99 ...; the cap wins"}]
    cond = latency_slo_status(capped, 50.0, 4, now)[1][0]
    assert (cond["status"], cond["reason"]) == ("False", "CapWins")
    assert cond["message"] == "a: p99 ...; the cap wins"
    unreachable = [{"name": "a", "p99LatencyMs": 70.0, "sloMessage": "at the smallest batch"}]
    assert latency_slo_status(unreachable, 50.0, 4, now)[1][0]["reason"] == "Unreachable"
    assert latency_slo_status([{"name": "a"}], 50.0, 4, now)[1][0]["status"] == "Unknown"
    assert latency_slo_status(within, None, 4, now) == ({"p99LatencyMs": 30.0}, [])
