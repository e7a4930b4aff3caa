"""The PowerBudget CRD file: documented everywhere, structural, and in step with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_crd import fields

from capinfer_operator.budget import ALLOCATION_FIELD, BUDGET_FIELD

CRDS = Path(__file__).parents[3] / "crds"


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CRDS / name).read_text())
    return loaded


def schema() -> dict[str, Any]:
    found: dict[str, Any] = load("capinfer.io_powerbudgets.yaml")["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    return found


def test_every_field_has_a_description_and_a_type() -> None:
    assert [path for path, node in fields(schema(), "") if not node.get("description")] == []
    assert [path for path, node in fields(schema(), "") if "type" not in node] == []


def test_names_scope_and_columns() -> None:
    crd = load("capinfer.io_powerbudgets.yaml")["spec"]
    assert crd["scope"] == "Cluster" and crd["group"] == "capinfer.io"
    assert crd["names"]["shortNames"] == ["pb"]
    version = crd["versions"][0]
    assert set(version["subresources"]) == {"status"}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert {"Budget", "Allocated", "Measured", "Members"} <= columns.keys()
    declared = {path for path, _ in fields(schema(), "")} | {".metadata.creationTimestamp"}
    for name, path in columns.items():
        assert path.split("[")[0] in declared, f"column {name} reads an undeclared {path}"


def test_exactly_one_selection_and_the_policies_are_rules_of_the_schema() -> None:
    spec = schema()["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "has(self.nodeSelector) != has(self.selector)" in rules
    assert spec["properties"]["policy"]["enum"] == ["MaxThroughput", "Proportional", "Equal"]
    assert spec["properties"]["policy"]["default"] == "MaxThroughput"
    assert spec["properties"]["watts"]["minimum"] > 0


def test_the_pod_entry_declares_what_the_budget_controller_and_the_sidecar_write() -> None:
    pci = load("capinfer.io_powercappedinferences.yaml")["spec"]["versions"][0]["schema"]
    entry = pci["openAPIV3Schema"]["properties"]["status"]["properties"]["pods"]["items"]
    assert {ALLOCATION_FIELD, BUDGET_FIELD, "curve"} <= entry["properties"].keys()
    curve = entry["properties"]["curve"]
    assert curve["required"] == ["capWatts", "inferencesPerSecond", "uncappedWatts"]
