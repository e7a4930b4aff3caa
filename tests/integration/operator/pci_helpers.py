"""Helpers for tests that drive PowerCappedInference objects through kubectl."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from capinfer.localcluster.cluster import LocalCluster


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def get_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def inference(name: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": 2,
        "triton": {
            "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "model": "simbatch",
            "modelRepository": {"uri": "s3://example/models"},
        },
        "power": {"capWatts": 180},
    }
    spec.update(overrides)
    return {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerCappedInference",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
