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


def rules(node: dict[str, Any]) -> list[str]:
    return [str(r["rule"]) for r in node.get("x-kubernetes-validations", [])]


def test_the_schema_is_structural() -> None:
    """Every field has a type (or is int-or-string), and every object says what it holds."""
    untyped = [
        path
        for path, node in fields(schema(), "")
        if "type" not in node and not node.get("x-kubernetes-int-or-string")
    ]
    assert untyped == []
    open_objects = [
        path
        for path, node in fields(schema(), "")
        if node.get("type") == "object"
        and not ({"properties", "additionalProperties"} & node.keys())
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert open_objects == []


def test_rules_the_schema_alone_cannot_say_are_cel() -> None:
    root = schema()
    spec = root["properties"]["spec"]["properties"]
    power = spec["power"]["properties"]
    triton = spec["triton"]["properties"]
    assert any("metadata.name" in rule for rule in rules(root))
    assert rules(power["batchSizes"]) == ["self.isSorted()"]
    assert power["batchSizes"]["x-kubernetes-list-type"] == "set"  # sorted + set = strictly
    assert any("minMHz <= self.maxMHz" in rule for rule in rules(power["clockControl"]))
    assert "self == oldSelf" in rules(triton["model"])
    assert any("nvidia.com/gpu" in rule for rule in rules(triton["resources"]))
    assert any("size() == 1" in rule for rule in rules(triton["modelRepository"]))
    assert any("staticBatchSize in self.batchSizes" in r for r in rules(spec["power"]))


def test_bounds_of_the_power_block() -> None:
    power = schema()["properties"]["spec"]["properties"]["power"]
    assert power["required"] == ["capWatts"]
    band = power["properties"]["band"]
    assert (band["minimum"], band["maximum"]) == (0, 1)
    assert band["exclusiveMinimum"] and band["exclusiveMaximum"]
    assert power["properties"]["capWatts"]["minimum"] > 0
    assert power["properties"]["policy"]["enum"] == [
        "Adaptive",
        "BatchSizer",
        "DVFS",
        "BatchDVFS",
        "Static",
    ]
    interval = power["properties"]["sampleIntervalMs"]
    assert interval["default"] == 100 and interval["minimum"] < 100 < interval["maximum"]


def test_printer_columns_point_at_declared_fields() -> None:
    version = crd()["spec"]["versions"][0]
    declared = {path for path, _ in fields(schema(), "")} | {".metadata.creationTimestamp"}
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0]
        assert path in declared, f"column {column['name']} reads {path}, which is not declared"


def test_the_scale_subresource_matches_the_status() -> None:
    scale = crd()["spec"]["versions"][0]["subresources"]["scale"]
    status = schema()["properties"]["status"]["properties"]
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["statusReplicasPath"].removeprefix(".status.") in status
    assert scale["labelSelectorPath"].removeprefix(".status.") in status


FREE_TEXT = {"spec.triton.env[].value"}
"""Strings of the spec that are data, passed on as they are: nothing to check."""


def strings(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "string":
        yield path, node
    for name, child in node.get("properties", {}).items():
        yield from strings(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from strings(node["additionalProperties"], f"{path}{{}}")
    if "items" in node:
        yield from strings(node["items"], f"{path}[]")


def test_every_string_of_the_spec_is_bounded_and_checked() -> None:
    """A string reaches a command line, a path, a URL or a label: each one is an enum, or is
    bounded and has a rule (the integration tests drive the rules on the API server)."""
    spec = schema()["properties"]["spec"]
    unchecked = [
        path
        for path, node in strings(spec, "spec")
        if path not in FREE_TEXT
        and "enum" not in node
        and not ("maxLength" in node and (rules(node) or "pattern" in node))
    ]
    assert unchecked == []
    assert len(list(strings(spec, "spec"))) >= 14
