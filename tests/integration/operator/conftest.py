"""The operator under test runs with the chart's RBAC, not as cluster-admin.

The chart's ClusterRole, ClusterRoleBinding and ServiceAccount (``helm template``, so the
chart and these tests share one definition of what the operator may do) are applied to the
cluster; ``capinfer-operator`` then runs here as a subprocess with a token of that
ServiceAccount and nothing else. Any refusal by the API server shows in its log, and every
test that uses it fails when one does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pci_helpers import OperatorUnderTest, render_operator_rbac

from capinfer.localcluster.cluster import LocalCluster


@pytest.fixture(scope="session")
def operator_account(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A kubeconfig holding only a token of the chart's operator ServiceAccount."""
    release = f"it-{uuid.uuid4().hex[:6]}"
    namespace = f"capinfer-{release}"
    cluster.kubectl("create", "namespace", namespace)
    rbac = render_operator_rbac(cluster, release, namespace)
    cluster.kubectl("apply", "-f", "-", input_text=rbac)
    account = f"{release}-capinfer"
    path = Path(tmp_path_factory.mktemp("operator-account")) / "kubeconfig"
    try:
        yield cluster.service_account_kubeconfig(namespace, account, path)
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=false", input_text=rbac, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")  # one operator at a time on the cluster: see operator_process
def restricted_operator(
    crd_installed: None, operator_account: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorUnderTest]:
    log_path = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    operator = OperatorUnderTest(operator_account, log_path)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


@pytest.fixture(autouse=True)
def _never_refused(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that drove the operator fails if the API server refused it anything."""
    if "restricted_operator" not in request.fixturenames:
        yield
        return
    operator: OperatorUnderTest = request.getfixturevalue("restricted_operator")
    start = len(operator.log_text())
    yield
    refusals = operator.refusals(start)
    assert refusals == [], "the operator's RBAC refused:\n" + "\n".join(refusals)
