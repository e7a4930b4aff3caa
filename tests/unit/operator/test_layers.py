"""The operator's decisions stay pure: only the handlers and the adapter touch the cluster."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[3] / "operator" / "capinfer_operator"
CLUSTER_CLIENTS = {"kopf", "kubernetes", "aiohttp", "urllib3"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", ["builders", "status", "changes", "budget"])
def test_pure_modules_import_no_cluster_client(module: str) -> None:
    assert imported_roots(PACKAGE / f"{module}.py") & CLUSTER_CLIENTS == set()
