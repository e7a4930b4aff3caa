"""The operator killed, doubled and cut off from its API server, on the real local cluster.

* Two replicas with kopf peering, the chart's RBAC and peering objects: the active one is
  SIGKILLed in the middle of a burst, the other takes over (the time is printed).
* One replica SIGKILLed ten times at random (seeded) moments of a burst, restarted each time.
* The kube-apiserver stopped and started mid-burst: the operator recovers by itself.

After each: every object has exactly one set of children, each owned by it alone, one
ReplicaSet and its pod, no orphans, and a status that says so (Ready for its generation,
counts right). kwok plays the kubelet of a fake node with room for every pod.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pci_helpers import OperatorUnderTest, get_json, inference, render_operator_rbac, wait_for

from capinfer.localcluster.cluster import FakeGpuNode, LocalCluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
PEERING_CRDS = sorted((REPO / "crds").glob("kopf.dev_*.yaml"))
CHILD_KINDS = {
    "deployment": "",
    "service": "",
    "serviceaccount": "-capinfer-sidecar",
    "role": "-capinfer-sidecar",
    "rolebinding": "-capinfer-sidecar",
}
MANAGED = "app.kubernetes.io/managed-by=capinfer"


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def roomy_node(cluster: LocalCluster) -> Iterator[None]:
    """A fake node with room for every pod of these bursts (the default nodes have 16 GPUs)."""
    node = FakeGpuNode(f"resilience-{uuid.uuid4().hex[:6]}", gpu_count=100)
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(node.manifest()))
    try:
        yield
    finally:
        cluster.kubectl("delete", "node", node.name, "--wait=false", check=False)


@pytest.fixture
def alone(restricted_operator: OperatorUnderTest) -> Iterator[OperatorUnderTest]:
    """The module's operator, stopped meanwhile when the test runs operators of its own (two
    operators that do not know each other would both handle every object)."""
    restricted_operator.stop()
    try:
        yield restricted_operator
    finally:
        restricted_operator.start()


@pytest.fixture(scope="module")
def peered_account(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """The chart's operator RBAC with peering on, its ServiceAccount's kubeconfig, kopf's
    peering CRDs and a ClusterKopfPeering object (as the chart installs them)."""
    for crd in PEERING_CRDS:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")  # fmt: skip
    release = f"ha-{uuid.uuid4().hex[:6]}"
    namespace = f"capinfer-{release}"
    cluster.kubectl("create", "namespace", namespace)
    rbac = render_operator_rbac(cluster, release, namespace, "peering.enabled=true")
    assert "clusterkopfpeerings" in rbac
    cluster.kubectl("apply", "-f", "-", input_text=rbac)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
               "metadata": {"name": release}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(peering))
    path = Path(tmp_path_factory.mktemp("peered-account")) / "kubeconfig"
    try:
        yield cluster.service_account_kubeconfig(namespace, f"{release}-capinfer", path), release
    finally:
        cluster.kubectl("delete", "clusterkopfpeering", release, "--wait=false", check=False)
        cluster.kubectl("delete", "-f", "-", "--wait=false", input_text=rbac, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# -- helpers ----------------------------------------------------------------------------------
def create(cluster: LocalCluster, namespace: str, names: list[str]) -> None:
    items = [inference(name, namespace, replicas=1) for name in names]
    listed = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl("create", "-f", "-", input_text=json.dumps(listed))


def items(cluster: LocalCluster, kind: str, namespace: str, *selector: str) -> list[dict[str, Any]]:
    found = get_json(cluster, kind, "-n", namespace, *selector)
    return list(found["items"]) if found else []


def deployments(cluster: LocalCluster, namespace: str) -> int:
    return len(items(cluster, "deploy", namespace, "-l", MANAGED))


def peers(cluster: LocalCluster, peering: str) -> dict[str, Any]:
    found = get_json(cluster, "clusterkopfpeering", peering)
    return dict(found.get("status") or {}) if found else {}


def all_ready(cluster: LocalCluster, namespace: str, names: list[str]) -> bool:
    objects = {o["metadata"]["name"]: o for o in items(cluster, "pci", namespace)}
    for name in names:
        status = objects.get(name, {}).get("status", {})
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        if not ready or (ready[0]["status"], ready[0].get("observedGeneration")) != ("True", 1):
            return False
        if (status.get("readyReplicas"), status.get("observedGeneration")) != (1, 1):
            return False
    return True


def assert_one_set_of_children_each(
    cluster: LocalCluster, namespace: str, names: list[str]
) -> None:
    """Exactly the children of each object, owned by it alone; one ReplicaSet and one pod each;
    nothing else capinfer manages in the namespace."""
    uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in items(cluster, "pci", namespace)}
    assert sorted(uids) == sorted(names)
    for kind, suffix in CHILD_KINDS.items():
        found = items(cluster, kind, namespace, "-l", MANAGED)
        assert sorted(c["metadata"]["name"] for c in found) == sorted(f"{n}{suffix}" for n in names)
        for child in found:
            references = child["metadata"].get("ownerReferences", [])
            owners = [(o["uid"], o.get("controller")) for o in references]
            owner = child["metadata"]["name"].removesuffix(suffix)
            assert owners == [(uids[owner], True)], f"{kind}/{child['metadata']['name']}: {owners}"
    for name in names:
        sets = items(cluster, "rs", namespace, "-l", f"capinfer.io/inference={name}")
        assert len(sets) == 1, f"{name}: {len(sets)} ReplicaSets"
        pods = items(cluster, "pods", namespace, "-l", f"capinfer.io/inference={name}")
        live = [p for p in pods if "deletionTimestamp" not in p["metadata"]]
        assert len(live) == 1, f"{name}: {len(live)} pods"


# -- two replicas -------------------------------------------------------------------------------
def test_the_standby_replica_takes_over_when_the_active_one_is_killed_mid_burst(
    *,
    cluster: LocalCluster,
    namespace: str,
    roomy_node: None,
    alone: OperatorUnderTest,
    peered_account: tuple[Path, str],
    tmp_path: Path,
) -> None:
    kubeconfig, peering = peered_account
    lifetime_s = 6
    first = OperatorUnderTest(kubeconfig, tmp_path / "first.log", peering=peering,
                              lifetime_s=lifetime_s)  # fmt: skip
    second = OperatorUnderTest(kubeconfig, tmp_path / "second.log", peering=peering,
                               lifetime_s=lifetime_s)  # fmt: skip
    first.start()
    second.start()  # started later: a lower priority, it waits
    try:
        wait_for("the first replica to lead",
                 lambda: "Resuming operations after the pause" in first.log_text())  # fmt: skip
        wait_for("both replicas in the peering", lambda: len(peers(cluster, peering)) == 2)
        names = [f"ha-{i:02d}" for i in range(30)]
        # The burst: half of it, the kill as soon as the first of it is handled, the rest.
        create(cluster, namespace, names[:15])
        wait_for("a first Deployment", lambda: deployments(cluster, namespace) >= 1)
        assert "Resuming operations" not in second.log_text(), "the standby did not wait"
        first.stop(kill=True)
        killed_at = time.monotonic()
        create(cluster, namespace, names[15:])
        at_kill = deployments(cluster, namespace)
        wait_for("the second replica to resume",
                 lambda: "Resuming operations after the pause" in second.log_text())  # fmt: skip
        resumed_s = time.monotonic() - killed_at
        wait_for("a Deployment created after the kill",
                 lambda: deployments(cluster, namespace) > at_kill)  # fmt: skip
        first_new_s = time.monotonic() - killed_at
        wait_for("every object Ready", lambda: all_ready(cluster, namespace, names), timeout_s=240)
        print(
            f"\n{at_kill}/{len(names)} Deployments at the kill; the standby resumed"
            f" {resumed_s:.1f} s after it (keep-alive lifetime {lifetime_s} s), a new Deployment"
            f" followed {first_new_s:.1f} s after it; all Ready"
            f" {time.monotonic() - killed_at:.1f} s after it"
        )
        assert_one_set_of_children_each(cluster, namespace, names)
        assert second.running
        assert second.refusals() == [] and first.refusals() == []
    finally:
        first.stop()
        second.stop()


# -- one replica, killed again and again --------------------------------------------------------
def test_an_operator_killed_ten_times_mid_burst_leaves_every_object_right(
    cluster: LocalCluster,
    namespace: str,
    roomy_node: None,
    restricted_operator: OperatorUnderTest,
) -> None:
    moments = random.Random(20261129)
    names = [f"chaos-{i:02d}" for i in range(30)]
    batches = [names[i::10] for i in range(10)]
    started = time.monotonic()
    for batch in batches:
        create(cluster, namespace, batch)
        time.sleep(moments.uniform(0.0, 2.0))  # into the handling of this batch, or past it
        restricted_operator.stop(kill=True)
        restricted_operator.start()
    wait_for("every object Ready", lambda: all_ready(cluster, namespace, names), timeout_s=240)
    print(f"\n10 kills; all {len(names)} objects Ready {time.monotonic() - started:.1f} s after"
          " the first create")  # fmt: skip
    assert_one_set_of_children_each(cluster, namespace, names)


# -- the API server goes away ---------------------------------------------------------------------
def test_the_operator_recovers_from_an_api_server_restart_by_itself(
    cluster: LocalCluster,
    namespace: str,
    roomy_node: None,
    restricted_operator: OperatorUnderTest,
) -> None:
    pid = restricted_operator.pid
    names = [f"outage-{i:02d}" for i in range(20)]
    create(cluster, namespace, names)
    wait_for("the first Deployments", lambda: deployments(cluster, namespace) >= 1)
    stopped_mark = len(restricted_operator.log_text())
    cluster.stop_apiserver()
    stopped_at = time.monotonic()
    time.sleep(3)
    cluster.start_apiserver()
    print(f"\nthe API server was away {time.monotonic() - stopped_at:.1f} s")
    # Ready, a restarted API server still answers 403 until its authorizer has loaded RBAC:
    # refusals until the operator's own account is allowed again are the restart's.
    wait_for("RBAC to answer for the operator's account again", lambda: cluster.kubectl(
        "--kubeconfig", str(restricted_operator.kubeconfig), "auth", "can-i", "patch",
        "powercappedinferences/status", "-A", check=False).stdout.strip() == "yes")  # fmt: skip
    time.sleep(1)  # what the operator was told before that is in its log by now
    restricted_operator.excuse(stopped_mark, len(restricted_operator.log_text()))
    wait_for("every object Ready", lambda: all_ready(cluster, namespace, names), timeout_s=240)
    print(f"all Ready {time.monotonic() - stopped_at:.1f} s after the API server stopped")
    assert restricted_operator.running and restricted_operator.pid == pid, "it was restarted"
    assert_one_set_of_children_each(cluster, namespace, names)
