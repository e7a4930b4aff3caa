"""The operator's builders, without a cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from capinfer_operator.builders import (
    SIDECAR_UID,
    TEMPLATE_HASH_ANNOTATION,
    SpecError,
    Target,
    build_children,
    build_deployment,
    build_role,
    build_service,
    template_hash,
)

TARGET = Target(name="resnet", namespace="ml")
SPEC: dict[str, Any] = {
    "replicas": 2,
    "gpusPerReplica": 2,
    "triton": {
        "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
        "model": "resnet50",
        "modelRepository": {"persistentVolumeClaim": {"claimName": "models", "subPath": "repo"}},
        "args": ["--log-verbose=1"],
    },
    "power": {"capWatts": 180, "policy": "Adaptive", "clockControl": {"enabled": True}},
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
}


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_triton_runs_in_explicit_mode_with_the_gpus_requested() -> None:
    triton = containers(build_deployment(TARGET, SPEC, "capinfer:1"))["triton"]
    assert "--model-control-mode=explicit" in triton["args"]
    assert "--load-model=resnet50" in triton["args"]
    assert "--model-repository=/models" in triton["args"]
    assert triton["args"][-1] == "--log-verbose=1"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert triton["volumeMounts"] == [
        {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "repo"}
    ]


def test_sidecar_finds_its_pod_object_and_triton_and_requests_no_gpu() -> None:
    deployment = build_deployment(TARGET, SPEC, "capinfer:1")
    sidecar = containers(deployment)["capinfer-sidecar"]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CAPINFER_OBJECT_NAME"]["value"] == "resnet"
    assert env["CAPINFER_MODEL"]["value"] == "resnet50"
    assert env["CAPINFER_TRITON_GRPC"]["value"] == "127.0.0.1:8001"
    assert "nvidia.com/gpu" not in str(sidecar["resources"])
    assert sidecar["image"] == "capinfer:1"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == TARGET.sidecar_account
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == SPEC["nodeSelector"]


def test_sidecar_startup_probe_covers_long_model_loads() -> None:
    sidecar = containers(build_deployment(TARGET, SPEC, "i"))["capinfer-sidecar"]
    startup = sidecar["startupProbe"]
    assert startup["httpGet"] == {"path": "/startupz", "port": "sidecar-metrics"}
    allowed_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert 600 < allowed_s <= 660  # the default timeout, and the sidecar's own word first
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["CAPINFER_STARTUP_TIMEOUT_S"] == "600"
    assert "initialDelaySeconds" not in sidecar["livenessProbe"]  # the startup probe holds it


def test_the_startup_timeout_is_set_per_object_and_rolls_the_pods() -> None:
    slow = copy.deepcopy(SPEC)
    slow["triton"]["startupTimeoutSeconds"] = 1800
    deployment = build_deployment(TARGET, slow, "i")
    sidecar = containers(deployment)["capinfer-sidecar"]
    startup = sidecar["startupProbe"]
    assert 1800 < startup["periodSeconds"] * startup["failureThreshold"] <= 1860
    assert {e["name"]: e.get("value") for e in sidecar["env"]}["CAPINFER_STARTUP_TIMEOUT_S"] == (
        "1800"
    )
    default = build_deployment(TARGET, SPEC, "i")
    assert template_hash(deployment["spec"]["template"]) != template_hash(
        default["spec"]["template"]
    )


def assert_unprivileged(container: dict[str, Any]) -> None:
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("clock_control", [True, False])
def test_no_container_is_privileged_whatever_clock_control_says(clock_control: bool) -> None:
    spec = copy.deepcopy(SPEC)
    spec["power"]["clockControl"] = {"enabled": clock_control}
    spec["sidecar"] = {"image": "registry.example/anything:latest"}
    pod = build_deployment(TARGET, spec, "i", "tcp://agent:9404")["spec"]["template"]["spec"]
    for container in pod["containers"]:
        assert_unprivileged(container)
    sidecar = containers(build_deployment(TARGET, spec, "i"))["capinfer-sidecar"]
    assert sidecar["securityContext"]["runAsUser"] == SIDECAR_UID
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert not any("hostPath" in volume for volume in pod["volumes"])
    assert "hostNetwork" not in pod and "hostPID" not in pod


def test_triton_gets_no_token_and_the_sidecar_its_own_two() -> None:
    deployment = build_deployment(TARGET, SPEC, "i", "tcp://agent.capinfer-system.svc:9404")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    found = containers(deployment)
    assert found["triton"]["volumeMounts"] == [
        {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "repo"}
    ]
    mounts = {m["name"]: m["mountPath"] for m in found["capinfer-sidecar"]["volumeMounts"]}
    assert mounts == {
        "capinfer-api-token": "/var/run/secrets/kubernetes.io/serviceaccount",
        "capinfer-node-agent-token": "/var/run/secrets/capinfer.io/node-agent",
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    (agent_source,) = volumes["capinfer-node-agent-token"]["projected"]["sources"]
    assert agent_source["serviceAccountToken"]["audience"] == "capinfer-node-agent"
    api_sources = volumes["capinfer-api-token"]["projected"]["sources"]
    assert "audience" not in api_sources[0]["serviceAccountToken"]  # the API server's own
    env = {e["name"]: e.get("value") for e in found["capinfer-sidecar"]["env"]}
    assert env["CAPINFER_NODE_AGENT"] == "tcp://agent.capinfer-system.svc:9404"
    assert env["CAPINFER_NODE_AGENT_TOKEN"] == "/var/run/secrets/capinfer.io/node-agent/token"


def test_without_an_agent_the_sidecar_is_told_none() -> None:
    env = containers(build_deployment(TARGET, SPEC, "i"))["capinfer-sidecar"]["env"]
    assert {"name": "CAPINFER_NODE_AGENT", "value": ""} in env


@pytest.mark.parametrize("name", ["NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"])
def test_triton_cannot_pick_its_own_gpus(name: str) -> None:
    spec = copy.deepcopy(SPEC)
    spec["triton"]["env"] = [{"name": name, "value": "all"}]
    with pytest.raises(SpecError, match=f"spec.triton.env: {name}"):
        build_deployment(TARGET, spec, "i")


def test_power_changes_leave_the_pod_template_alone() -> None:
    before = build_deployment(TARGET, SPEC, "i")["spec"]["template"]
    changed = copy.deepcopy(SPEC)
    changed["power"].update(
        {"capWatts": 120, "policy": "BatchSizer", "band": 0.9, "batchSizes": [1, 4]}
    )
    changed["power"]["clockControl"]["maxMHz"] = 1400
    assert build_deployment(TARGET, changed, "i")["spec"]["template"] == before


def test_image_changes_alter_the_pod_template() -> None:
    changed = copy.deepcopy(SPEC)
    changed["triton"]["image"] = "nvcr.io/nvidia/tritonserver:24.09-py3"
    before = build_deployment(TARGET, SPEC, "i")["spec"]["template"]
    assert build_deployment(TARGET, changed, "i")["spec"]["template"] != before


def test_sidecar_role_is_exactly_its_own_object_and_status() -> None:
    rules = build_role(TARGET)["rules"]
    assert rules == [
        {
            "apiGroups": ["capinfer.io"],
            "resources": ["powercappedinferences"],
            "resourceNames": ["resnet"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["capinfer.io"],
            "resources": ["powercappedinferences/status"],
            "resourceNames": ["resnet"],
            "verbs": ["get", "patch"],
        },
    ]


def test_service_exposes_triton_and_the_sidecar_metrics() -> None:
    ports = {p["name"]: p["port"] for p in build_service(TARGET)["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "sidecar-metrics": 9400}


def test_children_come_account_first_and_service_last() -> None:
    kinds = [c["kind"] for c in build_children(TARGET, SPEC, "i")]
    assert kinds == ["ServiceAccount", "Deployment", "Role", "RoleBinding", "Service"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"triton": {**SPEC["triton"], "args": ["--model-control-mode=poll"]}}, "spec.triton.args"),
        (
            {"triton": {**SPEC["triton"], "resources": {"limits": {"nvidia.com/gpu": "1"}}}},
            "spec.triton.resources",
        ),
    ],
)
def test_specs_the_operator_cannot_honour_name_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        build_deployment(TARGET, {**SPEC, **patch}, "i")


def test_no_sidecar_image_anywhere_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"spec\.sidecar\.image"):
        build_deployment(TARGET, SPEC, "")


def test_the_deployment_carries_the_hash_of_its_pod_template() -> None:
    deployment = build_deployment(TARGET, SPEC, "i")
    annotation = deployment["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    assert annotation == template_hash(deployment["spec"]["template"])
    assert len(annotation) == 16
    replicas = {**SPEC, "replicas": 7, "power": {**SPEC["power"], "capWatts": 90}}
    same = build_deployment(TARGET, replicas, "i")
    assert same["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] == annotation
    clocks_off = {**SPEC, "power": {**SPEC["power"], "clockControl": {"enabled": False}}}
    live = build_deployment(TARGET, clocks_off, "i")  # applied live by the sidecars
    assert live["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] == annotation
    rolled = build_deployment(TARGET, {**SPEC, "gpusPerReplica": 4}, "i")
    assert rolled["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] != annotation


@pytest.mark.parametrize(
    ("repository", "argument", "volume"),
    [
        ({"uri": "s3://bucket/models"}, "s3://bucket/models", None),
        (
            {"persistentVolumeClaim": {"claimName": "repo"}},
            "/models",
            {"name": "models", "persistentVolumeClaim": {"claimName": "repo", "readOnly": True}},
        ),
        (
            {"volume": {"nfs": {"server": "nas", "path": "/triton"}}},
            "/models",
            {"name": "models", "nfs": {"server": "nas", "path": "/triton"}},
        ),
    ],
)
def test_each_model_repository_source(
    repository: dict[str, Any], argument: str, volume: dict[str, Any] | None
) -> None:
    spec = {**SPEC, "triton": {**SPEC["triton"], "modelRepository": repository}}
    deployment = build_deployment(TARGET, spec, "i")
    triton = containers(deployment)["triton"]
    assert f"--model-repository={argument}" in triton["args"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes.get("models") == volume
    mounted = [m["mountPath"] for m in triton["volumeMounts"]]
    assert mounted == ([] if volume is None else ["/models"])
    assert all(m.get("readOnly") for m in triton["volumeMounts"])


def test_a_volume_source_with_two_sources_names_the_field() -> None:
    two = {"volume": {"nfs": {"server": "a", "path": "/"}, "hostPath": {"path": "/m"}}}
    spec = {**SPEC, "triton": {**SPEC["triton"], "modelRepository": two}}
    with pytest.raises(SpecError, match=r"spec\.triton\.modelRepository\.volume"):
        build_deployment(TARGET, spec, "i")


def test_sidecar_sees_the_nodes_gpus_through_nvml_only_and_serves_metrics() -> None:
    sidecar = containers(build_deployment(TARGET, SPEC, "i"))["capinfer-sidecar"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert env["CAPINFER_TRITON_METRICS"] == "http://127.0.0.1:8002/metrics"
    assert env["CAPINFER_METRICS_ADDRESS"] == "0.0.0.0:9400"
    field_refs = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in sidecar["env"]
        if "valueFrom" in e
    }
    assert field_refs == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "NODE_NAME": "spec.nodeName",
    }
    assert sidecar["ports"] == [{"name": "sidecar-metrics", "containerPort": 9400}]


def test_scheduling_fields_reach_the_pod_spec() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    spec = {
        **SPEC,
        "tolerations": [toleration],
        "affinity": affinity,
        "priorityClassName": "inference",
        "terminationGracePeriodSeconds": 120,
    }
    pod = build_deployment(TARGET, spec, "i")["spec"]["template"]["spec"]
    assert pod["tolerations"] == [toleration]
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "inference"
    assert pod["terminationGracePeriodSeconds"] == 120


def test_the_sidecar_role_binding_names_its_account() -> None:
    children = {c["kind"]: c for c in build_children(TARGET, SPEC, "i")}
    binding = children["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "resnet-capinfer-sidecar",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "resnet-capinfer-sidecar", "namespace": "ml"}
    ]
    assert children["ServiceAccount"]["metadata"]["name"] == "resnet-capinfer-sidecar"
    assert all(c["metadata"]["namespace"] == "ml" for c in children.values())


def test_a_host_path_model_repository_is_refused() -> None:
    spec = copy.deepcopy(SPEC)
    spec["triton"]["modelRepository"] = {"volume": {"hostPath": {"path": "/"}}}
    with pytest.raises(SpecError, match="hostPath would give the pod the node's files"):
        build_deployment(TARGET, spec, "i")
