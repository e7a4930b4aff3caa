"""The pods the operator renders are admitted by the API server's PodSecurity ``restricted``.

The namespace is labelled ``pod-security.kubernetes.io/enforce=restricted``: the real
admission plugin of the kube-apiserver refuses any pod that is not non-root, with all
capabilities dropped, no privilege escalation, a RuntimeDefault seccomp profile and only
restricted volume types. The operator renders the Deployment; the controller-manager's
ReplicaSet controller then creates its pods, which the admission plugin checks. A
control pod holding ``SYS_ADMIN`` (what the sidecar used to get) shows the namespace
really enforces.
"""

from __future__ import annotations

import json
import time

import pytest

from capinfer.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
WAIT_S = 120.0


def pci(clock_control: bool, image: str) -> str:
    return json.dumps(
        {
            "apiVersion": "capinfer.io/v1alpha1",
            "kind": "PowerCappedInference",
            "metadata": {"name": f"clocks-{str(clock_control).lower()}"},
            "spec": {
                "replicas": 2,
                "triton": {
                    "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                    "model": "resnet50",
                    "modelRepository": {"uri": "s3://bucket/models"},
                },
                # An object naming its own sidecar image gets no more privilege for it.
                "sidecar": {"image": image},
                "power": {"capWatts": 180, "clockControl": {"enabled": clock_control}},
            },
        }
    )


def test_the_rendered_pods_meet_the_restricted_profile(
    cluster: LocalCluster, operator_process: object, namespace: str
) -> None:
    cluster.kubectl("label", "namespace", namespace, RESTRICTED)
    control = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "escalating", "namespace": namespace},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                }
            ]
        },
    }
    refused = cluster.kubectl("create", "-f", "-", input_text=json.dumps(control), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr

    for clock_control in (True, False):
        cluster.kubectl(
            "apply", "-n", namespace, "-f", "-",
            input_text=pci(clock_control, "registry.example/anything:1"),
        )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while True:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
        names = [p["metadata"]["name"] for p in pods["items"]]
        if len(names) >= 4:
            break
        events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
        assert "violates PodSecurity" not in events, events
        assert time.monotonic() < deadline, f"pods not created: {names}\n{events}"
        time.sleep(0.5)
    print(f"admitted under restricted: {sorted(names)}")
    for pod in pods["items"]:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        triton = next(c for c in spec["containers"] if c["name"] == "triton")
        assert not any(
            m["mountPath"].startswith("/var/run/secrets") for m in triton.get("volumeMounts", [])
        ), "Triton got a token"
