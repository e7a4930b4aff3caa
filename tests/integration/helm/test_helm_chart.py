"""The Helm chart with the real ``helm`` against the local Kubernetes control plane.

Lint and the values schema; every rendering accepted by the API server (server-side dry
run); an install whose ServiceAccount can do what the operator needs and nothing more
(``kubectl auth can-i`` as that account, and the API server's own escalation check on the
Role the operator creates for each sidecar); upgrade and uninstall as the chart README
documents them (CRDs untouched by upgrades and kept on uninstall); NOTES commands that work.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from capinfer.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "capinfer"
SAMPLE = CHART / "examples" / "powercappedinference.yaml"
PCI = "powercappedinferences.capinfer.io"
HELM_TIMEOUT_S = 240


def helm(
    cluster: LocalCluster, *args: str, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(cluster.binaries.path("helm")), *args],
        env=cluster.env(),
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        timeout=HELM_TIMEOUT_S,
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def kube_version(cluster: LocalCluster) -> str:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    return str(version["serverVersion"]["gitVersion"])


def set_args(values: dict[str, str]) -> list[str]:
    return [argument for key, value in values.items() for argument in ("--set", f"{key}={value}")]


def render(cluster: LocalCluster, namespace: str, values: dict[str, str]) -> str:
    return helm(
        cluster,
        "template",
        "capinfer",
        str(CHART),
        "--namespace",
        namespace,
        "--include-crds",
        "--kube-version",
        kube_version(cluster),
        *set_args(values),
    ).stdout


def documents(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def release_name() -> str:
    return f"ci-{uuid.uuid4().hex[:8]}"


@contextmanager
def installed(
    cluster: LocalCluster, namespace: str, values: dict[str, str] | None = None
) -> Iterator[str]:
    """``helm install --wait``; always uninstalled, so cluster-scoped RBAC never leaks."""
    release = release_name()
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        "180s",
        *set_args(values or {}),
    )
    try:
        yield release
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait", check=False)


def operator_account(namespace: str, release: str) -> str:
    return f"system:serviceaccount:{namespace}:{release}-capinfer"


def can_i(cluster: LocalCluster, account: str, verb: str, resource: str, *where: str) -> bool:
    """``where``: ``-n NS``, ``--all-namespaces``, ``--subresource=S`` (never ``TYPE/S``:
    kubectl reads that as an object name)."""
    result = cluster.kubectl(
        "auth", "can-i", verb, resource, f"--as={account}", *where, check=False
    )
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        pytest.fail(f"kubectl auth can-i {verb} {resource}: {result.stderr.strip()}")
    return answer == "yes"


def denied(
    cluster: LocalCluster, account: str, checks: Sequence[tuple[str, str, tuple[str, ...]]]
) -> list[str]:
    return [f"{v} {r} {' '.join(w)}" for v, r, w in checks if can_i(cluster, account, v, r, *w)]


def refused(
    cluster: LocalCluster, account: str, checks: Sequence[tuple[str, str, tuple[str, ...]]]
) -> list[str]:
    return [f"{v} {r} {' '.join(w)}" for v, r, w in checks if not can_i(cluster, account, v, r, *w)]


# ---------------------------------------------------------------------------------------
# lint, schema, rendering


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": "{team-a,team-b}", "logLevel": "debug"},
        {
            "peering.enabled": "true",
            "replicaCount": "2",
            "serviceMonitor.enabled": "true",
            "grafanaDashboard.enabled": "true",
        },
    ],
    ids=["defaults", "namespaced", "everything-on"],
)
def test_helm_lint_passes(cluster: LocalCluster, values: dict[str, str]) -> None:
    result = helm(cluster, "lint", "--strict", str(CHART), *set_args(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"bogus": "1"}, "bogus"),
        ({"image.tagg": "v1"}, "tagg"),
        ({"serviceMonitor.enable": "true"}, "enable"),
        ({"securityContext.privilegd": "true"}, "privilegd"),
        ({"logLevel": "verbose"}, "logLevel"),
        ({"health.port": "80"}, "port"),
        ({"watchNamespaces": "{Not_A_Namespace}"}, "watchNamespaces"),
        ({"replicaCount": "2"}, "enabled"),
    ],
)
def test_values_schema_rejects_bad_values(
    cluster: LocalCluster, values: dict[str, str], named: str
) -> None:
    for command in (["lint"], ["template", "capinfer"]):
        result = helm(cluster, *command, str(CHART), *set_args(values), check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"helm {command[0]} accepted {values}"
        assert "values don't meet the specifications of the schema" in output, output
        assert named in output, output


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": "{NAMESPACE}", "logLevel": "warning"},
        {"peering.enabled": "true", "replicaCount": "2", "grafanaDashboard.enabled": "true"},
    ],
    ids=["defaults", "namespaced", "peering-and-dashboard"],
)
def test_rendered_chart_passes_server_side_dry_run(
    cluster: LocalCluster, namespace: str, values: dict[str, str]
) -> None:
    values = {key: value.replace("NAMESPACE", namespace) for key, value in values.items()}
    manifest = render(cluster, namespace, values)
    kinds = sorted({doc["kind"] for doc in documents(manifest)})
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount"} <= set(kinds), kinds
    # helm installs crds/ before the templates, which may hold objects of those CRDs (the
    # peering object): so does this test, for real, before the dry run of the rest.
    crds = helm(cluster, "show", "crds", str(CHART)).stdout
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=crds)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")  # fmt: skip
    result = cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=capinfer-chart-test",
        # The CRD may already be there, applied by another manager (tests, an install).
        "--force-conflicts",
        "--dry-run=server",
        "-f",
        "-",
        input_text=manifest,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Nothing was created by the dry run.
    leftover = cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout
    assert leftover.strip() == ""


def test_service_monitor_scrapes_the_sidecars_in_the_watched_namespaces(
    cluster: LocalCluster,
) -> None:
    # Rendered only: the monitoring.coreos.com CRDs are not part of the local cluster.
    everywhere = documents(render(cluster, "ops", {"serviceMonitor.enabled": "true"}))
    scoped = documents(
        render(cluster, "ops", {"serviceMonitor.enabled": "true", "watchNamespaces": "{a,b}"})
    )
    (monitor,) = [doc for doc in everywhere if doc["kind"] == "ServiceMonitor"]
    (scoped_monitor,) = [doc for doc in scoped if doc["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert scoped_monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    defaults = documents(render(cluster, "ops", {}))
    assert not [doc for doc in defaults if doc["kind"] in ("ServiceMonitor", "ConfigMap")]


def test_grafana_dashboard_configmap_carries_the_dashboard(cluster: LocalCluster) -> None:
    rendered = documents(render(cluster, "ops", {"grafanaDashboard.enabled": "true"}))
    (configmap,) = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "capinfer.json").read_text())
    assert json.loads(configmap["data"]["capinfer.json"]) == shipped


def test_operator_deployment_is_locked_down(cluster: LocalCluster) -> None:
    rendered = documents(render(cluster, "ops", {}))
    (deployment,) = [doc for doc in rendered if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["capinfer-operator"]
    assert container["image"].endswith(
        ":" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "standalone: never overlap"


# ---------------------------------------------------------------------------------------
# install: RBAC as the operator's ServiceAccount

OPERATOR_NEEDS = [
    ("watch", PCI, ("--all-namespaces",)),
    ("list", PCI, ("--all-namespaces",)),
    ("get", PCI, ()),
    ("patch", PCI, ()),
    ("patch", PCI, ("--subresource=status",)),
    ("create", "events", ()),
    ("create", "deployments.apps", ()),
    ("patch", "deployments.apps", ()),
    ("watch", "deployments.apps", ("--all-namespaces",)),
    ("get", "deployments.apps", ("--subresource=status",)),
    ("update", PCI, ("--subresource=finalizers",)),
    ("create", "services", ()),
    ("patch", "services", ()),
    ("create", "serviceaccounts", ()),
    ("patch", "serviceaccounts", ()),
    ("create", "roles.rbac.authorization.k8s.io", ()),
    ("patch", "roles.rbac.authorization.k8s.io", ()),
    ("create", "rolebindings.rbac.authorization.k8s.io", ()),
    ("patch", "rolebindings.rbac.authorization.k8s.io", ()),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", ()),
]

OPERATOR_MUST_NOT = [
    ("delete", PCI, ()),
    ("create", PCI, ()),
    ("update", PCI, ("--subresource=status",)),
    ("delete", "deployments.apps", ()),
    ("delete", "services", ()),
    ("get", "services", ()),
    ("list", "serviceaccounts", ()),
    ("get", "roles.rbac.authorization.k8s.io", ()),
    ("update", "deployments.apps", ("--subresource=status",)),
    ("update", PCI, ()),
    ("get", "secrets", ()),
    ("list", "secrets", ("--all-namespaces",)),
    ("create", "pods", ()),
    ("create", "pods", ("--subresource=exec",)),
    ("get", "configmaps", ()),
    ("patch", "nodes", ()),
    ("create", "clusterroles.rbac.authorization.k8s.io", ()),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ()),
    ("escalate", "roles.rbac.authorization.k8s.io", ()),
    ("bind", "roles.rbac.authorization.k8s.io", ()),
    ("impersonate", "serviceaccounts", ()),
    ("create", "serviceaccounts", ("--subresource=token",)),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("list", "namespaces", ()),
    ("patch", "clusterkopfpeerings.kopf.dev", ()),
]


APPLY_VERBS = {"create", "patch"}  # server-side apply of an object that may not exist yet
# Every right the operator holds in a namespace it watches; compared exactly.
NAMESPACED_RIGHTS = {
    PCI: {"get", "list", "watch", "patch"},
    f"{PCI}/status": {"get", "patch"},
    f"{PCI}/finalizers": {"update"},
    "events": {"create"},
    "deployments.apps": {"get", "list", "watch"} | APPLY_VERBS,
    "deployments.apps/status": {"get"},
    "services": APPLY_VERBS,
    "serviceaccounts": APPLY_VERBS,
    "roles.rbac.authorization.k8s.io": APPLY_VERBS,
    "rolebindings.rbac.authorization.k8s.io": APPLY_VERBS,
}
CLUSTER_RIGHTS = {"customresourcedefinitions.apiextensions.k8s.io": {"list", "watch"}}
NAMESPACES_RIGHTS = {"namespaces": {"list", "watch"}}
# What every authenticated user may do (ask the API server about itself).
ALWAYS_GRANTED = {
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}
RIGHTS_ROW = re.compile(
    r"^(?P<resource>\S+)\s+\[[^]]*\]\s+\[(?P<names>[^]]*)\]\s+\[(?P<verbs>[^]]*)\]$"
)


def rights(cluster: LocalCluster, account: str, namespace: str) -> dict[str, set[str]]:
    """Every resource right ``account`` holds in ``namespace`` (``kubectl auth can-i --list``)."""
    table = cluster.kubectl("auth", "can-i", "--list", f"--as={account}", "-n", namespace).stdout
    found: dict[str, set[str]] = {}
    for row in table.splitlines()[1:]:
        match = RIGHTS_ROW.match(row.strip()) if not row.startswith(" ") else None
        if match and match["resource"] not in ALWAYS_GRANTED:
            assert match["names"] == "", f"unexpected resourceNames in {row!r}"
            found.setdefault(match["resource"], set()).update(match["verbs"].split())
    return found


def sidecar_role(name: str, namespace: str, extra_rules: list[dict[str, Any]]) -> str:
    """The Role the operator renders for a sidecar (plus, for the negative case, more)."""
    rules = [
        {
            "apiGroups": ["capinfer.io"],
            "resources": ["powercappedinferences"],
            "resourceNames": ["sample"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["capinfer.io"],
            "resources": ["powercappedinferences/status"],
            "resourceNames": ["sample"],
            "verbs": ["patch"],
        },
        *extra_rules,
    ]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }
    return json.dumps(role)


def test_install_grants_the_operator_what_it_needs_and_no_more(
    cluster: LocalCluster, namespace: str
) -> None:
    with installed(cluster, namespace) as release:
        account = operator_account(namespace, release)
        ready = cluster.kubectl(
            "get",
            "deployment",
            f"{release}-capinfer",
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.readyReplicas}",
        ).stdout
        assert ready == "1", "helm --wait returned but the operator pod is not ready"
        assert refused(cluster, account, OPERATOR_NEEDS) == []
        assert denied(cluster, account, OPERATOR_MUST_NOT) == []
        # Exactly these rights, in its own namespace and in any other.
        for where in (namespace, "kube-public"):
            assert rights(cluster, account, where) == NAMESPACED_RIGHTS | CLUSTER_RIGHTS
        # Cluster-wide: the same rights in a namespace the release knows nothing about.
        elsewhere = ("-n", "kube-public")
        assert can_i(cluster, account, "create", "deployments.apps", *elsewhere)
        assert not can_i(cluster, account, "get", "secrets", *elsewhere)

        # The API server's escalation check, for real: the operator may create the Role it
        # gives a sidecar, because it holds those rights itself ...
        created = cluster.kubectl(
            "create",
            "-f",
            "-",
            f"--as={account}",
            "-n",
            namespace,
            input_text=sidecar_role("sidecar", namespace, []),
            check=False,
        )
        assert created.returncode == 0, created.stderr
        # ... and a Role that grants anything more is refused.
        secrets = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
        escalated = cluster.kubectl(
            "create",
            "-f",
            "-",
            f"--as={account}",
            "-n",
            namespace,
            input_text=sidecar_role("greedy", namespace, secrets),
            check=False,
        )
        assert escalated.returncode != 0
        assert "attempting to grant RBAC permissions not currently held" in escalated.stderr
        # Binding the sidecar's Role is allowed for the same reason (no `bind` verb needed).
        bound = cluster.kubectl(
            "create",
            "rolebinding",
            "sidecar",
            "--role=sidecar",
            f"--serviceaccount={namespace}:default",
            f"--as={account}",
            "-n",
            namespace,
            check=False,
        )
        assert bound.returncode == 0, bound.stderr


def test_install_scoped_to_namespaces_grants_nothing_outside_them(
    cluster: LocalCluster, namespace: str
) -> None:
    outside = f"t-out-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", outside)
    try:
        with installed(cluster, namespace, {"watchNamespaces": f"{{{namespace}}}"}) as release:
            account = operator_account(namespace, release)
            inside = ("-n", namespace)
            assert (
                refused(
                    cluster,
                    account,
                    [
                        (verb, resource, (*inside, *(w for w in where if w.startswith("--sub"))))
                        for verb, resource, where in OPERATOR_NEEDS
                        if "customresourcedefinitions" not in resource
                    ],
                )
                == []
            )
            assert rights(cluster, account, namespace) == (
                NAMESPACED_RIGHTS | CLUSTER_RIGHTS | NAMESPACES_RIGHTS
            )
            assert rights(cluster, account, outside) == CLUSTER_RIGHTS | NAMESPACES_RIGHTS
            assert can_i(cluster, account, "list", "namespaces")
            assert can_i(cluster, account, "list", "customresourcedefinitions.apiextensions.k8s.io")
            assert not can_i(cluster, account, "watch", PCI, "--all-namespaces")
            assert not can_i(cluster, account, "watch", PCI, "-n", outside)
            assert not can_i(cluster, account, "create", "deployments.apps", "-n", outside)
            assert not can_i(
                cluster, account, "create", "roles.rbac.authorization.k8s.io", "-n", outside
            )
            kinds = cluster.kubectl(
                "get", "roles,rolebindings", "-n", namespace, "-o", "name"
            ).stdout.split()
            assert f"role.rbac.authorization.k8s.io/{release}-capinfer" in kinds
    finally:
        cluster.kubectl("delete", "namespace", outside, "--wait=false", check=False)


# ---------------------------------------------------------------------------------------
# upgrade, uninstall, NOTES


def crd_state(cluster: LocalCluster) -> dict[str, Any]:
    crd = json.loads(cluster.kubectl("get", "crd", PCI, "-o", "json").stdout)
    return {
        "uid": crd["metadata"]["uid"],
        "resourceVersion": crd["metadata"]["resourceVersion"],
        "labels": crd["metadata"].get("labels", {}),
    }


def operator_args(cluster: LocalCluster, namespace: str, release: str) -> list[str]:
    deployment = json.loads(
        cluster.kubectl(
            "get", "deployment", f"{release}-capinfer", "-n", namespace, "-o", "json"
        ).stdout
    )
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_upgrade_and_uninstall_behave_as_documented(cluster: LocalCluster, namespace: str) -> None:
    marker = f"capinfer.io/test-{uuid.uuid4().hex[:6]}"
    with installed(cluster, namespace) as release:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{PCI}", "--timeout=60s")
        cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
        sample_name = yaml.safe_load(SAMPLE.read_text())["metadata"]["name"]
        # A mark on the CRD that an upgrade touching the CRD would not keep.
        cluster.kubectl("label", "crd", PCI, f"{marker}=kept")
        before = crd_state(cluster)
        assert "--log-level=info" in operator_args(cluster, namespace, release)

        helm(
            cluster,
            "upgrade",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "180s",
        )
        history = json.loads(
            helm(cluster, "history", release, "-n", namespace, "-o", "json").stdout
        )
        assert [entry["revision"] for entry in history] == [1, 2]
        assert history[-1]["status"] == "deployed"
        assert "--log-level=debug" in operator_args(cluster, namespace, release)
        assert crd_state(cluster) == before, "helm upgrade must leave the CRD alone"

        # The documented CRD upgrade step works and is idempotent.
        crds = helm(cluster, "show", "crds", str(CHART)).stdout
        applied = cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input_text=crds
        )
        assert PCI in applied.stdout

    # Uninstalled (the context manager): the release's objects are gone ...
    for kind, where in [
        ("deployment", ("-n", namespace)),
        ("serviceaccount", ("-n", namespace)),
        ("clusterrole", ()),
        ("clusterrolebinding", ()),
    ]:
        result = cluster.kubectl("get", kind, f"{release}-capinfer", *where, check=False)
        assert result.returncode != 0 and "NotFound" in result.stderr, (kind, result.stdout)
    # ... while the CRD and the user's PowerCappedInference stay.
    assert crd_state(cluster)["uid"] == before["uid"]
    cluster.kubectl("get", PCI, sample_name, "-n", namespace)
    cluster.kubectl("label", "crd", PCI, f"{marker}-")


def test_notes_commands_deploy_the_sample(cluster: LocalCluster, namespace: str) -> None:
    # The CRD first, the documented way (the dry run below installs nothing).
    crds = helm(cluster, "show", "crds", str(CHART)).stdout
    cluster.kubectl("apply", "--server-side", "-f", "-", input_text=crds)
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{PCI}", "--timeout=60s")
    # Scoped to the test's namespace, so the NOTES address it instead of "default".
    notes = helm(
        cluster,
        "install",
        release_name(),
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--dry-run=server",
    ).stdout.split("NOTES:", 1)[1]
    heredoc = re.search(r"^\s*(kubectl apply -n \S+ -f - <<'YAML'\n.*?\nYAML)$", notes, re.S | re.M)
    assert heredoc, notes
    kubectl_dir = str(cluster.binaries.path("kubectl").parent)
    env = {**cluster.env(), "PATH": f"{kubectl_dir}:{cluster.env().get('PATH', '')}"}
    for command in [heredoc.group(1), f"kubectl get pci -n {namespace}"]:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
    name = yaml.safe_load(SAMPLE.read_text())["metadata"]["name"]
    assert name in result.stdout
