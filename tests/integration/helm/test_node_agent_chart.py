"""The chart's node agent under the real ``helm``: installed on the GPU nodes with its own
minimal rights, wired to the operator, and gone after uninstall.

kwok runs the DaemonSet's pods (no container runtime): what is checked is what the API
server holds -- the DaemonSet scheduled and ready on both GPU nodes, the node-local Service,
the operator told where to find it, and what the agent's ServiceAccount may do
(``kubectl auth can-i`` as that account).
"""

from __future__ import annotations

import json

import pytest
from test_helm_chart import can_i, denied, documents, installed, refused, render

from capinfer.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

ALL = ("--all-namespaces",)
AGENT_NEEDS = [
    ("create", "tokenreviews.authentication.k8s.io", ()),
    ("get", "pods", ALL),
    ("list", "pods", ALL),
    ("watch", "pods", ALL),
]
AGENT_MUST_NOT = [
    ("create", "pods", ALL),
    ("delete", "pods", ALL),
    ("patch", "pods", ALL),
    ("create", "pods", (*ALL, "--subresource=exec")),
    ("get", "pods", (*ALL, "--subresource=log")),
    ("get", "secrets", ALL),
    ("list", "configmaps", ALL),
    ("create", "serviceaccounts", (*ALL, "--subresource=token")),
    ("create", "subjectaccessreviews.authorization.k8s.io", ()),
    ("get", "nodes", ()),
    ("patch", "powercappedinferences.capinfer.io", ALL),
    ("impersonate", "serviceaccounts", ALL),
    ("create", "daemonsets.apps", ALL),
]


def test_the_agent_installs_on_gpu_nodes_with_minimal_rights_and_uninstalls(
    cluster: LocalCluster, namespace: str
) -> None:
    with installed(cluster, namespace) as release:
        name = f"{release}-capinfer-node-agent"
        daemonset = json.loads(
            cluster.kubectl("get", "daemonset", name, "-n", namespace, "-o", "json").stdout
        )
        status = daemonset["status"]
        print(f"node agent: {status.get('numberReady')}/{status['desiredNumberScheduled']} ready")
        assert status["desiredNumberScheduled"] == 2  # gpu-node-0 and gpu-node-1
        assert status.get("numberReady") == 2
        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        assert container["image"].startswith("ghcr.io/capinfer/capinfer:")
        assert container["securityContext"]["capabilities"] == {
            "drop": ["ALL"],
            "add": ["SYS_ADMIN"],
        }
        assert container["securityContext"]["privileged"] is False
        service = json.loads(
            cluster.kubectl("get", "service", name, "-n", namespace, "-o", "json").stdout
        )
        assert service["spec"]["internalTrafficPolicy"] == "Local"
        operator = json.loads(
            cluster.kubectl(
                "get", "deployment", f"{release}-capinfer", "-n", namespace, "-o", "json"
            ).stdout
        )
        env = {
            e["name"]: e.get("value")
            for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["CAPINFER_NODE_AGENT_ADDRESS"] == f"tcp://{name}.{namespace}.svc:9404"

        account = f"system:serviceaccount:{namespace}:{name}"
        assert refused(cluster, account, AGENT_NEEDS) == []
        assert denied(cluster, account, AGENT_MUST_NOT) == []
        assert not can_i(cluster, account, "get", "pods", "-n", namespace, "--subresource=log")

    for kind, where in [
        ("daemonset", ("-n", namespace)),
        ("service", ("-n", namespace)),
        ("serviceaccount", ("-n", namespace)),
        ("clusterrole", ()),
        ("clusterrolebinding", ()),
    ]:
        result = cluster.kubectl("get", kind, name, *where, check=False)
        assert result.returncode != 0 and "NotFound" in result.stderr, (kind, result.stdout)


def test_without_the_agent_nothing_of_it_is_rendered(cluster: LocalCluster) -> None:
    manifest = render(cluster, "capinfer-system", {"nodeAgent.enabled": "false"})
    names = [doc["metadata"]["name"] for doc in documents(manifest)]
    assert not [n for n in names if n.endswith("node-agent")], names
    assert "CAPINFER_NODE_AGENT_ADDRESS" not in manifest
