"""The real operator against the real local control plane with kwok GPU nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pci_helpers import get_json, inference, wait_for

from capinfer.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def merge_patch(cluster: LocalCluster, namespace: str, name: str, patch: dict[str, Any]) -> None:
    cluster.kubectl("patch", "pci", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))


def apply(cluster: LocalCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def pods(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = get_json(cluster, "pods", "-n", namespace, "-l", f"capinfer.io/inference={name}")
    return list(found["items"]) if found else []


def running_pod_names(cluster: LocalCluster, namespace: str, name: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in pods(cluster, namespace, name)
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    }


def status_of(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    obj = get_json(cluster, "pci", name, "-n", namespace)
    return dict(obj.get("status", {})) if obj else {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def test_create_deploys_children_that_become_ready(
    cluster: LocalCluster, namespace: str, operator_process: Path
) -> None:
    apply(cluster, inference("resnet", namespace))
    wait_for("the Deployment", lambda: get_json(cluster, "deploy", "resnet", "-n", namespace))
    obj = get_json(cluster, "pci", "resnet", "-n", namespace)
    for kind, child in [
        ("deployment", "resnet"),
        ("service", "resnet"),
        ("serviceaccount", "resnet-capinfer-sidecar"),
        ("role", "resnet-capinfer-sidecar"),
        ("rolebinding", "resnet-capinfer-sidecar"),
    ]:
        found = get_json(cluster, kind, child, "-n", namespace)
        assert found is not None, f"{kind}/{child} was not created"
        owners = found["metadata"].get("ownerReferences", [])
        assert [o["uid"] for o in owners] == [obj["metadata"]["uid"]], f"{kind} not adopted"

    deployment = get_json(cluster, "deploy", "resnet", "-n", namespace)
    template = deployment["spec"]["template"]["spec"]
    names = [c["name"] for c in template["containers"]]
    assert names == ["triton", "capinfer-sidecar"]
    assert template["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    wait_for("two Running pods", lambda: len(running_pod_names(cluster, namespace, "resnet")) == 2)
    gpu_nodes = {"gpu-node-0", "gpu-node-1"}
    assert {p["spec"]["nodeName"] for p in pods(cluster, namespace, "resnet")} <= gpu_nodes
    wait_for(
        "status.readyReplicas and Ready=True",
        lambda: (
            status_of(cluster, namespace, "resnet").get("readyReplicas") == 2
            and condition(status_of(cluster, namespace, "resnet"), "Ready").get("status") == "True"
        ),
    )
    status = status_of(cluster, namespace, "resnet")
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["selector"] == "capinfer.io/inference=resnet"
    events = get_json(cluster, "events", "-n", namespace)["items"]
    assert any(e["reason"] == "Applied" for e in events), "no Applied event for the user"


def test_a_power_change_does_not_roll_pods_but_an_image_change_does(
    cluster: LocalCluster, namespace: str, operator_process: Path
) -> None:
    apply(cluster, inference("bert", namespace))
    wait_for("two Running pods", lambda: len(running_pod_names(cluster, namespace, "bert")) == 2)
    before = running_pod_names(cluster, namespace, "bert")
    template = get_json(cluster, "deploy", "bert", "-n", namespace)["spec"]["template"]

    patch = {"spec": {"power": {"capWatts": 120, "policy": "BatchSizer", "band": 0.9}}}
    cluster.kubectl(
        "patch", "pci", "bert", "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    wait_for(
        "the operator to handle the new generation",
        lambda: status_of(cluster, namespace, "bert").get("observedGeneration") == 2,
    )
    assert get_json(cluster, "deploy", "bert", "-n", namespace)["spec"]["template"] == template
    assert running_pod_names(cluster, namespace, "bert") == before

    image = {"spec": {"triton": {"image": "nvcr.io/nvidia/tritonserver:24.09-py3"}}}
    cluster.kubectl(
        "patch", "pci", "bert", "-n", namespace, "--type=merge", "-p", json.dumps(image)
    )
    wait_for(
        "new pods from the new template",
        lambda: (
            (current := running_pod_names(cluster, namespace, "bert"))
            and not (current & before)
            and len(current) == 2
        ),
    )


@pytest.mark.parametrize(
    ("power", "field"),
    [
        ({"capWatts": 100, "batchSizes": [8, 4]}, "spec.power.batchSizes"),
        ({"capWatts": 100, "band": 1.5}, "spec.power.band"),
        ({"capWatts": -3}, "spec.power.capWatts"),
        ({"capWatts": 100, "clockControl": {"minMHz": 1500, "maxMHz": 600}}, "clockControl"),
        ({"capWatts": 100, "policy": "Fastest"}, "spec.power.policy"),
    ],
)
def test_the_api_server_rejects_invalid_objects_naming_the_field(
    cluster: LocalCluster, namespace: str, crd_installed: None, power: dict[str, Any], field: str
) -> None:
    bad = inference("bad", namespace, power=power)
    result = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert field in result.stderr


def test_a_spec_the_operator_cannot_honour_is_reported_not_retried(
    cluster: LocalCluster, namespace: str, operator_process: Path
) -> None:
    triton = {
        "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
        "model": "simbatch",
        "modelRepository": {"uri": "s3://example/models"},
        "args": ["--model-control-mode=poll"],
    }
    apply(cluster, inference("conflict", namespace, triton=triton))
    wait_for(
        "Ready=False with reason InvalidSpec",
        lambda: (
            condition(status_of(cluster, namespace, "conflict"), "Ready").get("reason")
            == "InvalidSpec"
        ),
    )
    ready = condition(status_of(cluster, namespace, "conflict"), "Ready")
    assert ready["status"] == "False" and "spec.triton.args" in ready["message"]
    assert get_json(cluster, "deploy", "conflict", "-n", namespace) is None


def test_deleting_the_object_garbage_collects_everything(
    cluster: LocalCluster, namespace: str, operator_process: Path
) -> None:
    apply(cluster, inference("gone", namespace, replicas=1))
    wait_for("a Running pod", lambda: len(running_pod_names(cluster, namespace, "gone")) == 1)
    cluster.kubectl("delete", "pci", "gone", "-n", namespace, "--wait=false")

    def all_gone() -> bool:
        return all(
            get_json(cluster, kind, name, "-n", namespace) is None
            for kind, name in [
                ("deployment", "gone"),
                ("service", "gone"),
                ("role", "gone-capinfer-sidecar"),
                ("rolebinding", "gone-capinfer-sidecar"),
                ("serviceaccount", "gone-capinfer-sidecar"),
            ]
        ) and not pods(cluster, namespace, "gone")

    wait_for("the garbage collector to remove every child", all_gone)


def test_the_sidecar_role_grants_exactly_its_own_object(
    cluster: LocalCluster, namespace: str, operator_process: Path
) -> None:
    apply(cluster, inference("mine", namespace, replicas=0))
    apply(cluster, inference("theirs", namespace, replicas=0))
    wait_for("the sidecar Role", lambda: get_json(cluster, "role", "mine-capinfer-sidecar",
                                                   "-n", namespace) is not None)  # fmt: skip
    who = f"system:serviceaccount:{namespace}:mine-capinfer-sidecar"

    def can(*args: str) -> bool:
        result = cluster.kubectl("auth", "can-i", *args, "-n", namespace, "--as", who, check=False)
        return result.stdout.strip() == "yes"

    wait_for("the RoleBinding to take effect", lambda: can("get", "pci/mine"), timeout_s=30)
    assert can("watch", "pci/mine")
    assert can("patch", "pci/mine", "--subresource=status")
    assert not can("get", "pci/theirs")
    assert not can("patch", "pci/mine")  # the spec is the user's, not the sidecar's
    assert not can("delete", "pci/mine")
    assert not can("list", "pods")
    assert not can("get", "secrets")
