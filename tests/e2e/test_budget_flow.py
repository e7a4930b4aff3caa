"""End to end: two objects, two pods each, under one PowerBudget.

The real operator (cluster-wide, so it runs the budget controller) creates the Deployments;
kwok marks the four pods Running; each pod's own containers (Triton and the sidecar, from the
rendered pod spec, with the pod's ServiceAccount) then run here, each on a virtual GPU of its
own under load (16 concurrent requests each), with a local node agent for its clocks. A
service budget over both objects is patched down, then up: the allocations follow, and the
pods' summed measured power stays within the budget once each change has settled.

Four Triton servers and their load share this machine's CPUs: the figures are printed, and
the bounds are the budget itself with room for the sensor's peak sampling, not timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capinfer.demo import MODEL, local_env, sidecar_command
from capinfer.localcluster.cluster import LocalCluster
from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad

pytestmark = [pytest.mark.cluster, pytest.mark.triton]

CAP_WATTS = 180
PHASES = (0.6, 0.3, 0.8)
"""The budget, in turn: the four minimums plus this share of what the pods draw above them
under no budget. So every budget binds and every one is satisfiable, whatever this machine's
load lets the pods draw (the virtual GPU draws what Triton executes, and Triton here runs on
the same CPUs as everything else)."""
MIN_WATTS = 75
"""Per GPU. The policy moves the SM clock (DVFS): a virtual P40 serving batches of 8 peaks at
about 68 W at its lowest clock and 120 W at its highest, so every cap from 75 W up can be
held."""
NOISE = 1.05
"""A sample of the summed peak power may exceed the budget by this factor (each pod's peak
is the highest of five instant readings per 100 ms)."""


def get(cluster: LocalCluster, *args: str) -> Any:
    found = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def wait(what: str, check: Any, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def inference(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerCappedInference",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 2,
            "triton": {
                "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                "model": MODEL,
                "modelRepository": {"uri": "s3://capinfer-e2e/models"},
            },
            # The clock alone: the policy raises it to fill its band under the cap, so the pods
            # draw what their load allows when no budget binds (Adaptive would lower clocks
            # where the cap does not bind), and lowers it within milliseconds under a budget.
            "power": {"capWatts": CAP_WATTS, "policy": "DVFS"},
        },
    }


def running_pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    found = get(cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/managed-by=capinfer")
    return [
        p for p in (found or {}).get("items", [])
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    ]  # fmt: skip


@contextlib.contextmanager
def local_pods(
    cluster: LocalCluster, namespace: str, pods: list[dict[str, Any]], work: Path
) -> Iterator[list[LocalPod]]:
    """Each pod's containers, here, from its rendered spec and with its ServiceAccount."""
    started: list[LocalPod] = []
    try:
        for index, pod in enumerate(pods):
            sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "capinfer-sidecar")
            env = local_env(sidecar, pod)
            # The node agent here is the pod's own local one (LocalPod's flags name it; it
            # authenticates by the socket's peer, not by the token a kubelet would project).
            env.pop("CAPINFER_NODE_AGENT_TOKEN", None)
            account = pod["spec"]["serviceAccountName"]
            env["KUBECONFIG"] = str(cluster.service_account_kubeconfig(
                namespace, account, work / f"sidecar-{index}.kubeconfig"))  # fmt: skip
            local = LocalPod(
                work / f"pod-{index}",
                ["--status-interval", "1"],
                model=SimBatchSpec(name=MODEL, max_batch_size=8, max_supported_batch_size=256),
                env=env,
                sidecar_command=sidecar_command(sidecar),
            )
            local.start()
            started.append(local)
        yield started
    finally:
        for local in started:
            local.stop()


def allocations(cluster: LocalCluster, namespace: str) -> dict[str, float]:
    found = get(cluster, "pci", "-n", namespace) or {"items": []}
    return {
        e["name"]: float(e["allocatedCapWatts"])
        for obj in found["items"]
        for e in obj.get("status", {}).get("pods", [])
        if "allocatedCapWatts" in e
    }


def enforced(cluster: LocalCluster, budget: str, watts: float) -> bool:
    status = (get(cluster, "powerbudget", budget) or {}).get("status", {})
    condition = next((c for c in status.get("conditions", []) if c["type"] == "Enforced"), {})
    return (
        condition.get("status") == "True"
        and status.get("observedGeneration") == (get(cluster, "powerbudget", budget) or {})
        .get("metadata", {}).get("generation")
        and status.get("allocatedWatts", 1e9) <= watts
    )  # fmt: skip


async def settle(
    pods: list[LocalPod], caps: list[float], what: str, timeout_s: float = 180
) -> None:
    """Until every pod obeys its cap (``caps``, in the order of ``pods``) and draws within
    it, sensor noise allowed, at three scrapes in a row: the policies have settled. A
    policy's settling takes reloads, whose time this machine's load decides; the bound
    checked afterwards is the budget, not a time."""
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while in_a_row < 3:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        samples = [await asyncio.to_thread(p.scrape) for p in pods]
        obeys = all(
            s.cap_watts is not None
            and abs(s.cap_watts - cap) < 0.5
            and s.power_watts is not None
            and s.power_watts <= cap * NOISE
            for s, cap in zip(samples, caps, strict=True)
        )
        in_a_row = in_a_row + 1 if obeys else 0
        await asyncio.sleep(0.5)


async def summed_power(pods: list[LocalPod], seconds: float) -> list[float]:
    """The four pods' power, summed, every 0.5 s."""
    sums = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples = [await asyncio.to_thread(p.scrape) for p in pods]
        powers = [s.power_watts for s in samples if s.power_watts is not None]
        if len(powers) == len(pods):
            sums.append(sum(powers))
        await asyncio.sleep(0.5)
    return sums


async def test_two_objects_share_one_budget_through_patches_down_and_up(
    cluster: LocalCluster, operator_process: Path, namespace: str, tmp_path: Path
) -> None:
    team = {"team": f"t{uuid.uuid4().hex[:8]}"}
    budget = f"e2e-{uuid.uuid4().hex[:6]}"
    for name in ("alpha", "beta"):
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(inference(name, namespace, team)))
    wait("four Running pods", lambda: len(running_pods(cluster, namespace)) == 4)
    pods = running_pods(cluster, namespace)
    with local_pods(cluster, namespace, pods, tmp_path) as local:
        loads = [ClosedLoopLoad(p.triton.http_address if p.triton else "", MODEL, concurrency=16)
                 for p in local]  # fmt: skip
        for load in loads:
            load.start()
        try:
            names = [p["metadata"]["name"] for p in pods]
            await settle(local, [CAP_WATTS] * len(local), "the pods to settle under their caps")
            free = statistics.median(await summed_power(local, 12))
            floors = MIN_WATTS * len(local)
            assert free > floors + 20, f"the pods draw {free:.1f} W: too little for budgets to bind"
            phases = [round(floors + share * (free - floors)) for share in PHASES]
            print(f"no budget: the four pods draw {free:.1f} W (median); budgets {phases} W")
            spec = {"watts": phases[0], "selector": {"matchLabels": team},
                    "defaults": {"minWattsPerGpu": MIN_WATTS}}  # fmt: skip
            manifest = {"apiVersion": "capinfer.io/v1alpha1", "kind": "PowerBudget",
                        "metadata": {"name": budget}, "spec": spec}  # fmt: skip
            cluster.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
            try:
                for watts in phases:
                    patch = json.dumps({"spec": {"watts": watts}})
                    cluster.kubectl("patch", "powerbudget", budget, "--type=merge", "-p", patch)
                    wait(f"the {watts:g} W split in force", lambda w=watts: enforced(  # type: ignore[misc]
                        cluster, budget, w))  # fmt: skip
                    split = allocations(cluster, namespace)
                    assert len(split) == 4 and sum(split.values()) <= watts
                    caps = [min(CAP_WATTS, split[name]) for name in names]
                    await settle(local, caps, f"the pods to settle under the {watts:g} W split")
                    sums = await summed_power(local, 15)
                    over = sum(1 for s in sums if s > watts * NOISE) / max(1, len(sums))
                    median = statistics.median(sums)
                    print(f"budget {watts:g} W: allocations {sorted(split.values())},"
                          f" summed power median {median:.1f} W, {over:.0%} of samples over"
                          f" {NOISE:.2f}x budget")  # fmt: skip
                    assert median <= watts
                    assert over <= 0.1
            finally:
                cluster.kubectl("delete", "powerbudget", budget, "--ignore-not-found",
                                "--timeout=60s")  # fmt: skip
            wait("the allocations removed", lambda: not allocations(cluster, namespace))
        finally:
            counts = [await load.stop() for load in loads]
    assert all(c.failed == 0 for c in counts), [c.errors for c in counts]
