"""Fixtures shared by every test tier: the real local Kubernetes control plane.

The cluster is started once per test session from binaries built from the Kubernetes
sources (``capinfer cluster``'s machinery) and stopped at the end. To reuse a cluster you
already started with ``capinfer cluster up --name NAME``, set ``CAPINFER_TEST_CLUSTER=NAME``.
A cluster that cannot be built or started fails the tests that need it: it is never skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from capinfer.localcluster.cluster import LocalCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    reuse = os.environ.get("CAPINFER_TEST_CLUSTER")
    if reuse:
        existing = LocalCluster(reuse)
        if not existing.status().running:
            pytest.fail(f"CAPINFER_TEST_CLUSTER={reuse}, but that cluster is not running")
        yield existing
        return
    state_root = Path(tmp_path_factory.mktemp("clusters"))
    local = LocalCluster(f"test-{os.getpid()}", state_root=state_root)
    local.up(lambda message: print(f"[cluster] {message}", flush=True))
    try:
        yield local
    finally:
        local.down()


CRD = Path(__file__).parents[1] / "crds" / "capinfer.io_powercappedinferences.yaml"


@pytest.fixture(scope="session")
def crd_installed(cluster: LocalCluster) -> None:
    """The PowerCappedInference CRD, applied from ``crds/`` and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established",
        "crd/powercappedinferences.capinfer.io", "--timeout=60s",
    )  # fmt: skip


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace, with its default ServiceAccount, deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name}: the default ServiceAccount never appeared")
        time.sleep(0.2)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator_process(
    cluster: LocalCluster, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """``capinfer-operator`` watching every namespace; yields its log path.

    Per module, never per session: two operators on one cluster would both handle every
    object, each writing the status from its own view under the same field managers. So
    each operator a test starts is stopped before the next module starts its own.
    """
    log_path = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "capinfer_operator.main", "--all-namespaces", "--standalone",
             "--sidecar-image", "capinfer:test", "--log-level", "DEBUG"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        time.sleep(1)
        if process.poll() is not None:
            pytest.fail(f"capinfer-operator exited at once:\n{log_path.read_text()[-3000:]}")
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
