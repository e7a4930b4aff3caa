"""Helpers for tests that drive PowerCappedInference objects through kubectl."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apirefusals import refusals_in
from capinfer.localcluster.cluster import LocalCluster


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def holds_for(what: str, condition: Callable[[], bool], seconds: float) -> None:
    """The condition, true now, stays true for ``seconds`` (a slow machine checks less often;
    it never fails because it is slow)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            pytest.fail(f"no longer true: {what}")
        time.sleep(0.25)


def get_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def inference(name: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": 2,
        "triton": {
            "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "model": "simbatch",
            "modelRepository": {"uri": "s3://example/models"},
        },
        "power": {"capWatts": 180},
    }
    spec.update(overrides)
    return {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerCappedInference",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "capinfer"
RENDER_KUBE_VERSION = "1.34.0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class OperatorUnderTest:
    """``capinfer-operator`` as a subprocess that a test may kill and start again."""

    def __init__(
        self, kubeconfig: Path, log_path: Path, *, peering: str | None = None, lifetime_s: int = 15
    ) -> None:
        """``peering``: run as a replica of that kopf peering, else standalone."""
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.peering = peering
        self.lifetime_s = lifetime_s
        self.excused: list[tuple[int, int]] = []
        """Spans of the log (characters) whose refusals are not the operator's RBAC's."""
        self.health_url = f"http://127.0.0.1:{free_port()}/healthz"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mode = (
            ["--peering", self.peering, "--peering-lifetime", str(self.lifetime_s)]
            if self.peering
            else ["--standalone"]
        )
        argv = [
            sys.executable, "-m", "capinfer_operator.main", "--all-namespaces", *mode,
            "--sidecar-image", "capinfer:test", "--log-level", "DEBUG",
            "--liveness", self.health_url,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while not healthy(self.health_url):
            if self._process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"capinfer-operator did not come up:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM and wait; ``kill`` is SIGKILL, as a node failure would do it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def excuse(self, start_char: int, end_char: int) -> None:
        """Refusals logged in this span are not counted (an API server that restarted
        answers 403 until its authorizer has loaded RBAC)."""
        self.excused.append((start_char, end_char))

    def refusals(self, since_char: int = 0) -> list[str]:
        text = self.log_text()
        found: list[str] = []
        cursor = since_char
        for start, end in sorted(self.excused):
            if end > cursor:
                found += refusals_in(text[cursor : max(cursor, start)])
                cursor = max(cursor, end)
        return found + refusals_in(text[cursor:])


def render_operator_rbac(cluster: LocalCluster, release: str, namespace: str, *values: str) -> str:
    """The chart's RBAC for the operator; ``values``: ``--set`` arguments (key=value)."""
    sets = [arg for value in values for arg in ("--set", value)]
    result = subprocess.run(
        [str(cluster.binaries.path("helm")), "template", release, str(CHART),
         "--namespace", namespace, "--kube-version", RENDER_KUBE_VERSION, *sets,
         "--show-only", "templates/rbac.yaml", "--show-only", "templates/serviceaccount.yaml"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"helm template of the operator's RBAC failed:\n{result.stderr}")
    return result.stdout
