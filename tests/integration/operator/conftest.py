"""The CRD installed once, and the real operator running as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capinfer.localcluster.cluster import LocalCluster


@pytest.fixture(scope="session")
def operator_process(
    cluster: LocalCluster, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """``capinfer-operator`` watching every namespace; yields its log path."""
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
