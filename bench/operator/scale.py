"""How fast the operator handles a burst of PowerCappedInference objects (not a test).

Creates N objects at once (a thread pool of API clients) on the local cluster, with the
real ``capinfer-operator`` running as a subprocess, and measures for each object the time
from its creation being accepted by the API server to

* its Deployment being created (a watch on Deployments sees it ADDED), and
* its status saying Ready=True (a watch on the objects sees it),

plus the operator's CPU time and memory over the burst, read from /proc. kwok plays the
kubelet of fake GPU nodes added for the run, so every pod is scheduled and becomes Ready.

    .venv/bin/python bench/operator/scale.py --objects 200 [--cluster NAME] [--out DIR]

Without ``--cluster`` a fresh local cluster is started and stopped; with it, an existing
one (``capinfer cluster up --name NAME``) is used and left as it was.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from capinfer.localcluster.cluster import FakeGpuNode, LocalCluster

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "capinfer.io_powercappedinferences.yaml"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# -- measuring ----------------------------------------------------------------------------
@dataclass
class Timeline:
    """Wall-clock moments per object, from this process's clock."""

    created_s: dict[str, float] = field(default_factory=dict)
    deployment_s: dict[str, float] = field(default_factory=dict)
    pods_ready_s: dict[str, float] = field(default_factory=dict)
    ready_s: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, table: dict[str, float], name: str) -> None:
        with self.lock:
            table.setdefault(name, time.monotonic())


@dataclass(frozen=True)
class ProcessSample:
    cpu_s: float
    rss_kib: int
    peak_rss_kib: int


def sample_process(pid: int) -> ProcessSample:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the ")" they are 12th and 13th.
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return ProcessSample(
        cpu_s=cpu_s,
        rss_kib=int(status["VmRSS"].split()[0]),
        peak_rss_kib=int(status["VmHWM"].split()[0]),
    )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was measured."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary_s(latencies_s: list[float]) -> dict[str, float]:
    return {
        "count": len(latencies_s),
        "p50_s": round(percentile(latencies_s, 0.50), 3),
        "p99_s": round(percentile(latencies_s, 0.99), 3),
        "max_s": round(max(latencies_s), 3),
        "mean_s": round(statistics.fmean(latencies_s), 3),
    }


# -- the run ------------------------------------------------------------------------------
def inference(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerCappedInference",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "triton": {
                "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                "model": "resnet50",
                "modelRepository": {"uri": "s3://bench/models"},
            },
            "power": {"capWatts": 180},
        },
    }


def follow(
    stream: Callable[..., Any],
    on_event: Callable[[str, Any], None],
    stop: threading.Event,
    failures: list[BaseException],
    **list_kwargs: Any,
) -> None:
    """Feed every watch event to ``on_event`` until stopped; a failure is kept, not lost."""
    try:
        while not stop.is_set():
            watch_once(stream, on_event, stop, list_kwargs)
    except BaseException as error:
        failures.append(error)
        raise


def watch_once(
    stream: Callable[..., Any],
    on_event: Callable[[str, Any], None],
    stop: threading.Event,
    list_kwargs: dict[str, Any],
) -> None:
    watcher = watch.Watch()  # type: ignore[no-untyped-call]
    events = watcher.stream(stream, timeout_seconds=60, **list_kwargs)  # type: ignore[no-untyped-call]
    for event in events:
        on_event(str(event["type"]), event["object"])
        if stop.is_set():
            watcher.stop()  # type: ignore[no-untyped-call]
            break


def is_ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@contextmanager
def running_operator(cluster: LocalCluster, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    argv = [sys.executable, "-m", "capinfer_operator.main", "--all-namespaces", "--standalone",
            "--sidecar-image", "capinfer:bench", "--log-level", "WARNING"]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def bench_cluster(name: str | None) -> Iterator[LocalCluster]:
    if name:
        yield LocalCluster(name)
        return
    local = LocalCluster(f"bench-{os.getpid()}")
    local.up(lambda message: print(f"[cluster] {message}", flush=True))
    try:
        yield local
    finally:
        local.down()


def run(cluster: LocalCluster, objects: int, workers: int, timeout_s: float) -> dict[str, Any]:
    gpus_needed = objects  # one replica with one GPU each
    nodes = [FakeGpuNode(f"bench-gpu-{i}", gpu_count=64) for i in range(-(-gpus_needed // 64) + 1)]
    for node in nodes:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(node.manifest()))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established",
                    "crd/powercappedinferences.capinfer.io", "--timeout=60s")  # fmt: skip
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)

    api_client = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    custom = client.CustomObjectsApi(api_client)
    apps = client.AppsV1Api(api_client)
    timeline = Timeline()
    stop = threading.Event()

    def on_deployment(kind: str, deployment: Any) -> None:
        if kind == "DELETED":
            return
        timeline.mark(timeline.deployment_s, deployment.metadata.name)
        if deployment.status and (deployment.status.ready_replicas or 0) >= 1:
            timeline.mark(timeline.pods_ready_s, deployment.metadata.name)

    def on_inference(kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED" and is_ready(obj):
            timeline.mark(timeline.ready_s, obj["metadata"]["name"])

    failures: list[BaseException] = []
    watchers = [
        threading.Thread(
            target=follow,
            args=(apps.list_namespaced_deployment, on_deployment, stop, failures),
            kwargs={"namespace": namespace},
            daemon=True,
        ),
        threading.Thread(
            target=follow,
            args=(custom.list_namespaced_custom_object, on_inference, stop, failures),
            kwargs={
                "group": "capinfer.io",
                "version": "v1alpha1",
                "namespace": namespace,
                "plural": "powercappedinferences",
            },
            daemon=True,
        ),
    ]
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"capinfer-operator-{namespace}.log"
    with running_operator(cluster, log_path) as operator:
        time.sleep(5)  # let it start and settle before the baseline sample
        for thread in watchers:
            thread.start()
        time.sleep(1)
        before = sample_process(operator.pid)
        load_before = os.getloadavg()

        def create(name: str) -> None:
            timeline.mark(timeline.created_s, name)  # from the request: the conservative end
            custom.create_namespaced_custom_object(
                "capinfer.io", "v1alpha1", namespace, "powercappedinferences",
                inference(name, namespace),
            )  # fmt: skip

        names = [f"pci-{i:03d}" for i in range(objects)]
        burst_start = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(create, names))
        burst_s = time.monotonic() - burst_start
        deadline = time.monotonic() + timeout_s
        while len(timeline.ready_s) < objects and time.monotonic() < deadline:
            if failures:
                raise RuntimeError(f"a watch failed: {failures[0]!r}")
            time.sleep(0.5)
        all_ready_s = time.monotonic() - burst_start
        after = sample_process(operator.pid)
        stop.set()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    for node in nodes:
        cluster.kubectl("delete", "node", node.name, "--wait=false", check=False)

    missing = sorted(set(names) - set(timeline.ready_s))
    to_deployment = [timeline.deployment_s[n] - timeline.created_s[n] for n in names
                     if n in timeline.deployment_s]  # fmt: skip
    to_pods_ready = [timeline.pods_ready_s[n] - timeline.created_s[n] for n in names
                     if n in timeline.pods_ready_s]  # fmt: skip
    status_lag = [timeline.ready_s[n] - timeline.pods_ready_s[n] for n in names
                  if n in timeline.ready_s and n in timeline.pods_ready_s]  # fmt: skip
    to_ready = [timeline.ready_s[n] - timeline.created_s[n] for n in names
                if n in timeline.ready_s]  # fmt: skip
    return {
        "objects": objects,
        "create_workers": workers,
        "burst_create_s": round(burst_s, 2),
        "all_ready_after_s": round(all_ready_s, 2),
        "not_ready_in_time": missing,
        "create_to_deployment": summary_s(to_deployment),
        "create_to_pods_ready": summary_s(to_pods_ready),
        "create_to_ready": summary_s(to_ready),
        "pods_ready_to_status_ready": summary_s(status_lag),
        "operator": {
            "cpu_s": round(after.cpu_s - before.cpu_s, 2),
            "cpu_ms_per_object": round(1000 * (after.cpu_s - before.cpu_s) / objects, 1),
            "rss_before_mib": round(before.rss_kib / 1024, 1),
            "rss_after_mib": round(after.rss_kib / 1024, 1),
            "peak_rss_mib": round(after.peak_rss_kib / 1024, 1),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_before": round(load_before[0], 2),
            "python": platform.python_version(),
        },
    }


def report(results: dict[str, Any]) -> str:
    deploy, pods, ready, lag, operator = (
        results["create_to_deployment"], results["create_to_pods_ready"],
        results["create_to_ready"], results["pods_ready_to_status_ready"], results["operator"],
    )  # fmt: skip
    lines = [
        f"# Operator under a burst of {results['objects']} PowerCappedInference objects",
        "",
        "`.venv/bin/python bench/operator/scale.py --objects "
        f"{results['objects']}` on the local cluster (kube-apiserver, etcd, controller-manager,"
        " scheduler built from source; kwok fake GPU nodes), this machine: "
        f"{results['machine']['cpus']} CPUs, 1-minute load average "
        f"{results['machine']['load_average_1m_before']} before the burst.",
        "",
        f"All objects were created by {results['create_workers']} client threads in "
        f"{results['burst_create_s']} s; the last became Ready "
        f"{results['all_ready_after_s']} s after the first create call.",
        "",
        "| from the object's creation to | p50 | p99 | max | mean |",
        "|---|---|---|---|---|",
        f"| its Deployment created | {deploy['p50_s']} s | {deploy['p99_s']} s |"
        f" {deploy['max_s']} s | {deploy['mean_s']} s |",
        f"| its Deployment's pod Ready (the cluster's part) | {pods['p50_s']} s |"
        f" {pods['p99_s']} s | {pods['max_s']} s | {pods['mean_s']} s |",
        f"| its status Ready=True (the operator reporting it) | {ready['p50_s']} s |"
        f" {ready['p99_s']} s | {ready['max_s']} s | {ready['mean_s']} s |",
        "",
        "| from the pod Ready (per the Deployment) to the status Ready | p50 | p99 | max | mean |",
        "|---|---|---|---|---|",
        f"| the operator's lag | {lag['p50_s']} s | {lag['p99_s']} s | {lag['max_s']} s |"
        f" {lag['mean_s']} s |",
        "",
        "| operator | |",
        "|---|---|",
        f"| CPU time over the burst | {operator['cpu_s']} s"
        f" ({operator['cpu_ms_per_object']} ms per object) |",
        f"| resident memory before / after | {operator['rss_before_mib']} MiB /"
        f" {operator['rss_after_mib']} MiB |",
        f"| peak resident memory | {operator['peak_rss_mib']} MiB |",
    ]
    if results["not_ready_in_time"]:
        lines += ["", f"Not Ready in time: {', '.join(results['not_ready_in_time'])}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200, help="objects to create (200)")
    parser.add_argument("--workers", type=int, default=16, help="client threads creating (16)")
    parser.add_argument("--cluster", help="an existing local cluster's name (default: a new one)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for Ready")
    parser.add_argument("--out", type=Path, help="folder for report.md and results.json")
    args = parser.parse_args()
    with bench_cluster(args.cluster) as cluster:
        results = run(cluster, args.objects, args.workers, args.timeout)
    text = report(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "report.md").write_text(text)
    return 1 if results["not_ready_in_time"] else 0


if __name__ == "__main__":
    sys.exit(main())
