"""``capinfer-sidecar``: keep one Triton pod's GPUs under their power cap.

Two ways to get the cap:

* in Kubernetes (``--object``/``CAPINFER_OBJECT_NAME``): watch the pod's own
  PowerCappedInference; a patched ``spec.power`` reaches the policy within one watch
  event, and the pod's entry in ``status.pods`` is kept up to date;
* standalone (``--power-file`` or ``--cap-watts``): no Kubernetes at all; the file holds
  ``spec.power``'s fields and is re-read when it changes.

Two kinds of GPU: ``nvml`` (real GPUs, found by UUID: given, or read from Triton's
metrics labels) and ``virtual`` (the power model of ``capinfer_sidecar.sim``, driven by the
batches a ``simbatch`` model really executes in Triton).

The sidecar is unprivileged: it reads its GPUs itself and asks the node agent
(``--node-agent``) to lock their SM clock and to set their board power limit to the cap.
Without an agent, or refused by it, it says so and controls the batch size alone
(``ClockControl`` False with the reason); it never stops for that.

Start-up: the HTTP server (probes, metrics) comes up first, so ``/healthz`` answers while
the sidecar waits for the object and for Triton to serve the model (up to
``--startup-timeout``). Then four long-lived tasks run under one
:class:`~capinfer_sidecar.supervisor.Supervisor`: the source of ``spec.power`` (the watch
of the object, or the power file), the cap follower that applies it, the control loop,
and the status publisher. None of them can die quietly: an error restarts it, and one that
keeps failing turns ``/readyz`` red and is named in the pod's status entry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from prometheus_client import CollectorRegistry

from capinfer_sidecar.follower import PowerVersion, SpecFollower, SpecStatus
from capinfer_sidecar.gpu.agent import NodeAgentClient, PowerLimitResult
from capinfer_sidecar.gpu.errors import GpuError
from capinfer_sidecar.gpu.group import GpuGroup
from capinfer_sidecar.gpu.nvml import NvmlSession, nvml_is_available
from capinfer_sidecar.gpu.virtual import (
    VirtualGpuDevice,
    bind_report_socket,
    receive_batch_reports,
)
from capinfer_sidecar.httpserver import Health, build_app, serve
from capinfer_sidecar.kube import ObjectRef, PowerSpecWatch, StatusWriter
from capinfer_sidecar.loop import ControlLoop, LoopSnapshot
from capinfer_sidecar.metrics import SnapshotCollector, SupervisionCollector
from capinfer_sidecar.policies import make_policy
from capinfer_sidecar.policies.base import Policy, PowerSettings
from capinfer_sidecar.settings import (
    LATENCY_SLO_KEY,
    InvalidPowerSpecError,
    PowerSpec,
    parse_power_spec,
    policy_options,
    to_power_settings,
)
from capinfer_sidecar.sim.profiles import load_profile_set
from capinfer_sidecar.status import pod_status_entry
from capinfer_sidecar.supervisor import Supervisor
from capinfer_sidecar.triton import TritonModel, gpu_uuids_in_metrics, open_client, read_metrics

log = logging.getLogger("capinfer_sidecar")

FILE_POLL_S = 0.2
STARTUP_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 5.0


class StartupError(Exception):
    """The sidecar cannot start; the message says what to fix."""


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="capinfer-sidecar",
        description=(
            "Keep a Triton pod's GPUs under a power cap with the most throughput it allows:"
            " reads GPU power (NVML), moves the SM clock and Triton's max batch size."
        ),
    )
    source = parser.add_argument_group("where the cap comes from (one of)")
    source.add_argument(
        "--object",
        default=env("CAPINFER_OBJECT_NAME"),
        help="PowerCappedInference to watch [env CAPINFER_OBJECT_NAME]",
    )
    source.add_argument(
        "--namespace",
        default=env("POD_NAMESPACE", "default"),
        help="its namespace [env POD_NAMESPACE, default 'default']",
    )
    source.add_argument(
        "--power-file",
        type=Path,
        help="standalone: YAML with spec.power's fields (capWatts, policy, ..., and latencySLO),"
        " re-read on change",
    )
    source.add_argument("--cap-watts", type=float, help="standalone: the cap per GPU, in watts")
    source.add_argument("--policy", help="standalone: policy name (default Adaptive)")
    parser.add_argument(
        "--pod-name",
        default=env("POD_NAME", os.uname().nodename),
        help="this pod's name, the key of its status entry [env POD_NAME]",
    )

    triton = parser.add_argument_group("Triton")
    triton.add_argument(
        "--triton-grpc",
        default=env("CAPINFER_TRITON_GRPC", "127.0.0.1:8001"),
        help="Triton's gRPC address [env CAPINFER_TRITON_GRPC, default 127.0.0.1:8001]",
    )
    triton.add_argument(
        "--triton-metrics",
        default=env("CAPINFER_TRITON_METRICS", "http://127.0.0.1:8002/metrics"),
        help="Triton's metrics URL (queue depth, GPU UUIDs) [env CAPINFER_TRITON_METRICS]",
    )
    triton.add_argument(
        "--model",
        default=env("CAPINFER_MODEL"),
        help="the model whose batching is controlled [env CAPINFER_MODEL]",
    )

    gpu = parser.add_argument_group("GPU")
    gpu.add_argument(
        "--gpu",
        choices=("nvml", "virtual"),
        default=env("CAPINFER_GPU", "nvml"),
        help="real GPUs through NVML, or the virtual GPU model [env CAPINFER_GPU]",
    )
    gpu.add_argument(
        "--gpu-uuid",
        action="append",
        default=[u for u in env("CAPINFER_GPU_UUIDS", "").split(",") if u],
        help="a GPU to control (repeatable); default: the UUIDs in Triton's metrics",
    )
    gpu.add_argument(
        "--no-clock-control",
        action="store_true",
        help="never lock SM clocks (batch size only), whatever spec.power says",
    )
    gpu.add_argument(
        "--virtual-profile",
        default=env("CAPINFER_VIRTUAL_PROFILE", "p40"),
        help="virtual GPU: profile set, built-in name or YAML path (default p40)",
    )
    gpu.add_argument(
        "--virtual-workload",
        default=env("CAPINFER_VIRTUAL_WORKLOAD", "Res50/imagenet"),
        help="virtual GPU: DNN/dataset in the profile set (default Res50/imagenet)",
    )
    gpu.add_argument(
        "--batch-report-socket",
        type=Path,
        default=env("CAPINFER_BATCH_REPORT"),
        help="virtual GPU: datagram socket the simbatch model reports batches to",
    )
    gpu.add_argument(
        "--latency-table",
        type=Path,
        default=env("CAPINFER_LATENCY_TABLE"),
        help="virtual GPU: JSON file the simbatch model reads its latency from",
    )

    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--metrics-address",
        default=env("CAPINFER_METRICS_ADDRESS", "0.0.0.0:9400"),
        help="host:port for /metrics, /healthz, /readyz (default 0.0.0.0:9400)",
    )
    ops.add_argument(
        "--startup-timeout",
        type=float,
        default=float(env("CAPINFER_STARTUP_TIMEOUT_S", str(STARTUP_TIMEOUT_S))),
        help="seconds to wait for Triton to serve the model before giving up"
        " [env CAPINFER_STARTUP_TIMEOUT_S, default 600]",
    )
    ops.add_argument(
        "--status-interval",
        type=float,
        default=3.0,
        help="seconds between status updates on the object (default 3)",
    )
    gpu.add_argument(
        "--virtual-controls",
        type=Path,
        default=env("CAPINFER_VIRTUAL_CONTROLS"),
        help="virtual GPU: the controls file its knobs live in (the node agent writes it)",
    )
    agent = parser.add_argument_group("node agent (sets clocks and the board power limit)")
    agent.add_argument(
        "--node-agent",
        default=env("CAPINFER_NODE_AGENT", ""),
        help="unix:///path or tcp://host:port of capinfer-node-agent; empty: none, batch"
        " size alone [env CAPINFER_NODE_AGENT]",
    )
    agent.add_argument(
        "--node-agent-token",
        type=Path,
        default=env("CAPINFER_NODE_AGENT_TOKEN"),
        help="file holding this pod's ServiceAccount token for the agent's audience"
        " [env CAPINFER_NODE_AGENT_TOKEN]",
    )
    agent.add_argument(
        "--backstop-interval",
        type=float,
        default=10.0,
        help="seconds between re-assertions of the board power limit (default 10)",
    )
    ops.add_argument("--log-level", default=env("CAPINFER_LOG_LEVEL", "INFO"))
    return parser


# -- the power settings' sources ------------------------------------------------------------
def standalone_spec(args: argparse.Namespace) -> dict[str, Any]:
    power: dict[str, Any] = {}
    if args.power_file is not None:
        power.update(read_power_file(args.power_file))
    if args.cap_watts is not None:
        power["capWatts"] = args.cap_watts
    if args.policy is not None:
        power["policy"] = args.policy
    return power


def read_power_file(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidPowerSpecError(f"{path}: {error}") from error
    if not isinstance(document, dict):
        raise InvalidPowerSpecError(f"{path}: expected a mapping of spec.power fields")
    power = document.get("power", document)
    if not isinstance(power, dict):
        raise InvalidPowerSpecError(f"{path}: 'power' must be a mapping")
    if power is not document and LATENCY_SLO_KEY in document:
        power = {**power, LATENCY_SLO_KEY: document[LATENCY_SLO_KEY]}  # a spec's two parts
    return power


def standalone_version(args: argparse.Namespace) -> PowerVersion:
    """The flags and the file's fields, or why the file cannot be read."""
    try:
        return standalone_spec(args)
    except InvalidPowerSpecError as error:
        return error


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


async def power_file_changes(
    args: argparse.Namespace, sleep: Callable[[float], Any] = asyncio.sleep
) -> AsyncIterator[PowerVersion]:
    """Standalone mode: the spec once, then again whenever the file changes.

    A file that cannot be read or parsed is yielded as its error: the follower rejects it
    and keeps the last good settings.
    """
    last_mtime = _mtime_ns(args.power_file) if args.power_file is not None else None
    yield standalone_version(args)
    if args.power_file is None:
        return
    while True:
        await sleep(FILE_POLL_S)
        mtime = _mtime_ns(args.power_file)
        if mtime is not None and mtime != last_mtime:
            last_mtime = mtime
            yield standalone_version(args)


@dataclass
class Runtime:
    """Everything a running sidecar holds, so shutdown can release it in order."""

    loop: ControlLoop
    group: GpuGroup
    spec: PowerSpec
    clock_control_available: bool


def settings_for(
    spec: PowerSpec, supported_mhz: Sequence[int], args: argparse.Namespace
) -> PowerSettings:
    clocks_ok = spec.clock_control and not args.no_clock_control
    return to_power_settings(spec, supported_mhz, clocks_ok)


def policy_for(spec: PowerSpec) -> Policy:
    # BatchSizer's offline-profiling cutoff comes with measured profiles; the defaults
    # serve every GPU. Static takes its fixed pair from the spec.
    try:
        return make_policy(spec.policy, **policy_options(spec))
    except ValueError as error:
        raise InvalidPowerSpecError(f"spec.power.policy: {error}") from error


# -- start-up ---------------------------------------------------------------------------------
async def wait_for_model(model: Any, name: str, deadline_s: float) -> int:
    """Wait until Triton serves the model; returns its max batch size."""
    while True:
        try:
            if await model.is_ready():
                batching = await model.batching()
                return int(batching.max_batch_size)
        except Exception as error:
            log.debug("Triton not ready yet: %s", error)
        if time.monotonic() > deadline_s:
            raise StartupError(
                f"Triton did not serve model {name!r} within --startup-timeout"
                " (CAPINFER_STARTUP_TIMEOUT_S)"
            )
        await asyncio.sleep(0.5)


async def open_gpus(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack, model_ready: bool
) -> GpuGroup:
    devices = await _open_devices(args, stack, model_ready)
    if args.no_clock_control:
        return GpuGroup(devices, None, "clock control off (--no-clock-control)")
    if not args.node_agent:
        log.warning("no node agent configured: batch size alone, no board power limit")
        return GpuGroup(devices, None, "no node agent on this node: batch size alone")
    client = NodeAgentClient(args.node_agent, args.node_agent_token)
    try:
        allowed = await asyncio.to_thread(client.hello)
    except GpuError as error:
        log.warning("the node agent cannot steer this pod's GPUs (%s): batch size alone", error)
        return GpuGroup(devices, None, str(error))
    group = GpuGroup(devices, client)
    missing = [uuid for uuid in group.uuids if uuid not in allowed]
    if missing:
        reason = f"the node agent does not give this pod {', '.join(missing)}"
        log.warning("%s: batch size alone", reason)
        return GpuGroup(devices, None, reason)
    log.info("node agent at %s steers GPUs %s for this pod", args.node_agent, allowed)
    return group


async def _open_devices(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack, model_ready: bool
) -> list[Any]:
    if args.gpu == "virtual":
        return [await open_virtual_gpu(args, stack)]
    if not nvml_is_available():
        raise StartupError("NVML is not available: no NVIDIA driver visible to this container")
    session = stack.enter_context(NvmlSession())
    uuids = list(args.gpu_uuid)
    if not uuids and model_ready:
        uuids = gpu_uuids_in_metrics(await read_metrics(args.triton_metrics))
    if not uuids:
        raise StartupError("no GPU to control: give --gpu-uuid, or let Triton's metrics name them")
    return list(session.gpus(uuids))


async def open_virtual_gpu(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> Any:
    dnn, _, dataset = args.virtual_workload.partition("/")
    try:
        profile = load_profile_set(args.virtual_profile).workload(dnn, dataset or "imagenet")
    except Exception as error:
        raise StartupError(f"virtual GPU: {error}") from error
    device = VirtualGpuDevice(
        profile,
        time.monotonic,
        latency_table_path=args.latency_table,
        controls_path=args.virtual_controls,
    )
    if args.batch_report_socket is None:
        raise StartupError("the virtual GPU needs --batch-report-socket (the model reports there)")
    transport = await receive_batch_reports(device, bind_report_socket(args.batch_report_socket))
    stack.callback(transport.close)
    log.info("virtual GPU: %s; batch reports on %s", device.name, args.batch_report_socket)
    return device


# -- the board power limit ----------------------------------------------------------------------
@dataclass
class Backstop:
    """The board power limit at the cap, set through the node agent and re-asserted.

    The GPU's own controller holds average power under that limit even when this sidecar is
    gone; the loop still shapes the spikes. The limit is set again every interval (an agent
    that restarted, a cap that changed) and whenever the cap changes.
    """

    client: NodeAgentClient | None
    cap_watts: Callable[[], float]
    gpus: Sequence[str] = ()
    enforced_watts: float | None = None
    message: str | None = "no node agent: no board power limit backs the cap up"

    def assert_once(self) -> None:
        if self.client is None:
            return
        cap = self.cap_watts()
        try:
            results = self.client.set_power_limit(self.gpus, cap)
        except GpuError as error:
            message = f"the board power limit could not be set: {error}"
            if message != self.message:
                log.warning("%s", message)
            self.message = message
            self.enforced_watts = None
            return
        self.enforced_watts = max((r.enforced_watts for r in results), default=None)
        self.message = _backstop_message(cap, results)

    async def run(self, interval_s: float, changed: asyncio.Event) -> None:
        while True:
            await asyncio.to_thread(self.assert_once)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), interval_s)
            changed.clear()


def _backstop_message(cap_watts: float, results: Sequence[PowerLimitResult]) -> str | None:
    low = [r for r in results if r.below_minimum]
    if not low:
        return None
    minimum = max(r.min_watts for r in low)
    return (
        f"the cap {cap_watts:g} W is below the card's minimum power limit {minimum:g} W:"
        f" the board limit holds {minimum:g} W, only the control loop holds the cap"
    )


# -- the daemon ---------------------------------------------------------------------------------
@dataclass
class Sidecar:
    """What the sidecar's tasks share: the probes, the metrics, the supervisor."""

    args: argparse.Namespace
    health: Health
    supervisor: Supervisor
    spec_status: SpecStatus
    registry: CollectorRegistry
    collector: SnapshotCollector
    publish_now: asyncio.Event
    spec_changed: asyncio.Event = field(default_factory=asyncio.Event)
    clock_message: Callable[[], str | None] = lambda: None
    backstop: Backstop | None = None

    def on_spec_change(self) -> None:
        self.publish_now.set()
        self.spec_changed.set()

    @classmethod
    def create(cls, args: argparse.Namespace) -> Sidecar:
        publish_now = asyncio.Event()
        supervisor = Supervisor(monotonic=time.monotonic, on_failure=lambda _: publish_now.set())
        spec_status = SpecStatus()
        labels = {"model": args.model, "pod": args.pod_name}
        registry = CollectorRegistry()
        collector = SnapshotCollector(labels).register(registry)
        SupervisionCollector(supervisor, spec_status, labels).register(registry)

        def problem() -> str | None:
            failing = supervisor.problem()
            return failing.message if failing is not None else None

        health = Health(monotonic=time.monotonic, problem=problem)
        return cls(args, health, supervisor, spec_status, registry, collector, publish_now)

    def status_entry(self, gpu_uuids: Sequence[str], latest: LoopSnapshot | None) -> Any:
        """This pod's status entry; None while there is nothing true to say yet."""
        failing = self.supervisor.problem()
        problems = [p for p in (failing and failing.message, self.spec_status.problem) if p]
        if latest is None and not problems:
            return None
        backstop = self.backstop or Backstop(None, lambda: 0.0)
        return pod_status_entry(
            self.args.pod_name, gpu_uuids, latest,
            failed_task=failing.task if failing is not None else None,
            problem="; ".join(problems) or None,
            clock_message=self.clock_message(),
            power_limit_watts=backstop.enforced_watts,
            backstop_message=backstop.message,
        )  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    if not args.model:
        raise StartupError("--model (or CAPINFER_MODEL) is required")
    kube_mode = bool(args.object)
    if not kube_mode and args.power_file is None and args.cap_watts is None:
        raise StartupError("give --object (Kubernetes) or --power-file / --cap-watts (standalone)")

    stop = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(signum, stop.set)

    sidecar = Sidecar.create(args)
    async with contextlib.AsyncExitStack() as stack:
        # The probes first: they must answer however long Triton takes to load the model.
        host, _, port = args.metrics_address.rpartition(":")
        runner = await serve(
            build_app(sidecar.registry, sidecar.health), host or "0.0.0.0", int(port)
        )
        stack.push_async_callback(runner.cleanup)
        tasks: list[asyncio.Task[None]] = []
        stack.push_async_callback(_cancel_all, tasks)

        client = open_client(args.triton_grpc)
        stack.push_async_callback(client.close)
        model = TritonModel(client, args.model, metrics_url=args.triton_metrics)

        open_source: Callable[[], AsyncIterator[PowerVersion]]
        status_writer = None
        if kube_mode:
            try:
                kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
            except kube_config.ConfigException:
                kube_config.load_kube_config()  # type: ignore[no-untyped-call]
            api = kube_client.ApiClient()
            ref = ObjectRef(args.namespace, args.object)
            watcher = PowerSpecWatch(api, ref)
            stack.callback(watcher.stop)
            open_source, source_name = watcher.changes, "kube-watch"
            status_writer = StatusWriter(api, ref, args.pod_name)
        else:
            open_source, source_name = (lambda: power_file_changes(args)), "power-file"

        versions: asyncio.Queue[PowerVersion] = asyncio.Queue()

        async def pump_versions() -> None:
            async for version in open_source():
                versions.put_nowait(version)

        tasks.append(sidecar.supervisor.start(source_name, pump_versions))
        start = asyncio.create_task(_start_control(sidecar, model, versions, stack))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([start, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            log.info("stopped while starting")
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return 0
        stopper.cancel()
        control, follower, group = start.result()

        latest: list[LoopSnapshot] = []

        def on_snapshot(snapshot: LoopSnapshot) -> None:
            sidecar.collector.update(snapshot)
            sidecar.health.sampled(snapshot.degraded)
            latest[:] = [snapshot]

        control.on_snapshot = on_snapshot

        async def publish_status(writer: StatusWriter) -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sidecar.publish_now.wait(), args.status_interval)
                sidecar.publish_now.clear()
                entry = sidecar.status_entry(group.uuids, latest[0] if latest else None)
                if entry is not None:
                    await writer.write(entry)

        # The board limit is worth setting even without clock control, and an agent that was
        # not reachable at start is tried again at every interval.
        client = (
            NodeAgentClient(args.node_agent, args.node_agent_token) if args.node_agent else None
        )
        sidecar.clock_message = lambda: group.refusal
        backstop = Backstop(client, lambda: follower.spec.cap_watts, group.uuids)
        sidecar.backstop = backstop
        if client is not None:
            tasks.append(
                sidecar.supervisor.start(
                    "backstop", lambda: backstop.run(args.backstop_interval, sidecar.spec_changed)
                )
            )
        control_task = sidecar.supervisor.start("control-loop", control.run)
        tasks.append(control_task)
        tasks.append(sidecar.supervisor.start("cap-follower", lambda: follower.follow(versions)))
        if status_writer is not None:
            writer = status_writer
            tasks.append(sidecar.supervisor.start("status", lambda: publish_status(writer)))

        await stop.wait()
        log.info("shutting down")
        control.stop()
        await asyncio.wait([control_task], timeout=STOP_TIMEOUT_S)
        await _cancel_all(tasks)
        await control.shutdown()  # clocks back to the GPU even if the loop was failing
        if status_writer is not None:
            await status_writer.remove()
    return 0


async def _start_control(
    sidecar: Sidecar,
    model: TritonModel,
    versions: asyncio.Queue[PowerVersion],
    stack: contextlib.AsyncExitStack,
) -> tuple[ControlLoop, SpecFollower, GpuGroup]:
    """The first spec, Triton serving the model, the GPUs: then a loop ready to run."""
    args, health = sidecar.args, sidecar.health
    health.waiting("waiting for spec.power")
    first = await versions.get()
    if isinstance(first, InvalidPowerSpecError):
        raise first
    spec = parse_power_spec(first)
    policy = policy_for(spec)
    log.info("cap %.0f W per GPU, policy %s", spec.cap_watts, spec.policy)
    health.waiting(f"waiting for Triton to serve model {args.model!r}")
    initial_batch = await wait_for_model(model, args.model, time.monotonic() + args.startup_timeout)
    group = await open_gpus(args, stack, model_ready=True)
    if group.clocks is not None:
        # A previous run of this sidecar in the same pod may have died with clocks locked.
        with contextlib.suppress(GpuError):
            await asyncio.to_thread(group.reset_sm_clock)
    log.info("controlling GPUs %s, model %s (max batch %d)", group.uuids, args.model,
             initial_batch)  # fmt: skip
    supported_mhz = group.supported_sm_clocks_mhz() if group.clocks is not None else ()
    health.waiting("control loop starting")
    control = ControlLoop(
        policy=policy,
        settings=settings_for(spec, supported_mhz, args),
        gpu=group,
        server=model,
        initial_batch_size=initial_batch,
        monotonic=time.monotonic,
        sample_interval_s=spec.sample_interval_s,
        latency_slo_ms=spec.p99_slo_ms,
    )
    follower = SpecFollower(
        control,
        spec,
        policy_for,
        lambda new: settings_for(new, supported_mhz, args),
        status=sidecar.spec_status,
        on_change=sidecar.on_spec_change,
    )
    return control, follower, group


async def _cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return asyncio.run(run(args))
    except (StartupError, InvalidPowerSpecError, GpuError) as error:
        log.error("%s", error)
        print(f"capinfer-sidecar: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
