"""PowerBudgets: the real operator (the chart's RBAC) splits watts across pods of the local
control plane.

kwok runs the pods without containers, so sidecar stand-ins (``budget_helpers``) write the
pods' status entries with the sidecar's own code: they hold the lower of the object's cap and
the pod's allocation, and publish a throughput curve per object. What is tested is the
controller: membership, the split, the transit rule, satisfiability, clean-up.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from budget_helpers import SidecarStandIns, TransitChecker
from kubernetes import client, config
from pci_helpers import OperatorUnderTest, get_json, inference, wait_for

from capinfer.localcluster.cluster import LocalCluster
from capinfer_core import ThroughputCurve

pytestmark = pytest.mark.cluster

# Object "fast" gains much per watt and draws up to 280 W uncapped; "slow" gains little.
FAST = ThroughputCurve((100.0, 200.0, 280.0), (200.0, 800.0, 1000.0), 280.0).to_status()
SLOW = ThroughputCurve((100.0, 200.0, 300.0), (200.0, 300.0, 350.0), 300.0).to_status()


@pytest.fixture
def api_client(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    found = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield found
    finally:
        found.close()


def apply(cluster: LocalCluster, *manifests: dict[str, Any]) -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(listed))


def budget(name: str, watts: float, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": name},
        "spec": {"watts": watts, **spec},
    }


def labelled(name: str, namespace: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    obj = inference(name, namespace, **spec)
    obj["metadata"]["labels"] = labels
    obj["spec"]["power"] = {"capWatts": 300}
    return obj


def entries(cluster: LocalCluster, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    obj = get_json(cluster, "pci", name, "-n", namespace) or {}
    return {e["name"]: e for e in obj.get("status", {}).get("pods", [])}


def allocations(cluster: LocalCluster, namespace: str, *names: str) -> dict[str, float]:
    """allocatedCapWatts of every pod entry of the objects that has one."""
    found = {}
    for name in names:
        for pod, entry in entries(cluster, namespace, name).items():
            if "allocatedCapWatts" in entry:
                found[pod] = float(entry["allocatedCapWatts"])
    return found


def total(cluster: LocalCluster, namespace: str, *names: str) -> float:
    return sum(allocations(cluster, namespace, *names).values())


def caps_in_force(cluster: LocalCluster, namespace: str, name: str) -> set[Any]:
    """The caps the object's sidecars report holding."""
    return {e.get("capWatts") for e in entries(cluster, namespace, name).values()}


def budget_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    found = get_json(cluster, "powerbudget", name) or {}
    return dict(found.get("status", {}))


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def running(cluster: LocalCluster, namespace: str, name: str) -> set[str]:
    found = get_json(cluster, "pods", "-n", namespace, "-l", f"capinfer.io/inference={name}")
    return {
        p["metadata"]["name"]
        for p in (found or {}).get("items", [])
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    }


def patch_watts(cluster: LocalCluster, name: str, watts: float) -> None:
    patch = json.dumps({"spec": {"watts": watts}})
    cluster.kubectl("patch", "powerbudget", name, "--type=merge", "-p", patch)


def delete_budget(cluster: LocalCluster, name: str) -> None:
    """Delete and wait until the operator has let it go (its finalizer removed)."""
    cluster.kubectl("delete", "powerbudget", name, "--wait=false", "--ignore-not-found")
    wait_for(f"budget {name} gone", lambda: get_json(cluster, "powerbudget", name) is None)


def settled(cluster: LocalCluster, name: str, pods: int, watts: float) -> bool:
    """The controller has written its allocations for ``pods`` members and the stand-ins
    hold them."""
    status = budget_status(cluster, name)
    enforced = condition(status, "Enforced")
    return (
        status.get("members") == pods
        and enforced.get("status") == "True"
        and status.get("allocatedWatts", math.inf) <= watts
    )


def two_objects_running(
    cluster: LocalCluster, namespace: str, team: dict[str, str], first: str, second: str
) -> None:
    """Apply two labelled objects of two replicas each; wait for their four pods Running."""
    apply(cluster, labelled(first, namespace, team), labelled(second, namespace, team))
    wait_for("four Running pods", lambda: len(running(cluster, namespace, first)) == 2
             and len(running(cluster, namespace, second)) == 2)  # fmt: skip


# -- a service budget -----------------------------------------------------------------------------
def test_a_service_budget_splits_its_watts_where_they_buy_the_most_and_follows_patches(
    cluster: LocalCluster,
    namespace: str,
    restricted_operator: OperatorUnderTest,
    api_client: client.ApiClient,
) -> None:
    team = {"team": f"t{uuid.uuid4().hex[:8]}"}
    name = f"svc-{uuid.uuid4().hex[:6]}"
    two_objects_running(cluster, namespace, team, "fast", "slow")
    with (
        SidecarStandIns(api_client, namespace, {"fast": FAST, "slow": SLOW}) as stand_ins,
        TransitChecker(api_client, namespace, name) as checker,
    ):
        wait_for("the stand-ins' entries", lambda: len(entries(cluster, namespace, "fast")) == 2)
        checker.watts = 700
        apply(cluster, budget(name, 700, selector={"matchLabels": team}))
        try:
            wait_for("the split in force", lambda: settled(cluster, name, 4, 700))
            split = allocations(cluster, namespace, "fast", "slow")
            fast = [split[p] for p in running(cluster, namespace, "fast")]
            slow = [split[p] for p in running(cluster, namespace, "slow")]
            assert sum(split.values()) <= 700
            assert min(fast) > max(slow), f"the watts should go where they buy most: {split}"
            assert max(fast) <= 280 + 0.05, "no more than the curve's uncapped draw"
            status = budget_status(cluster, name)
            assert status["kind"] == "Service" and status["gpus"] == 4
            assert condition(status, "Satisfiable")["status"] == "True"
            assert status["measuredWatts"] <= 700
            assert all(row["curve"] for row in status["allocations"])
            # The objects say which budget limits them.
            pci = get_json(cluster, "pci", "slow", "-n", namespace)
            budgeted = condition(pci["status"], "Budgeted")
            assert budgeted.get("reason") == "LimitedByBudget" and name in budgeted["message"]
            row = cluster.kubectl("get", "pb", name).stdout
            assert "700" in row and "True" in row

            # Down: every pod follows, the sum within the new budget.
            patch_watts(cluster, name, 500)
            checker.watts = 500
            wait_for("the lower split", lambda: settled(cluster, name, 4, 500)
                     and total(cluster, namespace, "fast", "slow") <= 500)  # fmt: skip
            # Up: increases only as the transit rule lets them.
            checker.watts = 1000
            patch_watts(cluster, name, 1000)
            wait_for("the higher split", lambda: settled(cluster, name, 4, 1000)
                     and total(cluster, namespace, "fast", "slow") > 900)  # fmt: skip
            split = allocations(cluster, namespace, "fast", "slow")
            assert sum(split.values()) <= 1000 and max(split.values()) <= 300
            assert checker.rises > 0, "the transit checker saw no allocation rise"
            assert checker.violations == []

            # A person lowers one object's cap: its pods come down, the others get the watts.
            before = allocations(cluster, namespace, "slow")
            cluster.kubectl("patch", "pci", "fast", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"power": {"capWatts": 150}}}))  # fmt: skip
            wait_for("fast under its own lower cap, slow up", lambda: (
                max(allocations(cluster, namespace, "fast").values()) <= 150
                and sum(allocations(cluster, namespace, "slow").values()) > sum(before.values())
            ))  # fmt: skip
            assert checker.violations == []
        finally:
            delete_budget(cluster, name)
        # Gone: no allocation left anywhere, the pods back on their objects' own caps.
        wait_for("the allocations removed", lambda: not allocations(
            cluster, namespace, "fast", "slow"))  # fmt: skip
        wait_for("the slow pods back at 300 W",
                 lambda: caps_in_force(cluster, namespace, "slow") == {300})  # fmt: skip
        wait_for("Budgeted gone", lambda: not condition(
            get_json(cluster, "pci", "slow", "-n", namespace)["status"], "Budgeted"))  # fmt: skip
        assert stand_ins.errors == []


# -- minimums that do not fit -------------------------------------------------------------------
def test_minimums_that_cannot_all_be_met_park_the_lowest_priority_and_say_so(
    cluster: LocalCluster,
    namespace: str,
    restricted_operator: OperatorUnderTest,
    api_client: client.ApiClient,
) -> None:
    team = {"team": f"t{uuid.uuid4().hex[:8]}"}
    name = f"min-{uuid.uuid4().hex[:6]}"
    two_objects_running(cluster, namespace, team, "gold", "bronze")
    with SidecarStandIns(api_client, namespace, {"gold": FAST, "bronze": FAST}) as stand_ins:
        spec = {
            "selector": {"matchLabels": team},
            "defaults": {"minWattsPerGpu": 200},
            "members": [{"namespace": namespace, "name": "gold", "priority": 10}],
        }
        apply(cluster, budget(name, 500, **spec))
        try:
            wait_for("Satisfiable=False", lambda: condition(
                budget_status(cluster, name), "Satisfiable").get("status") == "False")  # fmt: skip
            status = budget_status(cluster, name)
            satisfiable = condition(status, "Satisfiable")
            assert satisfiable["reason"] == "MinimumsExceedBudget"
            assert "parked" in satisfiable["message"]
            wait_for("bronze parked, gold at its minimum or more", lambda: (
                set(allocations(cluster, namespace, "bronze").values()) == {0.0}
                and min(allocations(cluster, namespace, "gold").values()) >= 200
            ))  # fmt: skip
            assert condition(budget_status(cluster, name), "Enforced")["reason"] == "MembersParked"
            cut = {r["inference"] for r in budget_status(cluster, name)["allocations"] if r["cut"]}
            assert cut == {"bronze"}
            # A parked pod's sidecar holds the lowest cap there is.
            wait_for("bronze's sidecars on the lowest cap",
                     lambda: caps_in_force(cluster, namespace, "bronze") == {1.0})  # fmt: skip
            warnings = get_json(cluster, "events", "-n", "default", "--field-selector",
                                f"involvedObject.name={name},type=Warning")  # fmt: skip
            assert any(e["reason"] == "MinimumsExceedBudget" for e in warnings["items"])
        finally:
            delete_budget(cluster, name)
        assert stand_ins.errors == []


# -- a rack budget, members coming and going ------------------------------------------------------
def test_a_rack_budget_holds_the_pods_on_its_nodes_as_they_come_and_go(
    cluster: LocalCluster,
    namespace: str,
    restricted_operator: OperatorUnderTest,
    api_client: client.ApiClient,
) -> None:
    name = f"rack-{uuid.uuid4().hex[:6]}"
    here = {"kubernetes.io/hostname": "gpu-node-0"}
    there = {"kubernetes.io/hostname": "gpu-node-1"}
    apply(
        cluster,
        labelled("left", namespace, {}, replicas=1, nodeSelector=here),
        labelled("right", namespace, {}, replicas=1, nodeSelector=there),
    )
    wait_for("two Running pods", lambda: len(running(cluster, namespace, "left")) == 1
             and len(running(cluster, namespace, "right")) == 1)  # fmt: skip
    with SidecarStandIns(api_client, namespace, {"left": SLOW, "right": SLOW}) as stand_ins:
        apply(cluster, budget(name, 250, nodeSelector={"matchLabels": here}, policy="Equal"))
        try:
            wait_for("left's pod allocated", lambda: len(allocations(
                cluster, namespace, "left")) == 1)  # fmt: skip
            assert allocations(cluster, namespace, "right") == {}, "right runs on another node"
            # Another pod on the rack's node: a member as soon as it runs.
            cluster.kubectl("scale", "pci", "left", "-n", namespace, "--replicas=2")
            wait_for("both left pods allocated", lambda: len(allocations(
                cluster, namespace, "left")) == 2)  # fmt: skip
            assert sum(allocations(cluster, namespace, "left").values()) <= 250
            assert budget_status(cluster, name)["allocatedWatts"] <= 250
            # One goes: its entry goes with it, the controller's fields too.
            cluster.kubectl("scale", "pci", "left", "-n", namespace, "--replicas=1")
            wait_for("one left pod", lambda: len(running(cluster, namespace, "left")) == 1)
            wait_for("only the live pod's entry", lambda: set(entries(
                cluster, namespace, "left")) == running(cluster, namespace, "left"))  # fmt: skip
            wait_for("the remaining pod gets the watts back", lambda: sum(allocations(
                cluster, namespace, "left").values()) >= 240)  # fmt: skip
        finally:
            delete_budget(cluster, name)
        wait_for("allocations removed", lambda: not allocations(cluster, namespace, "left"))
        assert stand_ins.errors == []
