"""The Helm chart's files, checked without a cluster or a ``helm`` binary.

The chart carries a byte-identical copy of ``crds/``; its appVersion is the package
version; its values are all documented, secure by default and closed by the schema; its
dashboard queries only metrics the sidecar exports. Rendering and installing the chart
with the real ``helm`` is in ``tests/integration/helm/``.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from capinfer_sidecar.loop import LoopSnapshot
from capinfer_sidecar.metrics import SnapshotCollector

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
CHART = REPO / "helm" / "capinfer"
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*):")
METRIC = re.compile(r"\bcapinfer_[a-z_]+\b")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Kubernetes types the chart passes through unchanged; the schema closes only their top level.
PASS_THROUGH = {"nodeAffinity", "podAffinity", "podAntiAffinity"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(CHART / "values.yaml")
    return loaded


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def test_chart_crds_are_byte_identical_copies_of_the_single_source() -> None:
    sources = {path.name: path.read_bytes() for path in sorted(CRDS.glob("*.yaml"))}
    copies = {path.name: path.read_bytes() for path in sorted((CHART / "crds").glob("*.yaml"))}
    assert sources, "crds/ holds no CRD: the chart would install none"
    assert copies.keys() == sources.keys(), "refresh with: cp crds/*.yaml helm/capinfer/crds/"
    for name, content in sources.items():
        assert copies[name] == content, f"helm/capinfer/crds/{name} differs: cp crds/{name} …"


def test_app_version_is_the_package_version() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    operator = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())
    package = operator["project"]["version"]
    assert chart["appVersion"] == package


def object_schemas(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, child in node.items():
            yield from object_schemas(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from object_schemas(child, f"{path}[{index}]")


def test_values_schema_closes_every_object() -> None:
    checked = 0
    for path, node in object_schemas(schema()):
        if path.rsplit(".", 1)[-1] in PASS_THROUGH:
            continue
        closed = node.get("additionalProperties")
        if "properties" in node:
            assert closed is False, f"{path}: additionalProperties must be false"
        else:
            assert isinstance(closed, dict), f"{path}: a map must type its values"
        checked += 1
    assert checked > 20


def test_every_default_value_is_declared_by_the_schema() -> None:
    def walk(value: dict[str, Any], node: dict[str, Any], path: str) -> None:
        properties = node.get("properties")
        if properties is None:
            return
        unknown = set(value) - set(properties)
        assert not unknown, f"{path}: {sorted(unknown)} missing from values.schema.json"
        for key, child in value.items():
            if isinstance(child, dict):
                walk(child, properties[key], f"{path}.{key}")

    walk(values(), schema(), "values")
    # And the other way round at the top level: no schema key without a documented default.
    assert set(schema()["properties"]) == set(values())


def test_every_values_key_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        above = [previous.strip() for previous in lines[:number] if previous.strip()]
        if not above or not above[-1].startswith("#"):
            undocumented.append(f"line {number + 1}: {match['key']}")
    assert not undocumented, undocumented


def test_defaults_are_secure() -> None:
    defaults = values()
    pod = defaults["podSecurityContext"]
    container = defaults["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert defaults["rbac"]["create"] is True
    assert defaults["serviceMonitor"]["enabled"] is False, "needs Prometheus Operator: opt in"


def test_the_chart_runs_as_the_images_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (REPO / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile sets no numeric USER uid:gid"
    uid, gid = users[-1]
    pod = values()["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))


def exported_samples() -> list[Sample]:
    """Every series the sidecar exports, from its real collector, labelled as it labels them."""
    snapshot = LoopSnapshot(
        now_s=1.0,
        cap_watts=200.0,
        power_watts=190.0,
        mean_power_watts=185.0,
        energy_joules=1000.0,
        batch_size=16,
        requested_batch_size=16,
        sm_clock_mhz=1500,
        inferences_per_second=400.0,
        seconds_over_cap=0.0,
        violations=0,
        reloads=1,
        reload_failures=0,
        policy="Adaptive",
        policy_state="settled",
        reason="",
        clock_control=True,
        degraded=None,
    )
    registry = CollectorRegistry()
    SnapshotCollector({"model": "resnet50", "pod": "resnet50-0"}).register(registry).update(
        snapshot
    )
    text = generate_latest(registry).decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def dashboard_targets() -> list[dict[str, str]]:
    dashboard = json.loads((CHART / "dashboards" / "capinfer.json").read_text())
    return [target for panel in dashboard["panels"] for target in panel["targets"]]


def dashboard_queries() -> list[str]:
    return [target["expr"] for target in dashboard_targets()]


def test_dashboard_queries_only_metrics_the_sidecar_exports() -> None:
    queried = {name for expr in dashboard_queries() for name in METRIC.findall(expr)}
    exported = {sample.name for sample in exported_samples()}
    assert queried <= exported, f"not exported by the sidecar: {sorted(queried - exported)}"
    # What the dashboard is for: power vs cap, batch size, clock, throughput.
    assert {
        "capinfer_gpu_power_watts",
        "capinfer_power_cap_watts",
        "capinfer_batch_size",
        "capinfer_sm_clock_mhz",
        "capinfer_inferences_per_second",
    } <= queried


def test_dashboard_legends_use_labels_the_series_carry() -> None:
    # Prometheus adds namespace and pod to every scraped series (target labels).
    carried = {"namespace", "pod"} | {label for s in exported_samples() for label in s.labels}
    for target in dashboard_targets():
        used = set(LEGEND_LABEL.findall(target["legendFormat"]))
        assert used and used <= carried, (target["legendFormat"], sorted(carried))


def test_dashboard_queries_filter_by_the_namespace_and_pod_variables() -> None:
    dashboard = json.loads((CHART / "dashboards" / "capinfer.json").read_text())
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    for expr in dashboard_queries():
        assert 'namespace=~"$namespace"' in expr and 'pod=~"$pod"' in expr, expr


def test_the_sample_is_an_object_of_the_crd() -> None:
    samples = sorted((CHART / "examples").glob("*.yaml"))
    crds = [load_yaml(path) for path in sorted(CRDS.glob("*.yaml"))]
    assert samples and crds
    kinds = {
        (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
        for crd in crds
        for version in crd["spec"]["versions"]
        if version["served"]
    }
    for path in samples:
        sample = load_yaml(path)
        assert (sample["apiVersion"], sample["kind"]) in kinds, path.name


def test_notes_tell_the_user_what_to_do_next() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kubectl get pci" in notes
    assert "rollout status" in notes
    assert 'Files.Get "examples/powercappedinference.yaml"' in notes
    assert (CHART / "examples" / "powercappedinference.yaml").is_file()
