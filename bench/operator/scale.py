"""How fast the operator handles a burst of PowerCappedInference objects (not a test).

Creates N objects at once (parallel API clients) on the local cluster, with the real
``capinfer-operator`` running as a subprocess, and measures for each object the time from
its create request to

* its Deployment being created (a watch on Deployments sees it ADDED; also from the API
  server's own creationTimestamps, to the second),
* its Deployment reporting the pod Ready (the cluster's part), and
* its status saying Ready=True (a watch on the objects sees it),

plus the operator's CPU time and peak memory over the burst, read from /proc. kwok plays
the kubelet of fake GPU nodes the benchmark adds (64 GPUs and 110 pods each, enough for
every pod), so every pod is scheduled and becomes Ready.

Each count runs twice: with the operator's own settings, and with
``CAPINFER_KOPF_DEFAULTS=1``, which leaves kopf's and the client's settings at their
defaults (a baseline for this benchmark only).

    .venv/bin/python bench/operator/scale.py --objects 200 1000 [--cluster NAME] [--out DIR]

Without ``--cluster`` every run gets a fresh local cluster, stopped after it; with it, an
existing one (``capinfer cluster up --name NAME``) is used, and each run waits until its
namespace is deleted, so the next run does not share the API server with a collection.
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

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
    created_server: dict[str, str] = field(default_factory=dict)
    deployment_server: dict[str, str] = field(default_factory=dict)
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
    if not latencies_s:
        return {"count": 0}
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
    """Feed every watch event to ``on_event`` until stopped; a failure is kept, not lost.

    A watch the API server ends (its resource version expired, the stream cut under load)
    starts again from a fresh list: objects first seen then are marked late, never early."""
    try:
        while not stop.is_set():
            try:
                watch_once(stream, on_event, stop, list_kwargs)
            except ApiException as error:
                if error.status not in (None, 410):
                    raise
            except urllib3.exceptions.ProtocolError:
                pass
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


def server_seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@contextmanager
def running_operator(
    cluster: LocalCluster, log_path: Path, kopf_defaults: bool
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    env.pop("CAPINFER_KOPF_DEFAULTS", None)
    if kopf_defaults:
        env["CAPINFER_KOPF_DEFAULTS"] = "1"
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
        existing = LocalCluster(name)
        if not existing.status().running:
            raise SystemExit(f"cluster {name!r} is not running")
        yield existing
        return
    local = LocalCluster(f"bench-{os.getpid()}")
    local.up(lambda message: print(f"[cluster] {message}", flush=True))
    try:
        yield local
    finally:
        local.down()


def run(
    cluster: LocalCluster, objects: int, workers: int, timeout_s: float, kopf_defaults: bool
) -> dict[str, Any]:
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
        with timeline.lock:
            timeline.deployment_server.setdefault(
                deployment.metadata.name, deployment.metadata.creation_timestamp.isoformat()
            )
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
    with running_operator(cluster, log_path, kopf_defaults) as operator:
        time.sleep(5)  # let it start and settle before the baseline sample
        for thread in watchers:
            thread.start()
        time.sleep(1)
        before = sample_process(operator.pid)
        load_before = os.getloadavg()

        def create(name: str) -> None:
            timeline.mark(timeline.created_s, name)  # from the request: the conservative end
            created: Any = custom.create_namespaced_custom_object(
                "capinfer.io", "v1alpha1", namespace, "powercappedinferences",
                inference(name, namespace),
            )  # fmt: skip
            with timeline.lock:
                timeline.created_server[name] = created["metadata"]["creationTimestamp"]

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
    # On a cluster that lives on, the next run must not share it with this collection.
    cluster.kubectl("wait", "--for=delete", f"namespace/{namespace}", "--timeout=900s",
                    check=False, timeout_s=960)  # fmt: skip

    missing = sorted(set(names) - set(timeline.ready_s))
    to_deployment = [timeline.deployment_s[n] - timeline.created_s[n] for n in names
                     if n in timeline.deployment_s]  # fmt: skip
    to_pods_ready = [timeline.pods_ready_s[n] - timeline.created_s[n] for n in names
                     if n in timeline.pods_ready_s]  # fmt: skip
    status_lag = [timeline.ready_s[n] - timeline.pods_ready_s[n] for n in names
                  if n in timeline.ready_s and n in timeline.pods_ready_s]  # fmt: skip
    to_ready = [timeline.ready_s[n] - timeline.created_s[n] for n in names
                if n in timeline.ready_s]  # fmt: skip
    by_server = [
        server_seconds(timeline.deployment_server[n]) - server_seconds(timeline.created_server[n])
        for n in names if n in timeline.deployment_server and n in timeline.created_server
    ]  # fmt: skip
    return {
        "objects": objects,
        "settings": "kopf defaults" if kopf_defaults else "capinfer",
        "create_workers": workers,
        "burst_create_s": round(burst_s, 2),
        "all_ready_after_s": round(all_ready_s, 2),
        "not_ready_in_time": missing,
        "create_to_deployment": summary_s(to_deployment),
        "create_to_deployment_server_clock": summary_s(by_server),
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


ROWS = [
    ("create_to_deployment", "creation -> Deployment"),
    ("create_to_deployment_server_clock", "creation -> Deployment, server timestamps (1 s steps)"),
    ("create_to_pods_ready", "creation -> Deployment's pod Ready (the cluster's part)"),
    ("create_to_ready", "creation -> status Ready=True"),
    ("pods_ready_to_status_ready", "pod Ready -> status Ready (the operator's lag)"),
]


def report(runs: Sequence[dict[str, Any]]) -> str:
    first = runs[0]["machine"]
    lines = [
        "# The operator under a burst of PowerCappedInference objects",
        "",
        "`.venv/bin/python bench/operator/scale.py --objects "
        f"{' '.join(str(n) for n in sorted({r['objects'] for r in runs}))}`: each run on a"
        " fresh local cluster (kube-apiserver, etcd, controller-manager, scheduler built from"
        " source; kwok fake GPU nodes added by the benchmark), on this machine: "
        f"{first['cpus']} CPUs shared with other work (1-minute load average before each"
        " burst below). `kopf defaults` is the same operator with `CAPINFER_KOPF_DEFAULTS=1`.",
        "",
        "| objects | settings | load before | created in | last Ready after |"
        " operator CPU | CPU per object | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        op = r["operator"]
        lines.append(
            f"| {r['objects']} | {r['settings']} | {r['machine']['load_average_1m_before']} |"
            f" {r['burst_create_s']} s | {r['all_ready_after_s']} s | {op['cpu_s']} s |"
            f" {op['cpu_ms_per_object']} ms | {op['peak_rss_mib']} MiB |"
        )
    lines += ["", "| objects | settings | from | p50 | p99 | max |", "|---|---|---|---|---|---|"]
    for r in runs:
        for key, title in ROWS:
            row = r[key]
            if row.get("count"):
                lines.append(
                    f"| {r['objects']} | {r['settings']} | {title} | {row['p50_s']} s |"
                    f" {row['p99_s']} s | {row['max_s']} s |"
                )
    for r in runs:
        if r["not_ready_in_time"]:
            lines += ["", f"{r['objects']} objects, {r['settings']}: not Ready in time:"
                      f" {len(r['not_ready_in_time'])}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[200],
                        help="burst sizes, each a run of its own (200)")  # fmt: skip
    parser.add_argument(
        "--settings", nargs="+", choices=["capinfer", "kopf-defaults"],
        default=["capinfer", "kopf-defaults"],
        help="the operator's own settings, kopf's defaults, or both (both)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=8, help="parallel creating clients (8)")
    parser.add_argument("--cluster", help="an existing local cluster's name (default: a new one)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for Ready")
    parser.add_argument("--out", type=Path, help="folder for report.md and results.json")
    args = parser.parse_args()
    runs = []
    for objects in args.objects:
        for settings in args.settings:
            print(f"[bench] {objects} objects, {settings}", flush=True)
            with bench_cluster(args.cluster) as cluster:
                runs.append(
                    run(cluster, objects, args.workers, args.timeout, settings == "kopf-defaults")
                )
            print(json.dumps(runs[-1]), flush=True)
    text = report(runs)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(runs, indent=2) + "\n")
        (args.out / "report.md").write_text(text)
    return 1 if any(r["not_ready_in_time"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
