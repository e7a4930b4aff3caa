"""``capinfer demo``: capinfer doing its job on this machine, no GPU needed.

A local cluster with fake GPU nodes → the operator → a sample PowerCappedInference → its
pod, scheduled and Running on a fake node, whose containers then really run here: Triton
(the ``simbatch`` model) and the sidecar with the command and environment of the rendered
pod spec, on a virtual GPU. The node agent runs here too, as the node's DaemonSet pod
would: with the chart's RBAC, the kubelet's pod-resources API served from its published
proto (kwok has no kubelet), and the virtual GPU's knobs, which it sets for the pod's
sidecar (locked clocks, the board power limit at the cap) and resets once the pod is gone.
A load generator saturates Triton; the cap is lowered and raised mid-run with
``kubectl patch``; live progress, then a summary and a plot.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capinfer.errors import UserError
from capinfer.localagent import LocalNodeAgent
from capinfer.localcluster.cluster import LocalCluster
from capinfer.localpod import LocalPod, SidecarSample
from capinfer.podresources import PodResourcesServer
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad, LoadCounts
from capinfer_sidecar.gpu.virtual import VIRTUAL_UUID, read_controls

CRD_FILE = "capinfer.io_powercappedinferences.yaml"
NAMESPACE = "capinfer-demo"
OBJECT = "resnet-demo"
MODEL = "simbatch"
AGENT_RELEASE = "capinfer-demo"
AGENT_AUDIENCE = "capinfer-node-agent"
RESET_WAIT_S = 30.0


@dataclass(frozen=True)
class CapStep:
    at_s: float
    cap_watts: float


@dataclass(frozen=True)
class DemoPlan:
    """What the demo does and when; the end-to-end test runs a shorter one."""

    steps: tuple[CapStep, ...] = (CapStep(0, 150), CapStep(45, 100), CapStep(90, 180))
    duration_s: float = 135.0
    concurrency: int = 64
    report_every_s: float = 3.0


@dataclass
class DemoResult:
    samples: list[SidecarSample] = field(default_factory=list)
    load: LoadCounts | None = None
    pod_name: str = ""
    status_caps: list[float] = field(default_factory=list)
    """capWatts of the pod's status entry, read after each cap change settled."""
    power_limits: list[float | None] = field(default_factory=list)
    """The board power limit the node agent set and read back, at the same moments."""
    backstop_notes: list[str | None] = field(default_factory=list)
    """The status entry's backstopMessage at the same moments (a cap below the minimum)."""
    gpu_reset_s: float | None = None
    """Seconds from deleting the object to the agent resetting the GPU's knobs."""
    cleaned_up: bool = False


def find_in_repository(relative: str) -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / relative
        if candidate.exists():
            return candidate
    raise UserError(f"cannot find {relative}; run the demo from the repository")


def find_crd() -> Path:
    return find_in_repository(f"crds/{CRD_FILE}")


def sidecar_command(container: dict[str, Any]) -> list[str]:
    command = [str(part) for part in container.get("command", ["capinfer-sidecar"])]
    resolved = shutil.which(command[0]) or str(Path(sys.executable).parent / command[0])
    if not Path(resolved).exists():
        raise UserError(f"{command[0]} is not installed here (pip install -e .)")
    return [resolved, *command[1:], *[str(a) for a in container.get("args", [])]]


def local_env(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """The container's env, with the downward API resolved from the real pod object."""
    fields = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
    }
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = fields.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
    return env


def sample_object(cap_watts: float) -> dict[str, Any]:
    return {
        "apiVersion": "capinfer.io/v1alpha1",
        "kind": "PowerCappedInference",
        "metadata": {"name": OBJECT, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "triton": {
                "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                "model": MODEL,
                "modelRepository": {"uri": "s3://capinfer-demo/models"},
            },
            "sidecar": {"image": "capinfer:demo"},
            "power": {"capWatts": cap_watts, "policy": "Adaptive"},
        },
    }


class Demo:
    """The demo's flow, step by step; every process it starts is stopped by :meth:`close`."""

    def __init__(
        self,
        work_dir: Path,
        plan: DemoPlan,
        say: Callable[[str], None],
        *,
        cluster_name: str = "demo",
        cluster: LocalCluster | None = None,
        run_operator: bool = True,
    ) -> None:
        self.work_dir = work_dir
        self.plan = plan
        self.say = say
        self._own_cluster = cluster is None
        self._run_operator = run_operator
        self.cluster = cluster or LocalCluster(cluster_name)
        self._stack = ExitStack()
        self.result = DemoResult()

    # -- set-up ------------------------------------------------------------------------
    def start_cluster(self) -> None:
        if self._own_cluster:
            self.say("starting the local cluster (first run builds Kubernetes from source)")
            self.cluster.up(lambda message: self.say(f"  {message}"))
            self._stack.callback(self.cluster.down)
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(find_crd()))
        self.cluster.kubectl("wait", "--for=condition=Established",
                             "crd/powercappedinferences.capinfer.io", "--timeout=60s")  # fmt: skip
        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)

    @property
    def agent_dir(self) -> Path:
        return self.work_dir / "node-agent"

    @property
    def gpu_controls(self) -> Path:
        return self.work_dir / "gpu-controls.json"

    def start_operator(self) -> None:
        log_path = self.work_dir / "operator.log"
        self.say(f"starting capinfer-operator (log: {log_path})")
        agent_address = f"unix://{self.agent_dir / 'agent.sock'}"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "capinfer_operator.main", "--namespace", NAMESPACE,
                 "--standalone", "--node-agent-address", agent_address],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
            )  # fmt: skip

        def stop() -> None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        self._stack.callback(stop)

    def create_object(self) -> dict[str, Any]:
        first_cap = self.plan.steps[0].cap_watts
        self.say(f"kubectl apply: PowerCappedInference {OBJECT}, cap {first_cap:g} W per GPU")
        self.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(sample_object(first_cap)))
        self._stack.callback(self.delete_object)
        pod = self._wait_for_running_pod()
        self.result.pod_name = pod["metadata"]["name"]
        self.say(
            f"pod {self.result.pod_name} is Running on fake GPU node {pod['spec']['nodeName']}"
        )
        return pod

    def _wait_for_running_pod(self, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.cluster.kubectl(
                "get", "pods", "-n", NAMESPACE, "-l", f"capinfer.io/inference={OBJECT}",
                "-o", "json", check=False,
            )  # fmt: skip
            for pod in json.loads(found.stdout or '{"items": []}')["items"]:
                if pod["status"].get("phase") == "Running":
                    return dict(pod)
            time.sleep(0.5)
        raise UserError("the operator's pod never became Running; see operator.log")

    def start_node_agent(self, pod: dict[str, Any]) -> LocalNodeAgent:
        """The agent of the pod's node, here, with the chart's RBAC and a stand-in kubelet."""
        node = pod["spec"]["nodeName"]
        rendered = subprocess.run(
            [str(self.cluster.binaries.path("helm")), "template", AGENT_RELEASE,
             str(find_in_repository("helm/capinfer")), "--namespace", NAMESPACE,
             "--kube-version", "1.34.4", "--show-only", "templates/nodeagent.yaml"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
        rbac_docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
        rbac = yaml.safe_dump_all(rbac_docs)
        self.cluster.kubectl("apply", "-f", "-", input_text=rbac)
        self._stack.callback(
            self.cluster.kubectl, "delete", "-f", "-", "--wait=false", input_text=rbac, check=False
        )
        account = next(d["metadata"]["name"] for d in rbac_docs if d["kind"] == "ServiceAccount")
        kubeconfig = self.cluster.service_account_kubeconfig(
            NAMESPACE, account, self.work_dir / "node-agent.kubeconfig"
        )
        kubelet = PodResourcesServer(self.work_dir / "kubelet" / "pod-resources.sock").start()
        self._stack.callback(kubelet.stop)
        kubelet.assign(NAMESPACE, pod["metadata"]["name"], "triton", [VIRTUAL_UUID])
        self.gpu_controls.unlink(missing_ok=True)
        agent = LocalNodeAgent(
            self.agent_dir, node, kubeconfig, kubelet.socket_path, {VIRTUAL_UUID: self.gpu_controls}
        )
        self.say(f"starting capinfer-node-agent for node {node} (log: {agent.log_path})")
        agent.start()
        self._stack.callback(agent.stop)
        return agent

    def wait_gpu_reset(self, since_s: float) -> float | None:
        """Seconds until the agent gave the GPU back its defaults; None if it never did."""
        while time.monotonic() - since_s < RESET_WAIT_S:
            knobs = read_controls(self.gpu_controls)
            if knobs.get("locked_sm_clock_mhz") is None and knobs.get("power_limit_watts") is None:
                return time.monotonic() - since_s
            time.sleep(0.1)
        return None

    @contextmanager
    def local_pod(self, pod: dict[str, Any], agent: LocalNodeAgent) -> Iterator[LocalPod]:
        """Run the pod's containers here, from its rendered spec."""
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        triton_args = containers["triton"]["args"]
        if "--model-control-mode=explicit" not in triton_args:
            raise UserError("the rendered Triton container is not in explicit model-control mode")
        sidecar = containers["capinfer-sidecar"]
        env = local_env(sidecar, pod)
        account = pod["spec"]["serviceAccountName"]
        kubeconfig = self.cluster.service_account_kubeconfig(
            NAMESPACE, account, self.work_dir / "sidecar.kubeconfig"
        )
        env["KUBECONFIG"] = str(kubeconfig)
        # The pod's projected token for the agent, as the kubelet would write it, and the
        # agent of its node: node-local things, mapped to here like the API token above.
        token = self.cluster.kubectl(
            "create", "token", account, "-n", NAMESPACE, "--bound-object-kind=Pod",
            f"--bound-object-name={pod['metadata']['name']}", f"--audience={AGENT_AUDIENCE}",
        ).stdout.strip()  # fmt: skip
        token_path = self.work_dir / "node-agent.token"
        token_path.write_text(token)
        env["CAPINFER_NODE_AGENT"] = agent.address
        env["CAPINFER_NODE_AGENT_TOKEN"] = str(token_path)
        local = LocalPod(
            self.work_dir / "pod",
            ["--status-interval", "2"],
            model=SimBatchSpec(name=MODEL, max_batch_size=8, max_supported_batch_size=256),
            env=env,
            sidecar_command=sidecar_command(sidecar),
            virtual_controls=self.gpu_controls,
            local_agent=False,  # the node's agent, started above, serves this pod
        )
        self.say("starting the pod's containers here: tritonserver + capinfer-sidecar "
                 f"(as ServiceAccount {account})")  # fmt: skip
        local.start()
        try:
            yield local
        finally:
            local.stop()

    # -- the run -----------------------------------------------------------------------
    def patch_cap(self, cap_watts: float) -> None:
        patch = json.dumps({"spec": {"power": {"capWatts": cap_watts}}})
        self.cluster.kubectl("patch", "pci", OBJECT, "-n", NAMESPACE, "--type=merge", "-p", patch)

    def status_entry(self) -> dict[str, Any]:
        found = self.cluster.kubectl("get", "pci", OBJECT, "-n", NAMESPACE, "-o", "json")
        entries = json.loads(found.stdout).get("status", {}).get("pods", [])
        return next((dict(e) for e in entries if e["name"] == self.result.pod_name), {})

    async def drive(self, pod: LocalPod) -> None:
        if pod.triton is None:
            raise RuntimeError("the local pod is not running")
        plan = self.plan
        steps = list(plan.steps[1:])
        start = time.monotonic()
        next_report = 0.0
        self.say(f"{'time':>6} {'cap W':>6} {'power W':>8} {'batch':>6} {'clock':>6} {'inf/s':>7}")
        async with ClosedLoopLoad(pod.triton.http_address, MODEL,
                                  concurrency=plan.concurrency) as load:  # fmt: skip
            while (elapsed := time.monotonic() - start) < plan.duration_s:
                if steps and elapsed >= steps[0].at_s:
                    self._record_status()
                    step = steps.pop(0)
                    self.say(f"kubectl patch pci {OBJECT}: capWatts {step.cap_watts:g}")
                    await asyncio.to_thread(self.patch_cap, step.cap_watts)
                sample = await asyncio.to_thread(pod.scrape)
                self.result.samples.append(
                    SidecarSample(**{**sample.__dict__, "at_s": sample.at_s - start})
                )
                if elapsed >= next_report:
                    next_report += plan.report_every_s
                    self.say(_progress_line(elapsed, sample))
                await asyncio.sleep(0.25)
            self._record_status()
            self.result.load = await load.stop()

    def _record_status(self) -> None:
        entry = self.status_entry()
        self.result.status_caps.append(float(entry.get("capWatts", 0)))
        limit = entry.get("powerLimitWatts")
        self.result.power_limits.append(float(limit) if limit is not None else None)
        self.result.backstop_notes.append(entry.get("backstopMessage"))

    def delete_object(self) -> None:
        self.cluster.kubectl("delete", "pci", OBJECT, "-n", NAMESPACE, "--wait=false", check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = self.cluster.kubectl(
                "get", "deploy,svc,role,rolebinding,sa,pods", "-n", NAMESPACE,
                "-l", f"app.kubernetes.io/instance={OBJECT}", "-o", "name", check=False,
            ).stdout.strip()  # fmt: skip
            if not left:
                self.result.cleaned_up = True
                return
            time.sleep(0.5)

    def close(self) -> None:
        self._stack.close()

    def run(self) -> DemoResult:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_cluster()
            if self._run_operator:
                self.start_operator()
            pod = self.create_object()
            agent = self.start_node_agent(pod)
            with self.local_pod(pod, agent) as local:
                asyncio.run(self.drive(local))
            deleted = time.monotonic()
            self.say(
                f"kubectl delete pci {OBJECT}: the node agent resets the GPU once the pod is gone"
            )
            self.delete_object()
            self.result.gpu_reset_s = self.wait_gpu_reset(deleted)
        finally:
            self.close()
        return self.result


def _progress_line(elapsed_s: float, sample: SidecarSample) -> str:
    def show(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (
        f"{elapsed_s:5.0f}s {show(sample.cap_watts):>6} {show(sample.power_watts, 1):>8}"
        f" {show(sample.batch_size):>6} {show(sample.sm_clock_mhz):>6}"
        f" {show(sample.inferences_per_second):>7}"
    )


def phase_summary(result: DemoResult, plan: DemoPlan) -> list[dict[str, float]]:
    """Per cap: median power and throughput in each phase's second half, time over the cap."""
    rows = []
    bounds = [*[s.at_s for s in plan.steps], plan.duration_s]
    for step, end in zip(plan.steps, bounds[1:], strict=True):
        settled_from = step.at_s + (end - step.at_s) / 2
        window = [s for s in result.samples if settled_from <= s.at_s < end]
        powers = sorted(s.power_watts for s in window if s.power_watts is not None)
        rates = sorted(s.inferences_per_second for s in window if s.inferences_per_second)
        over = sum(1 for p in powers if p > step.cap_watts)
        rows.append({
            "cap_watts": step.cap_watts,
            "median_power_watts": powers[len(powers) // 2] if powers else float("nan"),
            "median_inferences_per_second": rates[len(rates) // 2] if rates else float("nan"),
            "share_over_cap": over / len(powers) if powers else float("nan"),
        })  # fmt: skip
    return rows


def plot(result: DemoResult, plan: DemoPlan, path: Path) -> Path:
    import matplotlib  # noqa: PLC0415 -- plotting is optional at import time

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    times = [s.at_s for s in result.samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, dpi=100)
    top.plot(times, [s.power_watts for s in result.samples], label="GPU power (peak per sample)")
    top.step(times, [s.cap_watts for s in result.samples], where="post", color="red",
             label="cap")  # fmt: skip
    top.set_ylabel("watts")
    top.legend(loc="lower right")
    top.set_title("capinfer demo: virtual P40 running ResNet-50 through a real Triton")
    bottom.step(times, [s.batch_size for s in result.samples], where="post", label="max batch")
    bottom.set_ylabel("max batch size")
    bottom.set_yscale("log", base=2)
    clock_axis = bottom.twinx()
    clock_axis.plot(times, [s.sm_clock_mhz for s in result.samples], color="gray", alpha=0.6,
                    label="SM clock")  # fmt: skip
    clock_axis.set_ylabel("SM clock (MHz)")
    bottom.set_xlabel("seconds")
    for step in plan.steps[1:]:
        for axis in (top, bottom):
            axis.axvline(step.at_s, color="black", linestyle=":", linewidth=0.8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def print_summary(result: DemoResult, plan: DemoPlan, say: Callable[[str], None]) -> None:
    say("")
    say(f"{'cap W':>6} {'median power W':>15} {'over cap':>9} {'median inf/s':>13}")
    for row in phase_summary(result, plan):
        power, rate = row["median_power_watts"], row["median_inferences_per_second"]
        say(f"{row['cap_watts']:>6.0f} {power:>15.1f} {row['share_over_cap']:>8.0%} {rate:>13.0f}")
    if result.load is not None:
        say(f"requests: {result.load.succeeded} succeeded, {result.load.failed} failed,"
            f" {result.load.wrong} wrong answers")  # fmt: skip
    say(f"the object's status followed the caps: {result.status_caps}")
    limits = ", ".join("-" if w is None else f"{w:g} W" for w in result.power_limits)
    say(f"board power limit set by the node agent, read back: {limits}")
    for note in filter(None, result.backstop_notes):
        say(f"  status: {note}")
    reset = "never" if result.gpu_reset_s is None else f"{result.gpu_reset_s:.1f} s after"
    say(f"GPU clocks and limit back to defaults: {reset} the object was deleted")
    say(f"deleting the object removed every child: {'yes' if result.cleaned_up else 'NO'}")


def write_samples(result: DemoResult, path: Path) -> Path:
    path.write_text(json.dumps([s.__dict__ for s in result.samples], indent=1))
    return path


def default_plan(args_duration_s: float | None, steps: Sequence[CapStep] | None) -> DemoPlan:
    if args_duration_s is None and steps is None:
        return DemoPlan()
    duration = args_duration_s or DemoPlan.duration_s
    chosen = tuple(steps) if steps else tuple(
        CapStep(duration * s.at_s / DemoPlan.duration_s, s.cap_watts) for s in DemoPlan.steps
    )  # fmt: skip
    return DemoPlan(steps=chosen, duration_s=duration)
