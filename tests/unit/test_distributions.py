"""Each process installs what it uses: one distribution per folder, each declaring what
its code imports, all at one version; the image's lock pins every dependency it needs.

The Dockerfile and ``image/check.py`` rely on these: the image installs the lock with
``--require-hashes --no-deps`` and then ``pip check``s capinfer's own wheels against it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# folder -> distribution name
DISTRIBUTIONS = {
    "core": "capinfer-core",
    "operator": "capinfer-operator",
    "sidecar": "capinfer-sidecar",
    "node": "capinfer-node-agent",
    "cli": "capinfer",
}
IMAGE = ("core", "operator", "sidecar", "node")
# The distribution that provides each third-party import name.
PROVIDERS = {
    "aiohttp": "aiohttp",
    "google": "protobuf",
    "grpc": "grpcio",
    "kopf": "kopf",
    "kubernetes": "kubernetes",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "prometheus_client": "prometheus-client",
    "pynvml": "pynvml",
    "tritonclient": "tritonclient",
    "urllib3": "urllib3",
    "yaml": "pyyaml",
    "capinfer_core": "capinfer-core",
    "capinfer_operator": "capinfer-operator",
    "capinfer_sidecar": "capinfer-sidecar",
    "capinfer_node_agent": "capinfer-node-agent",
}
# Provided at run time by tritonserver's Python backend to the test models it loads.
RUNTIME_PROVIDED = {"triton_python_backend_utils"}
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def project(folder: str) -> dict[str, Any]:
    result: dict[str, Any] = tomllib.loads((REPO / folder / "pyproject.toml").read_text())
    return result["project"]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = REQUIREMENT_NAME.match(requirement)
        assert match, requirement
        names.add(normalized(match.group(1)))
    return names


def declared(folder: str) -> set[str]:
    meta = project(folder)
    names = requirement_names(meta.get("dependencies", []))
    for extra in meta.get("optional-dependencies", {}).values():
        names |= requirement_names(extra)
    return names


def imported_top_level_modules(folder: str) -> set[str]:
    own = {path.name for path in (REPO / folder).iterdir() if (path / "__init__.py").exists()}
    found = set()
    # The packages only: a folder's scripts (node/gen_podresources.py) are development tools.
    sources = [source for package in own for source in (REPO / folder / package).rglob("*.py")]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - own - set(sys.stdlib_module_names) - {"__future__"}


def test_every_distribution_has_the_one_version() -> None:
    versions = {folder: project(folder)["version"] for folder in DISTRIBUTIONS}
    assert len(set(versions.values())) == 1, versions
    assert {folder: project(folder)["name"] for folder in DISTRIBUTIONS} == DISTRIBUTIONS


@pytest.mark.parametrize("folder", list(DISTRIBUTIONS))
def test_a_distribution_declares_every_distribution_its_code_imports(folder: str) -> None:
    imports = imported_top_level_modules(folder) - RUNTIME_PROVIDED
    unknown = imports - PROVIDERS.keys()
    assert not unknown, f"{folder}: add the providing distribution of {sorted(unknown)}"
    missing = {PROVIDERS[name] for name in imports} - declared(folder)
    assert not missing, f"{folder}/pyproject.toml does not declare {sorted(missing)}"


def test_the_operator_and_the_core_do_not_pull_triton_or_nvml() -> None:
    assert not {"tritonclient", "pynvml"} & declared("operator")
    assert declared("core") == set(), "the core is pure Python with no dependencies"


def test_the_sidecar_reaches_triton_over_grpc_only() -> None:
    triton = [dep for dep in project("sidecar")["dependencies"] if dep.startswith("tritonclient")]
    assert triton and all(dep.startswith("tritonclient[grpc]") for dep in triton), triton


def test_the_image_lock_pins_with_hashes_every_dependency_of_the_image_distributions() -> None:
    lock = (REPO / "image" / "requirements.lock").read_text()
    pin = r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+ \\\n((?:\s+--hash=\S+(?: \\)?\n)+)"
    entries = re.findall(pin, lock, re.M)
    pinned = {normalized(name) for name, _ in entries}
    assert entries and all("sha256:" in hashes for _, hashes in entries)
    assert len(pinned) == len(re.findall(r"^[A-Za-z0-9][^#\s]*==", lock, re.M)), "an unhashed pin"
    own = {DISTRIBUTIONS[folder] for folder in IMAGE}
    needed = set().union(*(requirement_names(project(f)["dependencies"]) for f in IMAGE)) - own
    assert needed <= pinned, f"make image-lock: the lock lacks {sorted(needed - pinned)}"
    assert not own & pinned, "capinfer's own distributions are built from the tree, not pinned"
    assert not {"matplotlib", "cuda-python", "gevent", "perf-analyzer", "capinfer"} & pinned
