"""The local control plane is a real Kubernetes: schema validation, scheduling, GC, RBAC."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from capinfer.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.capinfer.io"},
    "spec": {
        "group": "test.capinfer.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["capWatts"],
                                "properties": {
                                    "capWatts": {"type": "integer", "minimum": 50},
                                    "sizes": {
                                        "type": "array",
                                        "maxItems": 16,
                                        "items": {"type": "integer"},
                                        "x-kubernetes-validations": [
                                            {"rule": "self.isSorted()", "message": "must ascend"}
                                        ],
                                    },
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster: LocalCluster, manifest: dict[str, Any], *extra: str) -> None:
    cluster.kubectl("apply", *extra, "-f", "-", input_text=json.dumps(manifest))


def test_api_server_reports_the_version_it_was_built_at(cluster: LocalCluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["serverVersion"]["minor"].isdigit()
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]


def test_fake_gpu_nodes_advertise_gpus_and_are_ready(cluster: LocalCluster) -> None:
    nodes = get_json(cluster, "nodes")["items"]
    assert len(nodes) >= 2
    for node in nodes:
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 1
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"]
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True"


def test_structural_crd_rejects_objects_that_break_it(
    cluster: LocalCluster, namespace: str
) -> None:
    apply(cluster, WIDGET_CRD, "--server-side")
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.capinfer.io", "--timeout=60s"
    )

    def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "test.capinfer.io/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }

    apply(cluster, widget("good", {"capWatts": 180, "sizes": [1, 2, 4]}))
    stored = get_json(cluster, "widget", "good", "-n", namespace)
    assert stored["spec"]["capWatts"] == 180

    too_low = cluster.kubectl(
        "apply", "-f", "-", input_text=json.dumps(widget("low", {"capWatts": 10})), check=False
    )
    assert too_low.returncode != 0
    assert "spec.capWatts" in too_low.stderr

    unsorted = widget("unsorted", {"capWatts": 100, "sizes": [4, 2]})
    rejected = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(unsorted), check=False)
    assert rejected.returncode != 0
    assert "spec.sizes" in rejected.stderr and "must ascend" in rejected.stderr

    unknown = widget("unknown", {"capWatts": 100, "colour": "red"})
    pruned = cluster.kubectl(
        "apply", "--validate=strict", "-f", "-", input_text=json.dumps(unknown), check=False
    )
    assert pruned.returncode != 0
    assert "colour" in pruned.stderr


def gpu_deployment(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "example.invalid/server:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ]
                },
            },
        },
    }


def test_gpu_pods_are_scheduled_on_fake_gpu_nodes_and_garbage_collected(
    cluster: LocalCluster, namespace: str
) -> None:
    apply(cluster, gpu_deployment("gpu-app", namespace, replicas=2))
    gpu_nodes = {
        node["metadata"]["name"]
        for node in get_json(cluster, "nodes")["items"]
        if "nvidia.com/gpu" in node["status"]["allocatable"]
    }

    def pods() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = get_json(
            cluster, "pods", "-n", namespace, "-l", "app=gpu-app"
        )["items"]
        return items

    def all_running() -> bool:
        current = pods()
        return len(current) == 2 and all(p["status"].get("phase") == "Running" for p in current)

    wait_for("two GPU pods Running", all_running)
    for pod in pods():
        assert pod["spec"]["nodeName"] in gpu_nodes

    deployment = get_json(cluster, "deployment", "gpu-app", "-n", namespace)
    wait_for(
        "the Deployment to count its ready replicas",
        lambda: (
            get_json(cluster, "deployment", "gpu-app", "-n", namespace)["status"].get(
                "readyReplicas"
            )
            == 2
        ),
    )
    assert deployment["metadata"]["name"] == "gpu-app"

    cluster.kubectl("delete", "deployment", "gpu-app", "-n", namespace, "--wait=false")
    wait_for("the garbage collector to delete the pods", lambda: not pods())


def test_more_gpus_than_any_node_has_stay_pending(cluster: LocalCluster, namespace: str) -> None:
    manifest = gpu_deployment("greedy", namespace, replicas=1)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "64"
    apply(cluster, manifest)

    def unschedulable() -> bool:
        events = get_json(cluster, "events", "-n", namespace)["items"]
        return any(e.get("reason") == "FailedScheduling" for e in events)

    wait_for("the scheduler to refuse the pod", unschedulable)
    pod = get_json(cluster, "pods", "-n", namespace, "-l", "app=greedy")["items"][0]
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]


def test_rbac_denies_a_service_account_without_a_role(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    who = f"system:serviceaccount:{namespace}:nobody"
    denied = cluster.kubectl(
        "auth", "can-i", "list", "pods", "-n", namespace, "--as", who, check=False
    )
    assert denied.stdout.strip() == "no"
    forbidden = cluster.kubectl("get", "pods", "-n", namespace, "--as", who, check=False)
    assert forbidden.returncode != 0 and "forbidden" in forbidden.stderr.lower()

    cluster.kubectl(
        "create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace
    )
    cluster.kubectl(
        "create", "rolebinding", "nobody-reads", "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody", "-n", namespace,
    )  # fmt: skip
    wait_for(
        "the RoleBinding to take effect",
        lambda: (
            cluster.kubectl(
                "auth", "can-i", "list", "pods", "-n", namespace, "--as", who, check=False
            ).stdout.strip()
            == "yes"
        ),
        timeout_s=30,
    )
    still_denied = cluster.kubectl(
        "auth", "can-i", "delete", "pods", "-n", namespace, "--as", who, check=False
    )
    assert still_denied.stdout.strip() == "no"
