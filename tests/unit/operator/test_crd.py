"""The CRD file: documented everywhere, and the defaults the sidecar assumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from capinfer_sidecar.settings import DEFAULT_BAND, DEFAULT_BATCH_SIZES, DEFAULT_POLICY

CRD_PATH = Path(__file__).parents[3] / "crds" / "capinfer.io_powercappedinferences.yaml"


def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def schema() -> dict[str, Any]:
    version = crd()["spec"]["versions"][0]
    found: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return found


def fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from fields(child, f"{path}.{name}")
    if "items" in node:
        yield from fields(node["items"], f"{path}[]")


def test_every_field_has_a_description() -> None:
    missing = [path for path, node in fields(schema(), "") if not node.get("description")]
    assert missing == []


def test_names_scope_and_subresources() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "capinfer.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "PowerCappedInference"
    assert "pci" in spec["names"]["shortNames"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert set(version["subresources"]) == {"status", "scale"}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Cap", "Power", "Batch", "Ready", "Age", "Policy", "Clock"} <= columns


def test_power_defaults_match_the_sidecar() -> None:
    power = schema()["properties"]["spec"]["properties"]["power"]["properties"]
    assert power["policy"]["default"] == DEFAULT_POLICY
    assert power["band"]["default"] == DEFAULT_BAND
    assert tuple(power["batchSizes"]["default"]) == DEFAULT_BATCH_SIZES


def test_status_lists_are_maps_keyed_for_server_side_apply() -> None:
    status = schema()["properties"]["status"]["properties"]
    assert status["pods"]["x-kubernetes-list-map-keys"] == ["name"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
