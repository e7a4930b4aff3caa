"""The chart and the operator agree: RBAC, arguments, health endpoint, monitored Services.

The real operator process runs with the chart's ServiceAccount token and nothing more.

The chart is installed (its operator pod only pretends to run on a kwok node); then
``capinfer-operator`` runs here as a subprocess with the arguments and environment the
chart rendered into that pod, authenticated by a token of the chart's ServiceAccount. It
must deploy the sample PowerCappedInference's children without a single refusal from the
API server, and answer on the health endpoint the chart's liveness probe uses.
"""

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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from apirefusals import refusals_in
from capinfer.localcluster.cluster import LocalCluster
from capinfer_operator.builders import Target, build_service

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "capinfer"
SAMPLE = CHART / "examples" / "powercappedinference.yaml"
# Rendering only: any version the chart's kubeVersion accepts (helm's own default is older).
RENDER_KUBE_VERSION = "1.34.0"
CHILD_KINDS = ("deployments.apps", "services", "serviceaccounts", "roles", "rolebindings")


def helm(cluster: LocalCluster, *args: str) -> None:
    result = subprocess.run(
        [str(cluster.binaries.path("helm")), *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    if result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")


def wait_for(what: str, condition: Callable[[], bool], log: Path, timeout_s: float = 120) -> None:
    # Generous: a slow machine only makes the test slower, never wrong.
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            pytest.fail(
                f"timed out after {timeout_s:.0f} s waiting for {what}; operator log:\n{tail}"
            )
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rendered_container(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    deployment = json.loads(
        cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout
    )
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def local_command(container: dict[str, Any], health_port: int) -> list[str]:
    """The pod's command and args, with the health port moved to a free local one."""
    (entry_point,) = container["command"]
    executable = Path(sys.executable).parent / entry_point
    if not executable.exists():
        pytest.fail(f"{entry_point} is not installed in {executable.parent}: make setup")
    chart_port = str(container["ports"][0]["containerPort"])
    args = [arg.replace(f":{chart_port}", f":{health_port}") for arg in container["args"]]
    return [str(executable), *args]


def local_env(container: dict[str, Any], kubeconfig: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBE")}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
            env[variable["name"]] = "capinfer-operator-local"
        elif variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace":
            env[variable["name"]] = "local"
    env["KUBECONFIG"] = str(kubeconfig)
    return env


@contextmanager
def running(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[Path]:
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def children_of(cluster: LocalCluster, namespace: str, owner_uid: str) -> set[str]:
    found = set()
    for kind in CHILD_KINDS:
        items = json.loads(cluster.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)
        for item in items["items"]:
            owners = item["metadata"].get("ownerReferences", [])
            if any(owner["uid"] == owner_uid for owner in owners):
                found.add(kind.split(".")[0])
    return found


def test_operator_with_the_charts_rbac_deploys_the_sample(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    release = f"op-{uuid.uuid4().hex[:8]}"
    helm(
        cluster, "install", release, str(CHART), "--namespace", namespace,
        "--set", f"watchNamespaces={{{namespace}}}", "--set", "logLevel=debug",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    try:
        account = f"{release}-capinfer"
        container = rendered_container(cluster, namespace, account)
        kubeconfig = cluster.service_account_kubeconfig(
            namespace, account, tmp_path / "sa.kubeconfig"
        )
        health_port = free_port()
        probe = container["livenessProbe"]["httpGet"]
        health_url = f"http://127.0.0.1:{health_port}{probe['path']}"
        command = local_command(container, health_port)
        with running(command, local_env(container, kubeconfig), tmp_path / "operator.log") as log:
            wait_for(
                f"the operator's liveness endpoint {health_url}", lambda: healthy(health_url), log
            )
            cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
            name = yaml.safe_load(SAMPLE.read_text())["metadata"]["name"]
            uid = cluster.kubectl(
                "get", "pci", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}"
            ).stdout
            expected = {"deployments", "services", "serviceaccounts", "roles", "rolebindings"}
            wait_for(
                f"the children of {name} ({', '.join(sorted(expected))})",
                lambda: children_of(cluster, namespace, uid) == expected,
                log,
            )
            # Deleted while the operator runs, so any finalizer of its own is released.
            cluster.kubectl("delete", "pci", name, "-n", namespace, "--timeout=120s")
            output = log.read_text()
        refusals = refusals_in(output)
        assert refusals == [], "\n".join(refusals)
    finally:
        # After a failure: no finalizer may keep the namespace from being deleted.
        leftovers = cluster.kubectl("get", "pci", "-n", namespace, "-o", "name", check=False)
        for leftover in leftovers.stdout.split():
            cluster.kubectl(
                "patch", leftover, "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
        subprocess.run(
            [str(cluster.binaries.path("helm")), "uninstall", release, "-n", namespace],
            env=cluster.env(),
            capture_output=True,
            check=False,
            timeout=240,
        )


def test_service_monitor_selects_the_operators_services_and_sidecar_port(
    cluster: LocalCluster,
) -> None:
    rendered = subprocess.run(
        [str(cluster.binaries.path("helm")), "template", "capinfer", str(CHART),
         "--kube-version", RENDER_KUBE_VERSION, "--set", "serviceMonitor.enabled=true",
         "--show-only", "templates/servicemonitor.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    monitor = yaml.safe_load(rendered)
    service = build_service(Target(name="resnet50", namespace="models"))
    labels = service["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), (selector, labels)
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in ports
    assert ports[endpoint["port"]]["targetPort"] == "sidecar-metrics", "the sidecar, not Triton"
