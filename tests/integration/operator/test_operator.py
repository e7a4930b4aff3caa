"""The real operator, with the chart's RBAC, against the real local control plane.

kwok plays the kubelet of two fake nodes with 8 ``nvidia.com/gpu`` each, so the pods the
operator's Deployments create are scheduled, Running and Ready without running anything.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pci_helpers import OperatorUnderTest, get_json, holds_for, inference, wait_for

from capinfer.localcluster.cluster import LocalCluster
from capinfer_operator.builders import TEMPLATE_HASH_ANNOTATION, Target, build_role

pytestmark = pytest.mark.cluster


# -- helpers ----------------------------------------------------------------------------------
def merge_patch(cluster: LocalCluster, namespace: str, name: str, patch: dict[str, Any]) -> None:
    cluster.kubectl("patch", "pci", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))


def apply(cluster: LocalCluster, *manifests: dict[str, Any]) -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(listed))


def pods(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = get_json(cluster, "pods", "-n", namespace, "-l", f"capinfer.io/inference={name}")
    return list(found["items"]) if found else []


def running_pod_names(cluster: LocalCluster, namespace: str, name: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in pods(cluster, namespace, name)
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    }


def replica_sets(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = get_json(cluster, "rs", "-n", namespace, "-l", f"capinfer.io/inference={name}")
    return list(found["items"]) if found else []


def status_of(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    obj = get_json(cluster, "pci", name, "-n", namespace)
    return dict(obj.get("status", {})) if obj else {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def is_ready(cluster: LocalCluster, namespace: str, name: str, generation: int = 1) -> bool:
    status = status_of(cluster, namespace, name)
    ready = condition(status, "Ready")
    return ready.get("status") == "True" and ready.get("observedGeneration") == generation


def event_reasons(cluster: LocalCluster, namespace: str, name: str) -> list[str]:
    events = get_json(
        cluster, "events", "-n", namespace,
        "--field-selector", f"involvedObject.kind=PowerCappedInference,involvedObject.name={name}",
    )  # fmt: skip
    return [e["reason"] for e in events["items"]] if events else []


def table_row(table: str) -> dict[str, str]:
    """The first row of ``kubectl get`` output by column, empty cells included."""
    header, row = table.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


CHILDREN = [
    ("deployment", ""),
    ("service", ""),
    ("serviceaccount", "-capinfer-sidecar"),
    ("role", "-capinfer-sidecar"),
    ("rolebinding", "-capinfer-sidecar"),
]


# -- creation, readiness, events --------------------------------------------------------------
def test_create_deploys_children_that_become_ready(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(cluster, inference("resnet", namespace))
    # The Service is applied last (ClusterIPs are allocated one at a time): once it is
    # there, every child is.
    wait_for("the Service", lambda: get_json(cluster, "service", "resnet", "-n", namespace))
    obj = get_json(cluster, "pci", "resnet", "-n", namespace)
    for kind, suffix in CHILDREN:
        found = get_json(cluster, kind, f"resnet{suffix}", "-n", namespace)
        assert found is not None, f"{kind}/resnet{suffix} was not created"
        owners = found["metadata"].get("ownerReferences", [])
        assert [(o["uid"], o["controller"]) for o in owners] == [(obj["metadata"]["uid"], True)]
        assert found["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "capinfer"

    deployment = get_json(cluster, "deploy", "resnet", "-n", namespace)
    assert TEMPLATE_HASH_ANNOTATION in deployment["metadata"]["annotations"]
    template = deployment["spec"]["template"]["spec"]
    triton, sidecar = template["containers"]
    assert (triton["name"], sidecar["name"]) == ("triton", "capinfer-sidecar")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--model-control-mode=explicit" in triton["args"]
    assert "--load-model=simbatch" in triton["args"]
    assert "--model-repository=s3://example/models" in triton["args"]
    assert sidecar["image"] == "capinfer:test"
    assert template["serviceAccountName"] == "resnet-capinfer-sidecar"
    service = get_json(cluster, "service", "resnet", "-n", namespace)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002, "sidecar-metrics": 9400,
    }  # fmt: skip
    assert service["spec"]["selector"] == {"capinfer.io/inference": "resnet"}
    role = get_json(cluster, "role", "resnet-capinfer-sidecar", "-n", namespace)
    assert role["rules"] == build_role(Target("resnet", namespace))["rules"]

    wait_for("two Running pods", lambda: len(running_pod_names(cluster, namespace, "resnet")) == 2)
    assert {p["spec"]["nodeName"] for p in pods(cluster, namespace, "resnet")} <= {
        "gpu-node-0", "gpu-node-1",
    }  # fmt: skip
    wait_for("Ready=True for generation 1", lambda: is_ready(cluster, namespace, "resnet"))
    status = status_of(cluster, namespace, "resnet")
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["selector"] == "capinfer.io/inference=resnet"
    assert condition(status, "Ready")["reason"] == "PodsReady"
    wait_for("a Created event", lambda: "Created" in event_reasons(cluster, namespace, "resnet"))


def test_printer_columns_and_the_scale_subresource(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(cluster, inference("cols", namespace))
    wait_for("Ready", lambda: is_ready(cluster, namespace, "cols"))
    table = cluster.kubectl("get", "pci", "cols", "-n", namespace, "-o", "wide").stdout
    row = table_row(table)
    assert list(row)[:2] == ["NAME", "CAP"]
    assert {"POWER", "BATCH", "READY", "AGE", "POLICY", "CLOCK"} <= set(row)
    assert (row["CAP"], row["READY"], row["POLICY"]) == ("180", "True", "Adaptive")
    assert row["POWER"] == ""  # no sidecar has reported

    cluster.kubectl("scale", "pci", "cols", "-n", namespace, "--replicas=1")

    def scaled_and_reported() -> bool:
        status = status_of(cluster, namespace, "cols")
        ready = condition(status, "Ready")
        return (
            get_json(cluster, "deploy", "cols", "-n", namespace)["spec"]["replicas"] == 1
            and status.get("observedGeneration") == 2
            and status.get("replicas") == 1
            and (ready.get("observedGeneration"), ready.get("status")) == (2, "True")
        )

    # Once the scale is handled (observedGeneration 2), no write from an older view of the
    # Deployment may follow: the right status must be reached and must stay.
    wait_for("the Deployment scaled to 1 and the status following", scaled_and_reported)
    holds_for("the status to stay on one replica", scaled_and_reported, seconds=3)
    scale = json.loads(cluster.kubectl("get", "--raw", (
        f"/apis/capinfer.io/v1alpha1/namespaces/{namespace}/powercappedinferences/cols/scale"
    )).stdout)  # fmt: skip
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["selector"] == "capinfer.io/inference=cols"


# -- what rolls and what does not -------------------------------------------------------------
def test_a_power_change_does_not_roll_pods_but_an_image_change_does(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(cluster, inference("bert", namespace))
    wait_for("Ready", lambda: is_ready(cluster, namespace, "bert"))
    before = running_pod_names(cluster, namespace, "bert")
    sets_before = [rs["metadata"]["name"] for rs in replica_sets(cluster, namespace, "bert")]
    deployment = get_json(cluster, "deploy", "bert", "-n", namespace)

    power = {"capWatts": 120, "policy": "BatchSizer", "band": 0.9, "batchSizes": [1, 8, 64]}
    merge_patch(cluster, namespace, "bert", {"spec": {"power": power}})
    wait_for("generation 2 handled", lambda: is_ready(cluster, namespace, "bert", generation=2))
    after = get_json(cluster, "deploy", "bert", "-n", namespace)
    assert after["spec"]["template"] == deployment["spec"]["template"]
    assert after["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert [
        rs["metadata"]["name"] for rs in replica_sets(cluster, namespace, "bert")
    ] == sets_before
    assert running_pod_names(cluster, namespace, "bert") == before
    wait_for("a PowerChanged event", lambda: "PowerChanged" in event_reasons(
        cluster, namespace, "bert"))  # fmt: skip
    assert "RollingOut" not in event_reasons(cluster, namespace, "bert")

    image = {"spec": {"triton": {"image": "nvcr.io/nvidia/tritonserver:24.09-py3"}}}
    merge_patch(cluster, namespace, "bert", image)
    wait_for(
        "new pods from the new template",
        lambda: (
            len(current := running_pod_names(cluster, namespace, "bert")) == 2
            and not (current & before)
        ),
    )
    assert len(replica_sets(cluster, namespace, "bert")) == 2

    def rolled_out() -> bool:
        handled = status_of(cluster, namespace, "bert").get("observedGeneration") == 3
        return handled and is_ready(cluster, namespace, "bert", generation=3)

    wait_for("Ready for generation 3", rolled_out)
    # No write from the apply's older view (RollingOut) may land after the rollout's end.
    holds_for("Ready for generation 3 to stay", rolled_out, seconds=3)
    wait_for("a RollingOut event", lambda: "RollingOut" in event_reasons(
        cluster, namespace, "bert"))  # fmt: skip


def test_a_deleted_deployment_comes_back(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(cluster, inference("phoenix", namespace, replicas=1))
    wait_for("Ready", lambda: is_ready(cluster, namespace, "phoenix"))
    first = get_json(cluster, "deploy", "phoenix", "-n", namespace)["metadata"]["uid"]
    cluster.kubectl("delete", "deploy", "phoenix", "-n", namespace, "--wait=false")

    def recreated() -> bool:
        found = get_json(cluster, "deploy", "phoenix", "-n", namespace)
        return found is not None and found["metadata"]["uid"] != first

    wait_for("a new Deployment", recreated)
    wait_for("Ready again", lambda: is_ready(cluster, namespace, "phoenix"))
    wait_for("a Recreated event", lambda: "Recreated" in event_reasons(
        cluster, namespace, "phoenix"))  # fmt: skip


def test_restarting_the_operator_midway_creates_no_duplicates(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    names = [f"burst-{i}" for i in range(6)]
    apply(cluster, *(inference(n, namespace, replicas=1) for n in names))
    wait_for(
        "a first Deployment",
        lambda: bool(
            get_json(
                cluster, "deploy", "-n", namespace, "-l", "app.kubernetes.io/managed-by=capinfer"
            )["items"]
        ),
        timeout_s=60,
    )
    restricted_operator.stop(kill=True)
    # While no operator runs: one object changes its cap, another its image.
    merge_patch(cluster, namespace, "burst-0", {"spec": {"power": {"capWatts": 99}}})
    new_image = "nvcr.io/nvidia/tritonserver:24.09-py3"
    merge_patch(cluster, namespace, "burst-1", {"spec": {"triton": {"image": new_image}}})
    restricted_operator.start()

    for name in names:
        generation = 2 if name in ("burst-0", "burst-1") else 1
        wait_for(f"{name} Ready", lambda n=name, g=generation: is_ready(cluster, namespace, n, g))
    for kind, suffix in CHILDREN:
        found = get_json(cluster, kind, "-n", namespace)["items"]
        ours = sorted(
            item["metadata"]["name"] for item in found
            if item["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "capinfer"
        )  # fmt: skip
        assert ours == sorted(f"{n}{suffix}" for n in names), kind
        assert all(len(item["metadata"].get("ownerReferences", [])) <= 1 for item in found)
    for name in names:
        wait_for(f"{name}: one Running pod", lambda n=name: len(running_pod_names(
            cluster, namespace, n)) == 1)  # fmt: skip
        sets = replica_sets(cluster, namespace, name)
        active = [rs for rs in sets if rs["spec"]["replicas"] > 0]
        assert len(active) == 1, f"{name}: {len(active)} active ReplicaSets"
        # burst-1 rolled if its first template was applied before the kill.
        assert len(sets) <= (2 if name == "burst-1" else 1), name
    running = running_pod_names(cluster, namespace, "burst-1")
    images = {
        p["spec"]["containers"][0]["image"]
        for p in pods(cluster, namespace, "burst-1")
        if p["metadata"]["name"] in running
    }
    assert images == {new_image}


# -- rejection ------------------------------------------------------------------------------
TRITON = {
    "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
    "model": "simbatch",
    "modelRepository": {"uri": "s3://example/models"},
}


def without(section: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != key}


# (id, spec overrides, words the API server's message must hold)
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("negative-cap", {"power": {"capWatts": -3}}, "spec.power.capWatts"),
    ("zero-cap", {"power": {"capWatts": 0}}, "spec.power.capWatts"),
    ("cap-not-a-number", {"power": {"capWatts": "lots"}}, "spec.power.capWatts"),
    ("cap-missing", {"power": {"policy": "Adaptive"}}, "spec.power.capWatts"),
    ("power-missing", {"power": None}, "spec.power"),
    ("band-above-1", {"power": {"capWatts": 100, "band": 1.5}}, "spec.power.band"),
    ("band-1", {"power": {"capWatts": 100, "band": 1}}, "spec.power.band"),
    ("band-0", {"power": {"capWatts": 100, "band": 0}}, "spec.power.band"),
    (
        "ladder-unsorted",
        {"power": {"capWatts": 100, "batchSizes": [8, 4]}},
        "spec.power.batchSizes",
    ),
    ("ladder-repeats", {"power": {"capWatts": 100, "batchSizes": [4, 4]}}, "spec.power.batchSizes"),
    ("ladder-empty", {"power": {"capWatts": 100, "batchSizes": []}}, "spec.power.batchSizes"),
    ("ladder-zero", {"power": {"capWatts": 100, "batchSizes": [0, 2]}}, "spec.power.batchSizes"),
    ("unknown-policy", {"power": {"capWatts": 100, "policy": "Fastest"}}, "spec.power.policy"),
    (
        "clocks-min-above-max",
        {"power": {"capWatts": 100, "clockControl": {"minMHz": 1500, "maxMHz": 600}}},
        "spec.power.clockControl",
    ),
    (
        "clock-below-bound",
        {"power": {"capWatts": 100, "clockControl": {"minMHz": 5}}},
        "spec.power.clockControl.minMHz",
    ),
    (
        "sample-too-fast",
        {"power": {"capWatts": 100, "sampleIntervalMs": 1}},
        "spec.power.sampleIntervalMs",
    ),
    (
        "static-batch-off-ladder",
        {"power": {"capWatts": 100, "batchSizes": [1, 2, 4], "staticBatchSize": 3}},
        "staticBatchSize must be one of batchSizes",
    ),
    ("unknown-power-field", {"power": {"capWatts": 100, "capWats": 5}}, "capWats"),
    ("model-missing", {"triton": without(TRITON, "model")}, "spec.triton.model"),
    ("image-missing", {"triton": without(TRITON, "image")}, "spec.triton.image"),
    ("repository-missing", {"triton": without(TRITON, "modelRepository")}, "modelRepository"),
    (
        "two-repositories",
        {
            "triton": {
                **TRITON,
                "modelRepository": {
                    "uri": "s3://a",
                    "persistentVolumeClaim": {"claimName": "models"},
                },
            }
        },
        "spec.triton.modelRepository",
    ),
    (
        "gpus-in-resources",
        {"triton": {**TRITON, "resources": {"limits": {"nvidia.com/gpu": 2}}}},
        "spec.triton.resources",
    ),
    ("pull-policy", {"triton": {**TRITON, "imagePullPolicy": "Sometimes"}}, "imagePullPolicy"),
    ("no-gpus", {"gpusPerReplica": 0}, "spec.gpusPerReplica"),
    ("negative-replicas", {"replicas": -1}, "spec.replicas"),
    ("replicas-not-a-number", {"replicas": "two"}, "spec.replicas"),
    ("slo-zero", {"latencySLO": {"p99Ms": 0}}, "spec.latencySLO.p99Ms"),
    ("grace-too-short", {"terminationGracePeriodSeconds": 1}, "terminationGracePeriodSeconds"),
    ("sidecar-log-level", {"sidecar": {"logLevel": "LOUD"}}, "spec.sidecar.logLevel"),
]


@pytest.mark.parametrize(
    ("overrides", "named"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_the_api_server_rejects_malformed_objects_naming_the_field(
    cluster: LocalCluster,
    namespace: str,
    crd_installed: None,
    overrides: dict[str, Any],
    named: str,
) -> None:
    bad = inference("bad", namespace)
    for key, value in overrides.items():
        if value is None:
            del bad["spec"][key]
        else:
            bad["spec"][key] = value
    result = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(bad), check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(bad['spec'])}"
    assert named in result.stderr
    assert get_json(cluster, "pci", "bad", "-n", namespace) is None


def test_a_name_that_cannot_name_a_service_is_rejected(
    cluster: LocalCluster, namespace: str, crd_installed: None
) -> None:
    dotted = inference("resnet.v2", namespace)
    result = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(dotted), check=False)
    assert result.returncode != 0
    assert "metadata.name must be a DNS-1035 label" in result.stderr


def test_the_model_cannot_change_after_creation(
    cluster: LocalCluster, namespace: str, crd_installed: None
) -> None:
    apply(cluster, inference("fixed", namespace, replicas=0))
    patch = json.dumps({"spec": {"triton": {"model": "bert"}}})
    result = cluster.kubectl(
        "patch", "pci", "fixed", "-n", namespace, "--type=merge", "-p", patch, check=False
    )
    assert result.returncode != 0
    assert "spec.triton.model" in result.stderr and "immutable" in result.stderr


def test_specs_the_operator_cannot_honour_are_reported_not_retried(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    conflicting = {**TRITON, "args": ["--model-control-mode=poll"]}
    # An NFS source without a server: the schema keeps volume sources open, the API server
    # rejects the Deployment. (hostPath is refused by the schema itself.)
    unmountable = {**TRITON, "modelRepository": {"volume": {"nfs": {}}}}
    apply(
        cluster,
        inference("conflict", namespace, replicas=0, triton=conflicting),
        inference("unmountable", namespace, replicas=0, triton=unmountable),
    )

    def refused(name: str, reason: str) -> bool:
        return condition(status_of(cluster, namespace, name), "Ready").get("reason") == reason

    wait_for("InvalidSpec", lambda: refused("conflict", "InvalidSpec"))
    wait_for("ApplyRejected", lambda: refused("unmountable", "ApplyRejected"))
    conflict = condition(status_of(cluster, namespace, "conflict"), "Ready")
    assert conflict["status"] == "False" and "spec.triton.args" in conflict["message"]
    assert get_json(cluster, "deploy", "conflict", "-n", namespace) is None
    unmountable_ready = condition(status_of(cluster, namespace, "unmountable"), "Ready")
    assert "nfs.server" in unmountable_ready["message"]
    for name, reason in [("conflict", "InvalidSpec"), ("unmountable", "ApplyRejected")]:
        wait_for(f"a {reason} event", lambda n=name, r=reason: r in event_reasons(
            cluster, namespace, n))  # fmt: skip

    # Not retried: the handler gave up on this generation for good.
    log = restricted_operator.log_text()
    assert log.count("spec.triton.args") >= 1
    assert "permanently" in log

    # Fixed by the user: handled at once.
    merge_patch(cluster, namespace, "conflict", {"spec": {"triton": {"args": ["--log-verbose=1"]}}})
    wait_for("Ready after the fix", lambda: is_ready(cluster, namespace, "conflict", generation=2))


# -- the sidecars' reports ------------------------------------------------------------------
def test_status_aggregates_the_sidecars_reports_and_drops_silent_pods(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(cluster, inference("agg", namespace, replicas=0))
    wait_for("Ready", lambda: is_ready(cluster, namespace, "agg"))
    fresh = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reports = [
        {"name": "agg-a", "powerWatts": 150.0, "capWatts": 180, "batchSize": 32,
         "smClockMHz": 1410, "clockControl": True, "lastUpdate": fresh},
        {"name": "agg-b", "powerWatts": 190.0, "capWatts": 180, "batchSize": 64,
         "clockControl": True, "lastUpdate": fresh},
        {"name": "agg-gone", "powerWatts": 999.0, "capWatts": 180, "lastUpdate": old},
    ]  # fmt: skip

    def report(entries: list[dict[str, Any]]) -> None:
        cluster.kubectl(
            "patch", "pci", "agg", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"pods": entries}}),
        )  # fmt: skip

    report(reports)
    wait_for(
        "the silent pod's entry removed",
        lambda: (
            [p["name"] for p in status_of(cluster, namespace, "agg").get("pods", [])]
            == ["agg-a", "agg-b"]
        ),
    )
    wait_for("aggregates", lambda: status_of(cluster, namespace, "agg").get("powerWatts") == 340.0)
    status = status_of(cluster, namespace, "agg")
    assert (status["capWatts"], status["batchSize"], status["smClockMHz"]) == (180, 32, 1410)
    cap_met = condition(status, "CapMet")
    assert (cap_met["status"], cap_met["reason"]) == ("False", "OverCap")
    assert "agg-b" in cap_met["message"] and "agg-a" not in cap_met["message"]
    assert condition(status, "ClockControl")["status"] == "True"

    reports[1]["powerWatts"] = 175.0
    report(reports[:2])
    wait_for(
        "CapMet=True", lambda: condition(status_of(cluster, namespace, "agg"), "CapMet").get(
            "status") == "True",
    )  # fmt: skip


def test_latency_slo_condition_says_when_the_cap_wins(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(cluster, inference("slo", namespace, replicas=0, latencySLO={"p99Ms": 50}))
    wait_for("Ready", lambda: is_ready(cluster, namespace, "slo"))
    fresh = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reports = [
        {"name": "slo-a", "capWatts": 180, "p99LatencyMs": 30.0, "latencySLOMs": 50,
         "sloMisses": 0, "lastUpdate": fresh},
        {"name": "slo-b", "capWatts": 180, "p99LatencyMs": 80.0, "latencySLOMs": 50,
         "sloMisses": 2, "sloMessage": "p99 80.0 ms is over the SLO 50 ms: the cap holds the"
         " SM clock at 900 MHz, below 1410 MHz; the cap wins", "lastUpdate": fresh},
    ]  # fmt: skip
    cluster.kubectl(
        "patch", "pci", "slo", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"pods": reports}}),
    )  # fmt: skip

    def latency_reason() -> Any:
        return condition(status_of(cluster, namespace, "slo"), "LatencySLO").get("reason")

    wait_for("the LatencySLO condition", lambda: latency_reason() == "CapWins")
    status = status_of(cluster, namespace, "slo")
    assert (status["p99LatencyMs"], status["sloMisses"]) == (80.0, 2)
    latency = condition(status, "LatencySLO")
    assert latency["status"] == "False" and "slo-b" in latency["message"]
    assert condition(status, "CapMet")["type"] == "CapMet", "the other conditions stay"


# -- deletion and the sidecar's permissions -------------------------------------------------
def test_deleting_the_object_garbage_collects_everything(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(cluster, inference("gone", namespace, replicas=1))
    wait_for("a Running pod", lambda: len(running_pod_names(cluster, namespace, "gone")) == 1)
    cluster.kubectl("delete", "pci", "gone", "-n", namespace, "--wait=false")

    def all_gone() -> bool:
        return all(
            get_json(cluster, kind, f"gone{suffix}", "-n", namespace) is None
            for kind, suffix in CHILDREN
        ) and not pods(cluster, namespace, "gone")

    wait_for("the garbage collector to remove every child", all_gone)
    time.sleep(2)  # a Deployment event arriving late must not bring the children back
    assert get_json(cluster, "deploy", "gone", "-n", namespace) is None


def test_the_sidecar_role_grants_exactly_its_own_object(
    cluster: LocalCluster, namespace: str, restricted_operator: OperatorUnderTest
) -> None:
    apply(
        cluster,
        inference("mine", namespace, replicas=0),
        inference("theirs", namespace, replicas=0),
    )
    wait_for("the sidecar RoleBinding", lambda: get_json(
        cluster, "rolebinding", "mine-capinfer-sidecar", "-n", namespace) is not None)  # fmt: skip
    who = f"system:serviceaccount:{namespace}:mine-capinfer-sidecar"

    def can(*args: str) -> bool:
        result = cluster.kubectl("auth", "can-i", *args, "-n", namespace, "--as", who, check=False)
        return result.stdout.strip() == "yes"

    wait_for("the RoleBinding to take effect", lambda: can("get", "pci/mine"), timeout_s=30)
    assert can("watch", "pci/mine")
    assert can("list", "pci/mine")
    assert can("patch", "pci/mine", "--subresource=status")
    assert not can("get", "pci/theirs")
    assert not can("patch", "pci/theirs", "--subresource=status")
    assert not can("patch", "pci/mine")  # the spec is the user's, not the sidecar's
    assert not can("update", "pci/mine", "--subresource=status")
    assert not can("delete", "pci/mine")
    assert not can("create", "pci")
    assert not can("list", "pods")
    assert not can("get", "secrets")
