"""Check the built image by running it: ``make image-check`` (after ``make image``).

Every process runs from the image through ``image/run.sh``: as the image's user (UID
65532), with a read-only root filesystem, in the host's network namespace. Checked:

1. the process's identity and confinement, seen from inside: UID/GID 65532, no effective
   or permitted capabilities, no_new_privs, every write under ``/`` (``/``, ``/opt/capinfer``,
   ``/etc``) refused with EROFS, ``/tmp`` writable;
2. ``capinfer-sidecar --help`` exits 0 with its usage;
3. what ships: the image holds capinfer-core, -operator, -sidecar and -node-agent, and not
   the development CLI (``capinfer``), matplotlib, nvidia-pytriton or tritonclient[all]'s
   extras (cuda-python, gevent, perf-analyzer); ``capinfer-node-agent --help`` exits 0;
4. ``capinfer-operator`` (the image's entry point) against the local cluster
   (``capinfer cluster up --name image-check``), with the Helm chart's RBAC and nothing
   more: a kubeconfig holding only a token of the chart's ServiceAccount is mounted
   read-only. It must serve its liveness endpoint, turn a ``PowerCappedInference`` into a
   Deployment whose sidecar runs this image and two Running pods on the fake GPU nodes,
   report them in the object's status, be refused nothing by the API server, and stop
   with status 0 on SIGTERM.

The cluster is started if it is not running and stopped at the end only if this started
it. Needs root (image/run.sh does) and the local cluster's binaries (``make binaries``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from apirefusals import refusals_in  # noqa: E402  (the recognizer the tests use)
from capinfer.localcluster.cluster import LocalCluster  # noqa: E402

RUN = REPO / "image" / "run.sh"
CRD = REPO / "crds" / "capinfer.io_powercappedinferences.yaml"
BUDGET_CRD = REPO / "crds" / "capinfer.io_powerbudgets.yaml"
CHART = REPO / "helm" / "capinfer"
CLUSTER_NAME = "image-check"
IMAGE_UID = 65532
STOP_TIMEOUT_S = 60

PROBE = r"""
import json, os
status = dict(line.rstrip("\n").split(":\t", 1) for line in open("/proc/self/status"))
writes = {}
for path in ["/probe", "/opt/capinfer/probe", "/etc/probe", "/tmp/probe"]:
    try:
        with open(path, "w") as handle:
            handle.write("x")
        writes[path] = "written"
    except OSError as error:
        writes[path] = error.strerror
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "pid": os.getpid(), "cap_eff": status["CapEff"], "cap_prm": status["CapPrm"],
    "no_new_privs": status["NoNewPrivs"], "writes": writes,
}))
"""


class CheckFailedError(Exception):
    pass


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise CheckFailedError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def run_image(image: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RUN), "--image", image, *args],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


def check_confinement(image: str) -> None:
    say("identity and read-only root, from inside the image")
    result = run_image(image, "--entrypoint", "python", "--", "-c", PROBE)
    if result.returncode != 0:
        raise CheckFailedError(f"the probe failed ({result.returncode}):\n{result.stderr}")
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(seen, indent=2), flush=True)
    expected_writes = {
        "/probe": "Read-only file system",
        "/opt/capinfer/probe": "Read-only file system",
        "/etc/probe": "Read-only file system",
        "/tmp/probe": "written",
    }
    problems = [
        f"{key} is {seen[key]!r}, expected {want!r}"
        for key, want in [
            ("uid", IMAGE_UID), ("euid", IMAGE_UID), ("gid", IMAGE_UID), ("pid", 1),
            ("cap_eff", "0000000000000000"), ("cap_prm", "0000000000000000"),
            ("no_new_privs", "1"), ("writes", expected_writes),
        ]
        if seen[key] != want
    ]  # fmt: skip
    if problems:
        raise CheckFailedError("confinement: " + "; ".join(problems))


def check_sidecar_help(image: str) -> None:
    say("capinfer-sidecar --help")
    result = run_image(image, "--entrypoint", "capinfer-sidecar", "--", "--help")
    if result.returncode != 0 or not result.stdout.startswith("usage: capinfer-sidecar"):
        raise CheckFailedError(
            f"capinfer-sidecar --help: exit {result.returncode}\n{result.stdout}{result.stderr}"
        )
    print("\n".join(result.stdout.splitlines()[:3]) + "\n...", flush=True)


# What ships: capinfer's image distributions, never the development CLI, report rendering
# or tritonclient[all]'s extras (CUDA Python, gevent, perf-analyzer).
IMAGE_DISTRIBUTIONS = {
    "capinfer-core",
    "capinfer-operator",
    "capinfer-sidecar",
    "capinfer-node-agent",
}
NOT_SHIPPED = {
    "capinfer",
    "matplotlib",
    "nvidia-pytriton",
    "cuda-python",
    "gevent",
    "geventhttpclient",
    "perf-analyzer",
}
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "names = {d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()}; "
    "print(json.dumps(sorted(names)))"
)


def check_contents(image: str) -> None:
    say("what ships: capinfer's image distributions, not the development CLI")
    result = run_image(image, "--entrypoint", "python", "--", "-c", LIST_DISTRIBUTIONS)
    if result.returncode != 0:
        raise CheckFailedError(f"listing distributions failed:\n{result.stderr}")
    names = set(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"{len(names)} distributions: {' '.join(sorted(names))}", flush=True)
    if missing := IMAGE_DISTRIBUTIONS - names:
        raise CheckFailedError(f"the image lacks {sorted(missing)}")
    if shipped := NOT_SHIPPED & names:
        raise CheckFailedError(f"the image ships {sorted(shipped)}")
    result = run_image(image, "--entrypoint", "capinfer-node-agent", "--", "--help")
    if result.returncode != 0 or not result.stdout.startswith("usage: capinfer-node-agent"):
        raise CheckFailedError(
            f"capinfer-node-agent --help: exit {result.returncode}\n{result.stdout}{result.stderr}"
        )


def get_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def operator_kubeconfig(cluster: LocalCluster, namespace: str, folder: Path) -> Path:
    """The chart's RBAC applied; a self-contained kubeconfig with a token of its account."""
    helm = str(cluster.binaries.path("helm"))
    release = "image-check"
    rbac = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", namespace,
         "--kube-version", "1.34.0", "--show-only", "templates/rbac.yaml",
         "--show-only", "templates/serviceaccount.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input_text=rbac)
    path = cluster.service_account_kubeconfig(
        namespace, f"{release}-capinfer", folder / "kubeconfig"
    )
    config = json.loads(path.read_text())
    server = config["clusters"][0]["cluster"]
    # The CA travels inside the file: the image cannot see this machine's paths.
    ca_path = Path(server.pop("certificate-authority"))
    server["certificate-authority-data"] = base64.b64encode(ca_path.read_bytes()).decode()
    path.write_text(json.dumps(config))
    os.chown(path, IMAGE_UID, IMAGE_UID)
    path.chmod(0o400)
    return path


def inference(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerCappedInference",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 2,
            "triton": {
                "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                "model": "simbatch",
                "modelRepository": {"uri": "s3://example/models"},
            },
            "power": {"capWatts": 180},
        },
    }


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def check_operator(image: str, folder: Path, log_path: Path) -> None:
    cluster = LocalCluster(CLUSTER_NAME)
    started_here = not cluster.status().running
    say(f"local cluster {CLUSTER_NAME!r} " + ("starting" if started_here else "already running"))
    cluster.up(lambda message: print(f"    {message}", flush=True))
    suffix = uuid.uuid4().hex[:6]
    system_ns, app_ns = f"capinfer-system-{suffix}", f"image-check-{suffix}"
    operator: subprocess.Popen[str] | None = None
    try:
        for crd in (CRD, BUDGET_CRD):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/powercappedinferences.capinfer.io",
            "crd/powerbudgets.capinfer.io", "--timeout=60s",
        )  # fmt: skip
        cluster.kubectl("create", "namespace", system_ns)
        cluster.kubectl("create", "namespace", app_ns)
        kubeconfig = operator_kubeconfig(cluster, system_ns, folder)
        health_url = f"http://127.0.0.1:{free_port()}/healthz"
        say(f"capinfer-operator from the image, liveness on {health_url}; log: {log_path}")
        with log_path.open("w") as log:
            operator = subprocess.Popen(
                ["bash", str(RUN), "--image", image,
                 "--volume", f"{kubeconfig}:/etc/capinfer/kubeconfig:ro",
                 "--env", "KUBECONFIG=/etc/capinfer/kubeconfig",
                 "--", "--all-namespaces", "--standalone", "--log-level", "DEBUG",
                 "--sidecar-image", image, "--liveness", health_url],
                stdout=log, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        started = time.monotonic()
        wait_for("the operator's liveness endpoint", lambda: _alive(operator, health_url), 240)
        say(f"operator live after {time.monotonic() - started:.1f} s")

        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(inference("resnet", app_ns)))
        wait_for("the Deployment", lambda: get_json(cluster, "deploy", "resnet", "-n", app_ns), 120)
        deployment = get_json(cluster, "deploy", "resnet", "-n", app_ns)
        images = {
            c["name"]: c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]
        }
        if images.get("capinfer-sidecar") != image:
            raise CheckFailedError(f"the sidecar container runs {images}, expected {image}")
        say(f"Deployment resnet created: containers {images}")

        def reported() -> bool:
            status = (get_json(cluster, "pci", "resnet", "-n", app_ns) or {}).get("status", {})
            return bool(status.get("replicas") == 2 and status.get("readyReplicas") == 2)

        wait_for("status.replicas == readyReplicas == 2", reported, 180)
        say("status reports 2 replicas, 2 ready")
    finally:
        code = _stop(operator)
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        cluster.kubectl("delete", "namespace", app_ns, system_ns, "--wait=false", check=False)
        if started_here:
            cluster.down()
    if code != 0:
        tail = "\n".join(log_text.splitlines()[-30:])  # the whole log stays at log_path
        raise CheckFailedError(f"the operator exited with {code} on SIGTERM:\n{tail}")
    say("operator stopped on SIGTERM with status 0")
    refusals = refusals_in(log_text)
    if refusals:
        raise CheckFailedError("the API server refused the operator:\n" + "\n".join(refusals))
    say("the API server refused the operator nothing")


def _alive(operator: subprocess.Popen[str], url: str) -> bool:
    if operator.poll() is not None:
        raise CheckFailedError(f"the operator exited with {operator.returncode} before it was live")
    return healthy(url)


def _stop(operator: subprocess.Popen[str] | None) -> int | None:
    if operator is None:
        return None
    if operator.poll() is None:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
            return None
    return operator.returncode


def main() -> int:
    if os.geteuid() != 0:
        print("check.py: error: must run as root (image/run.sh does)", file=sys.stderr)
        return 2
    image = os.environ.get("CAPINFER_IMAGE") or subprocess.run(
        ["bash", "-c", f"source {REPO / 'image' / 'common.sh'} && init_storage && echo $IMAGE"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not image:
        print("check.py: error: no image name (CAPINFER_IMAGE or image/common.sh)", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("CAPINFER_CACHE_DIR") or Path.home() / ".cache" / "capinfer")
    log_path = cache / "images" / "check" / "operator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capinfer-image-check-") as folder:
        try:
            check_confinement(image)
            check_sidecar_help(image)
            check_contents(image)
            check_operator(image, Path(folder), log_path)
        except CheckFailedError as failure:
            print(f"check.py: FAILED: {failure}", file=sys.stderr)
            return 1
    say(f"image {image}: every check passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
