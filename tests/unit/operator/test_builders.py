"""The operator's builders, without a cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from capinfer_operator.builders import (
    SIDECAR_UID,
    SpecError,
    Target,
    build_children,
    build_deployment,
    build_role,
    build_service,
)
from capinfer_operator.status import aggregate_pods, readiness, updated_conditions

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


def test_sidecar_privileges_follow_clock_control() -> None:
    with_clocks = containers(build_deployment(TARGET, SPEC, "i"))["capinfer-sidecar"]
    assert with_clocks["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["SYS_ADMIN"],
    }
    without = copy.deepcopy(SPEC)
    without["power"]["clockControl"] = {"enabled": False}
    plain = containers(build_deployment(TARGET, without, "i"))["capinfer-sidecar"]
    context = plain["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == SIDECAR_UID
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False


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


def test_children_come_rbac_first() -> None:
    kinds = [c["kind"] for c in build_children(TARGET, SPEC, "i")]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"]


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


def test_readiness_and_aggregates() -> None:
    counts, ready = readiness({"replicas": 2, "readyReplicas": 1}, 2, generation=3, now="t")
    assert counts == {"replicas": 2, "readyReplicas": 1}
    assert (ready["status"], ready["reason"]) == ("False", "PodsNotReady")
    pods = [
        {"name": "a", "powerWatts": 170.0, "capWatts": 180, "batchSize": 64, "smClockMHz": 1300},
        {"name": "b", "powerWatts": 185.0, "capWatts": 180, "batchSize": 32, "clockControl": False},
    ]
    fields, conditions = aggregate_pods(pods, 180, generation=3, now="t")
    assert fields == {"capWatts": 180, "powerWatts": 355.0, "batchSize": 32, "smClockMHz": 1300}
    by_type = {c["type"]: c for c in conditions}
    assert by_type["CapMet"]["status"] == "False" and "b" in by_type["CapMet"]["message"]
    assert by_type["ClockControl"]["status"] == "False"


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "early"}]
    _, same = readiness({"replicas": 1, "readyReplicas": 1}, 1, generation=1, now="late")
    assert updated_conditions(old, [same])[0]["lastTransitionTime"] == "early"
    _, flipped = readiness({"replicas": 1, "readyReplicas": 0}, 1, generation=1, now="late")
    assert updated_conditions(old, [flipped])[0]["lastTransitionTime"] == "late"
