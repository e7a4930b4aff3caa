"""The node agent against the real API server, the kubelet's API and virtual GPUs.

What is real: the kube-apiserver (TokenReview of pod-bound ServiceAccount tokens, the pods
of the node, the chart's RBAC for the agent, which runs with a token of its ServiceAccount
and nothing more), the agent process and its socket protocol (spoken by the sidecar's own
client).

What stands in, and why: kwok's nodes have no kubelet, so nothing serves the pod-resources
API; :class:`capinfer.podresources.PodResourcesServer` serves it instead, built from the
kubelet's published proto (``k8s.io/kubelet`` ``pkg/apis/podresources/v1/api.proto``, the
same stubs the agent uses), answering what a kubelet with NVIDIA's device plugin would.
There is no GPU: three virtual GPUs (a P40 profile) keep their knobs in controls files,
which the tests read back as one would read NVML.

Tokens are requested as the kubelet requests them for a projected volume: TokenRequest
bound to the pod, for the agent's audience.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from capinfer.localagent import LocalNodeAgent
from capinfer.localcluster.cluster import LocalCluster
from capinfer.podresources import PodResourcesServer
from capinfer_sidecar.gpu.agent import NodeAgentClient
from capinfer_sidecar.gpu.errors import GpuPermissionError
from capinfer_sidecar.gpu.virtual import VirtualGpuControls, read_controls
from capinfer_sidecar.sim.profiles import load_profile_set

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "capinfer"
NODE, OTHER_NODE = "gpu-node-0", "gpu-node-1"
GPUS = ("GPU-a0000000-0000-0000-0000-000000000000",
        "GPU-b0000000-0000-0000-0000-000000000000",
        "GPU-c0000000-0000-0000-0000-000000000000")  # fmt: skip
AUDIENCE = "capinfer-node-agent"
RESET_BOUND_S = 15.0
"""Generous: the agent reconciles every second; the figure measured is printed."""
PROFILE = load_profile_set("p40").workload("Res50", "imagenet")


@dataclass
class Rig:
    cluster: LocalCluster
    work: Path
    kubeconfig: Path
    pod_resources: PodResourcesServer
    controls: dict[str, Path]

    def agent(self, *extra: str) -> LocalNodeAgent:
        return LocalNodeAgent(
            self.work / "agent", NODE, self.kubeconfig, self.pod_resources.socket_path,
            self.controls, extra_args=extra,
        )  # fmt: skip

    def knobs(self, gpu: str) -> dict[str, object]:
        return read_controls(self.controls[gpu])


def agent_rbac(cluster: LocalCluster, release: str, namespace: str) -> str:
    """The chart's ServiceAccount, ClusterRole and binding for the agent, as helm renders them."""
    rendered = subprocess.run(
        [str(cluster.binaries.path("helm")), "template", release, str(CHART),
         "--namespace", namespace, "--kube-version", "1.34.4",
         "--show-only", "templates/nodeagent.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
    assert len(docs) == 3, rendered
    return yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def rig(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    release = f"na-{uuid.uuid4().hex[:6]}"
    namespace = f"capinfer-{release}"
    cluster.kubectl("create", "namespace", namespace)
    rbac = agent_rbac(cluster, release, namespace)
    cluster.kubectl("apply", "-f", "-", input_text=rbac)
    work = Path(tmp_path_factory.mktemp("node-agent"))
    kubeconfig = cluster.service_account_kubeconfig(
        namespace, f"{release}-capinfer-node-agent", work / "agent.kubeconfig"
    )
    controls = {gpu: work / f"{gpu}.json" for gpu in GPUS}
    server = PodResourcesServer(work / "pod-resources" / "kubelet.sock").start()
    try:
        yield Rig(cluster, work, kubeconfig, server, controls)
    finally:
        server.stop()
        cluster.kubectl("delete", "-f", "-", "--wait=false", input_text=rbac, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def agent(rig: Rig) -> Iterator[LocalNodeAgent]:
    with rig.agent() as running:
        yield running
    print((rig.work / "agent" / "node-agent.log").read_text()[-3000:])


def make_pod(cluster: LocalCluster, namespace: str, name: str, node: str = NODE) -> str:
    """A pod bound to ``node`` (kwok runs it) with ServiceAccount ``workload``; its UID."""
    cluster.kubectl("create", "serviceaccount", "workload", "-n", namespace, check=False)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "workload",
            "automountServiceAccountToken": False,
            "containers": [{"name": "triton", "image": "triton"}],
        },
    }
    created = cluster.kubectl("create", "-o", "json", "-f", "-", input_text=json.dumps(pod))
    return str(json.loads(created.stdout)["metadata"]["uid"])


def token(
    cluster: LocalCluster, namespace: str, pod: str, path: Path, audience: str = AUDIENCE
) -> Path:
    """What the kubelet puts in the pod's projected token volume."""
    value = cluster.kubectl(
        "create", "token", "workload", "-n", namespace, "--bound-object-kind=Pod",
        f"--bound-object-name={pod}", f"--audience={audience}", "--duration=10m",
    ).stdout.strip()  # fmt: skip
    path.write_text(value)
    return path


def client_for(rig: Rig, agent: LocalNodeAgent, namespace: str, pod: str) -> NodeAgentClient:
    path = token(rig.cluster, namespace, pod, rig.work / f"{namespace}-{pod}.token")
    return NodeAgentClient(agent.address, path)


def refused_count(agent: LocalNodeAgent) -> float:
    total = 0.0
    for line in agent.metrics_text().splitlines():
        if line.startswith("capinfer_node_agent_requests_total{") and 'result="refused"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_reset(rig: Rig, gpu: str, since: float) -> float:
    while rig.knobs(gpu).get("locked_sm_clock_mhz") or rig.knobs(gpu).get("power_limit_watts"):
        elapsed = time.monotonic() - since
        assert elapsed < RESET_BOUND_S, f"{gpu} not reset after {elapsed:.1f} s: {rig.knobs(gpu)}"
        time.sleep(0.05)
    return time.monotonic() - since


def clock(index: int) -> int:
    return VirtualGpuControls(PROFILE, Path("/dev/null")).supported_sm_clocks_mhz()[index]


def test_a_pod_sets_its_own_gpus_clock_and_board_limit(
    rig: Rig, agent: LocalNodeAgent, namespace: str
) -> None:
    make_pod(rig.cluster, namespace, "owner")
    rig.pod_resources.assign(namespace, "owner", "triton", [GPUS[0]])
    client = client_for(rig, agent, namespace, "owner")
    assert client.hello() == [GPUS[0]]

    client.lock_sm_clock([GPUS[0]], clock(2))
    assert rig.knobs(GPUS[0])["locked_sm_clock_mhz"] == clock(2)
    (limit,) = client.set_power_limit([GPUS[0]], 200)
    assert (limit.enforced_watts, limit.below_minimum) == (200, False)
    assert rig.knobs(GPUS[0])["power_limit_watts"] == 200
    # Below the card's minimum (a P40's 125 W): clamped, read back, and said.
    (low,) = client.set_power_limit([GPUS[0]], 100)
    assert (low.enforced_watts, low.min_watts, low.below_minimum) == (125, 125, True)
    (high,) = client.set_power_limit([GPUS[0]], 400)
    assert high.enforced_watts == 250 == high.max_watts
    client.reset_sm_clock([GPUS[0]])
    assert rig.knobs(GPUS[0])["locked_sm_clock_mhz"] is None
    rig.cluster.kubectl("delete", "pod", "owner", "-n", namespace, "--wait=true")
    wait_reset(rig, GPUS[0], time.monotonic())


def test_a_pod_asking_for_a_gpu_it_does_not_hold_is_refused(
    rig: Rig, agent: LocalNodeAgent, namespace: str
) -> None:
    make_pod(rig.cluster, namespace, "greedy")
    rig.pod_resources.assign(namespace, "greedy", "triton", [GPUS[0]])
    client = client_for(rig, agent, namespace, "greedy")
    before = refused_count(agent)
    with pytest.raises(GpuPermissionError, match=f"does not hold {GPUS[1]}"):
        client.lock_sm_clock([GPUS[1]], clock(0))
    with pytest.raises(GpuPermissionError, match=f"does not hold {GPUS[1]}"):
        client.set_power_limit([GPUS[0], GPUS[1]], 150)  # all or nothing
    assert rig.knobs(GPUS[1]) == {} and rig.knobs(GPUS[0]).get("power_limit_watts") is None
    assert refused_count(agent) == before + 2
    assert f"does not hold {GPUS[1]}" in agent.log_path.read_text()


def test_tokens_of_other_pods_or_audiences_are_refused(
    rig: Rig, agent: LocalNodeAgent, namespace: str
) -> None:
    make_pod(rig.cluster, namespace, "holder")
    rig.pod_resources.assign(namespace, "holder", "triton", [GPUS[0]])
    make_pod(rig.cluster, namespace, "neighbour")
    rig.pod_resources.assign(namespace, "neighbour", "triton", [GPUS[2]])
    make_pod(rig.cluster, namespace, "elsewhere", node=OTHER_NODE)
    cases = {
        # the neighbour's own token, asking for the holder's GPU
        "neighbour": (client_for(rig, agent, namespace, "neighbour"), "does not hold"),
        # a pod of another node: the agent only serves its own node's pods
        "elsewhere": (client_for(rig, agent, namespace, "elsewhere"), f"not {NODE}"),
        # the holder's token, but for the API server's audience (what Triton could have had)
        "api-audience": (
            NodeAgentClient(
                agent.address,
                token(
                    rig.cluster,
                    namespace,
                    "holder",
                    rig.work / "api.token",
                    audience="https://kubernetes.default.svc.cluster.local",
                ),
            ),
            "token not valid",
        ),
        "no-token": (NodeAgentClient(agent.address, None), "no token"),
    }
    for name, (client, why) in cases.items():
        with pytest.raises(GpuPermissionError, match=why):
            client.lock_sm_clock([GPUS[0]], clock(0))
        print(f"{name}: refused ({why})")
    assert rig.knobs(GPUS[0]).get("locked_sm_clock_mhz") is None, "a refused request acted"


def test_a_deleted_pods_gpus_are_reset_within_seconds(
    rig: Rig, agent: LocalNodeAgent, namespace: str
) -> None:
    make_pod(rig.cluster, namespace, "leaver")
    rig.pod_resources.assign(namespace, "leaver", "triton", [GPUS[1]])
    client = client_for(rig, agent, namespace, "leaver")
    client.lock_sm_clock([GPUS[1]], clock(1))
    client.set_power_limit([GPUS[1]], 150)
    assert rig.knobs(GPUS[1])["locked_sm_clock_mhz"] == clock(1)
    deleted = time.monotonic()
    # The kubelet keeps listing a pod's devices until it is gone; the pod's deletion alone
    # must be enough.
    rig.cluster.kubectl("delete", "pod", "leaver", "-n", namespace, "--wait=true")
    print(f"pod deleted in {time.monotonic() - deleted:.2f} s")
    took = wait_reset(rig, GPUS[1], deleted)
    print(f"clock and limit reset {took:.2f} s after the delete was sent")
    assert "reset to its default clocks and power limit" in agent.log_path.read_text()
    rig.pod_resources.release(namespace, "leaver")


def test_a_killed_agent_reconciles_when_it_starts_again(rig: Rig, namespace: str) -> None:
    agent = rig.agent().start()
    try:
        make_pod(rig.cluster, namespace, "gone")
        rig.pod_resources.assign(namespace, "gone", "triton", [GPUS[1]])
        make_pod(rig.cluster, namespace, "stays")
        rig.pod_resources.assign(namespace, "stays", "triton", [GPUS[2]])
        client_for(rig, agent, namespace, "gone").lock_sm_clock([GPUS[1]], clock(0))
        stays = client_for(rig, agent, namespace, "stays")
        stays.lock_sm_clock([GPUS[2]], clock(3))
        stays.set_power_limit([GPUS[2]], 180)
        agent.kill()  # SIGKILL: nothing reset
        rig.cluster.kubectl("delete", "pod", "gone", "-n", namespace, "--wait=true")
        rig.pod_resources.release(namespace, "gone")
        assert rig.knobs(GPUS[1])["locked_sm_clock_mhz"] == clock(0), "a GPU outlives its agent"
        agent.start()
        assert rig.knobs(GPUS[1]).get("locked_sm_clock_mhz") is None, "not reset at start"
        assert rig.knobs(GPUS[2])["locked_sm_clock_mhz"] == clock(3), "a live pod's clock reset"
        assert rig.knobs(GPUS[2])["power_limit_watts"] == 180
        assert f"reset at start: {GPUS[1]}" in agent.log_path.read_text()
        stays.lock_sm_clock([GPUS[2]], clock(2))  # the restarted agent serves the live pod
    finally:
        code = agent.stop()  # SIGTERM with --reset-on-exit (the default)
        print(agent.log_path.read_text()[-3000:])
    assert code == 0
    assert rig.knobs(GPUS[2]).get("locked_sm_clock_mhz") is None, "not reset on exit"
    assert rig.knobs(GPUS[2]).get("power_limit_watts") is None


def test_without_reset_on_exit_the_next_agent_adopts_live_claims(rig: Rig, namespace: str) -> None:
    agent = rig.agent("--no-reset-on-exit").start()
    try:
        make_pod(rig.cluster, namespace, "long")
        rig.pod_resources.assign(namespace, "long", "triton", [GPUS[0]])
        client = client_for(rig, agent, namespace, "long")
        client.lock_sm_clock([GPUS[0]], clock(1))
        assert agent.stop() == 0
        assert rig.knobs(GPUS[0])["locked_sm_clock_mhz"] == clock(1), "reset although told not to"
        agent.start()
        assert rig.knobs(GPUS[0])["locked_sm_clock_mhz"] == clock(1)
        deleted = time.monotonic()
        rig.cluster.kubectl("delete", "pod", "long", "-n", namespace, "--wait=true")
        print(f"reset {wait_reset(rig, GPUS[0], deleted):.2f} s after the delete")
    finally:
        agent.stop()
        rig.pod_resources.release(namespace, "long")
