"""A sidecar in Kubernetes mode on the local control plane, set up as the operator sets it up.

Its PowerCappedInference (no replicas: no kubelet runs pods here), exactly the operator's
RBAC for the sidecar (ServiceAccount, Role, RoleBinding, from the operator's own builders),
and a :class:`LocalPod` (tritonserver, the virtual GPU, the sidecar) that talks to the API
server with that ServiceAccount's token.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from capinfer.localcluster.cluster import LocalCluster
from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer_operator.builders import (
    Target,
    build_role,
    build_role_binding,
    build_service_account,
)

POD_NAME = "local-pod-0"


def kube_mode_pod(
    cluster: LocalCluster, namespace: str, name: str, work: Path, cap_watts: float = 180
) -> LocalPod:
    """Apply the object and the sidecar's RBAC; return the pod, not started yet."""
    target = Target(name=name, namespace=namespace)
    obj = {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerCappedInference",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "triton": {
                "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                "model": "simbatch",
                "modelRepository": {"uri": "s3://example/models"},
            },
            "power": {"capWatts": cap_watts},
        },
    }
    for manifest in [obj, build_service_account(target), build_role(target),
                     build_role_binding(target)]:  # fmt: skip
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    kubeconfig = cluster.service_account_kubeconfig(
        namespace, target.sidecar_account, work / "sidecar.kubeconfig"
    )
    return LocalPod(
        work / "pod",
        ["--object", name, "--namespace", namespace, "--pod-name", POD_NAME,
         "--status-interval", "1"],
        model=SimBatchSpec(max_batch_size=8, max_supported_batch_size=256),
        env={"KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip


async def wait_until(what: str, check: Any, timeout_s: float = 60) -> float:
    """Seconds until ``check()`` holds, polled every 20 ms; the test fails after ``timeout_s``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start
