"""The budget controller's pure part: selection, plan, entries and status, without a cluster."""

from __future__ import annotations

import math
from typing import Any

import pytest

from capinfer_core import ThroughputCurve
from capinfer_operator.budget import (
    BudgetSpecError,
    MemberPod,
    allocation_entries,
    budget_status,
    label_selector,
    member_pods,
    parse_budget,
    plan_budget,
    removal_entries,
)


def pod(name: str, inference: str, *, node: str = "n1", namespace: str = "ml",
        phase: str = "Running", gpus: int = 1) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"capinfer.io/inference": inference}},
        "spec": {"nodeName": node, "containers": [
            {"name": "triton", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}},
            {"name": "capinfer-sidecar"},
        ]},
        "status": {"phase": phase},
    }  # fmt: skip


def inference(name: str, cap: float, entries: list[dict[str, Any]] | None = None,
              namespace: str = "ml") -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"power": {"capWatts": cap}},
        "status": {"pods": entries or []},
    }


def member(name: str, cap: float = 300, **entry: Any) -> MemberPod:
    return MemberPod("ml", name, "svc", gpus=1, declared_cap_watts=cap,
                     entry={"name": name, **entry})  # fmt: skip


CURVE = ThroughputCurve((100.0, 200.0, 300.0), (100.0, 180.0, 200.0), 300.0).to_status()


def test_selectors_become_the_api_servers_strings() -> None:
    raw = {
        "matchLabels": {"rack": "a12", "tier": "gpu"},
        "matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["b", "a"]},
            {"key": "drain", "operator": "DoesNotExist"},
            {"key": "gpu", "operator": "Exists"},
            {"key": "pool", "operator": "NotIn", "values": ["spot"]},
        ],
    }
    assert label_selector(raw, "spec.nodeSelector") == (
        "rack=a12,tier=gpu,zone in (a,b),!drain,gpu,pool notin (spot)"
    )
    assert label_selector({}, "spec.selector") == ""
    with pytest.raises(BudgetSpecError, match=r"spec.selector.matchExpressions\[0\].values"):
        label_selector({"matchExpressions": [{"key": "a", "operator": "In"}]}, "spec.selector")


def test_a_budget_is_a_rack_or_a_service_never_both() -> None:
    rack = parse_budget("r", {"watts": 900, "nodeSelector": {"matchLabels": {"rack": "a"}}})
    assert (rack.kind, rack.node_selector, rack.policy.value) == ("Rack", "rack=a", "MaxThroughput")
    overrides = [{"namespace": "ml", "name": "x", "priority": 5}]
    service = parse_budget(
        "s", {"watts": 900, "selector": {}, "policy": "Equal", "members": overrides}
    )
    assert (service.kind, service.namespace_selector) == ("Service", None)
    assert service.bounds_for("ml", "x").priority == 5
    with pytest.raises(BudgetSpecError, match="exactly one"):
        parse_budget("b", {"watts": 900, "selector": {}, "nodeSelector": {}})
    with pytest.raises(BudgetSpecError, match="exactly one"):
        parse_budget("n", {"watts": 900})


def test_a_rack_budget_takes_every_capinfer_pod_on_its_nodes() -> None:
    budget = parse_budget("rack", {"watts": 900, "nodeSelector": {}})
    pods = [
        pod("a-0", "a", node="n1", gpus=2), pod("b-0", "b", node="n1"),
        pod("b-1", "b", node="n2"), pod("a-1", "a", node="n1", phase="Succeeded"),
        pod("c-0", "gone", node="n1"),
    ]  # fmt: skip
    objects = [inference("a", 200), inference("b", 250)]
    found = member_pods(budget, pods, objects, node_names={"n1"})
    assert [(m.key, m.gpus, m.declared_cap_watts) for m in found.members] == [
        ("ml/a-0", 2, 200.0), ("ml/b-0", 1, 250.0),
    ]  # fmt: skip


def test_a_service_budget_takes_the_selected_objects_pods_and_leaves_anothers() -> None:
    budget = parse_budget("svc", {"watts": 900, "selector": {}})
    objects = [
        inference("a", 200, [{"name": "a-1", "budget": "other", "allocatedCapWatts": 50}]),
        inference("b", 250),
    ]
    pods = [pod("a-0", "a"), pod("a-1", "a"), pod("b-0", "b")]
    found = member_pods(budget, pods, objects, selected_inferences={("ml", "a")},
                        live_budgets={"svc", "other"})  # fmt: skip
    assert [m.key for m in found.members] == ["ml/a-0"]
    assert found.elsewhere == {"ml/a-1": "other"}
    # A claim by a budget that is gone is no claim.
    found = member_pods(budget, pods, objects, selected_inferences={("ml", "a")},
                        live_budgets={"svc"})  # fmt: skip
    assert [m.key for m in found.members] == ["ml/a-0", "ml/a-1"]


def test_the_targets_never_exceed_the_budget_and_follow_the_curves() -> None:
    budget = parse_budget("svc", {"watts": 400, "selector": {}})
    members = [member("a", capWatts=300, curve=CURVE), member("b", capWatts=300, curve=CURVE),
               member("c", capWatts=300)]  # fmt: skip
    plan, _ = plan_budget(budget, members)
    assert math.fsum(plan.allocation.caps_watts.values()) <= 400
    # Everyone runs at 300 W, more than any target: the decreases go out at once.
    assert plan.publish == {k: math.floor(v * 10) / 10 for k, v in
                            plan.allocation.caps_watts.items()}  # fmt: skip
    assert sum(plan.publish.values()) <= 400


def ran(name: str, cap: float, generation: int, **entry: Any) -> MemberPod:
    """A pod whose sidecar runs under the allocation of ``generation``."""
    return member(name, capWatts=cap, allocatedCapWatts=cap, allocationGeneration=generation,
                  allocationGenerationInForce=generation, budget="svc", **entry)  # fmt: skip


def test_an_increase_waits_for_the_decreases_to_be_confirmed() -> None:
    # a runs under 100 W and b under 300 W, both confirmed. The new targets (Equal) are 200
    # each: b goes down at once, a may rise only once b confirms.
    budget = parse_budget("svc", {"watts": 400, "selector": {}, "policy": "Equal"})
    plan, ledger = plan_budget(budget, [ran("a", 100, 4), ran("b", 300, 7)])
    assert plan.allocation.caps_watts == {"ml/a": 200, "ml/b": 200}
    assert plan.publish == {"ml/a": 100, "ml/b": 200}  # 100 + 300 counted: no room yet
    assert plan.generations == {"ml/a": 4, "ml/b": 8}  # numbered on from the entries
    assert plan.settled == {"ml/a"}
    # b's sidecar has not reported yet: nothing changes.
    plan, ledger = plan_budget(budget, [ran("a", 100, 4), ran("b", 300, 7)], ledger)
    assert plan.publish == {"ml/a": 100, "ml/b": 200}
    # b runs under generation 8: a rises.
    plan, ledger = plan_budget(budget, [ran("a", 100, 4), ran("b", 200, 8)], ledger)
    assert plan.publish == {"ml/a": 200, "ml/b": 200} and plan.generations["ml/a"] == 5


def test_a_cap_raised_then_lowered_counts_high_until_its_sidecar_confirms() -> None:
    # a was raised to 200 W (generation 2) and lowered back to 100 W (generation 3) before its
    # sidecar reported: it may be running under 200 W. Its report "100 W, generation 1" is
    # older than both, so the 100 W it frees is not given to b until generation 3 is confirmed.
    budget = parse_budget("svc", {"watts": 400, "selector": {}, "policy": "Equal"})
    plan, ledger = plan_budget(budget, [ran("a", 100, 1), ran("b", 100, 1)])
    assert plan.publish == {"ml/a": 200, "ml/b": 200}  # room for both: up together
    stale_a = member("a", capWatts=100, allocatedCapWatts=200, allocationGeneration=2,
                     allocationGenerationInForce=1, budget="svc")  # fmt: skip
    lower = parse_budget("svc", {"watts": 300, "selector": {}, "policy": "Equal",
                                 "members": [{"namespace": "ml", "name": "svc"}]})  # fmt: skip
    # The budget falls to 300 W: a and b both go to 150 W at once.
    plan, ledger = plan_budget(lower, [stale_a, ran("b", 200, 2)], ledger)
    assert plan.publish == {"ml/a": 150, "ml/b": 150}
    assert plan.held["ml/a"] == 200  # generation 2 is not confirmed: a may run under 200 W
    assert plan.settled == set()


def test_minimums_that_do_not_fit_park_the_lowest_priority() -> None:
    budget = parse_budget("svc", {
        "watts": 350, "selector": {}, "defaults": {"minWattsPerGpu": 150},
        "members": [{"namespace": "ml", "name": "svc", "priority": 1}],
    })  # fmt: skip
    members = [member("a"), member("b"), member("c")]
    plan, _ = plan_budget(budget, members)
    assert not plan.allocation.satisfiable and plan.allocation.cut_members == ("ml/c",)
    assert plan.publish["ml/c"] == 0
    membership = member_pods(budget, [], [])
    membership.members.extend(members)
    status = budget_status(budget, generation=2, membership=membership, plan=plan,
                           existing_conditions=[], now="t")  # fmt: skip
    by_type = {c["type"]: c for c in status["conditions"]}
    assert (by_type["Satisfiable"]["status"], by_type["Satisfiable"]["reason"]) == (
        "False", "MinimumsExceedBudget")  # fmt: skip
    assert by_type["Enforced"]["reason"] == "MembersParked"
    assert [r["cut"] for r in status["allocations"]] == [False, False, True]
    assert status["allocatedWatts"] <= 350


def test_entries_change_only_where_needed_and_leave_pods_that_are_gone() -> None:
    objects = [
        inference("svc", 300, [
            {"name": "a", "allocatedCapWatts": 150.0, "budget": "b1", "capWatts": 150},
            {"name": "gone", "allocatedCapWatts": 150.0, "budget": "b1"},
        ]),
        inference("old", 300, [{"name": "x", "allocatedCapWatts": 100.0, "budget": "b1"}]),
        inference("same", 300, [{"name": "s", "allocatedCapWatts": 90.0,
                                 "allocationGeneration": 1, "budget": "b1"}]),
    ]  # fmt: skip
    members = [member("a"), MemberPod("ml", "s", "same", 1, 300, {})]
    changes = allocation_entries(
        "b1", members, {"ml/a": 150.0, "ml/s": 90.0}, {"ml/a": 3, "ml/s": 1}, objects
    )
    assert changes == {
        ("ml", "svc"): [
            {"name": "a", "allocatedCapWatts": 150.0, "allocationGeneration": 3, "budget": "b1"}
        ],
        ("ml", "old"): [],
    }
    assert removal_entries("b1", objects) == [("ml", "svc"), ("ml", "old"), ("ml", "same")]


def test_caps_in_force_that_do_not_hold_the_power_are_not_enforcement() -> None:
    # Both sidecars confirmed 100 W, yet each draws 130 W (a GPU cannot go below its floor).
    budget = parse_budget("svc", {"watts": 200, "selector": {}, "policy": "Equal"})
    members = [ran("a", 100, 1, powerWatts=130.0), ran("b", 100, 1, powerWatts=130.0)]
    plan, _ = plan_budget(budget, members)
    assert plan.settled == {"ml/a", "ml/b"}
    membership = member_pods(budget, [], [])
    membership.members.extend(members)
    status = budget_status(budget, generation=1, membership=membership, plan=plan,
                           existing_conditions=[], now="t")  # fmt: skip
    enforced = {c["type"]: c for c in status["conditions"]}["Enforced"]
    assert (enforced["status"], enforced["reason"]) == ("False", "OverBudget")
    assert "minWattsPerGpu" in enforced["message"]
    held = [ran("a", 100, 1, powerWatts=98.0), ran("b", 100, 1, powerWatts=99.0)]
    membership = member_pods(budget, [], [])
    membership.members.extend(held)
    status = budget_status(budget, generation=1, membership=membership, plan=plan,
                           existing_conditions=[], now="t")  # fmt: skip
    enforced = {c["type"]: c for c in status["conditions"]}["Enforced"]
    assert (enforced["status"], enforced["reason"]) == ("True", "AllocationsInForce")
