"""``capinfer-node-agent``: the privileged GPU knobs of one node, for its pods alone.

Runs as a DaemonSet on GPU nodes (the chart installs it), as root with ``CAP_SYS_ADMIN``:
the only capinfer process that may call NVML's ``Set*``. At start it waits for its view of
the node's pods, then resets every GPU its ledger says a gone pod had claimed; then it
serves requests and reconciles every second; on SIGTERM it resets what pods claimed
(``--no-reset-on-exit`` leaves them for the next agent to reconcile).

On a host without Kubernetes (``--auth local``) the agent serves a Unix socket only, takes
the caller's identity from the kernel (``SO_PEERCRED``) and resets a GPU once the process
that claimed it has exited; see :mod:`capinfer_node_agent.local`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from kubernetes import client as kube_client
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from capinfer_node_agent.agent import Agent, AgentMetrics
from capinfer_node_agent.kube import NodePods, TokenReviewer
from capinfer_node_agent.ledger import Ledger
from capinfer_node_agent.local import LocalProcesses, peer_of
from capinfer_node_agent.podresources import GPU_RESOURCE, KUBELET_SOCKET, PodResourcesClient
from capinfer_sidecar.gpu.agent import MAX_LINE_BYTES, parse_address
from capinfer_sidecar.gpu.base import GpuControls

log = logging.getLogger("capinfer_node_agent")

DEFAULT_AUDIENCE = "capinfer-node-agent"
SYNC_TIMEOUT_S = 60.0


class StartupError(Exception):
    """The agent cannot start; the message says what to fix."""


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="capinfer-node-agent",
        description="Set locked SM clocks and board power limits of this node's GPUs for the"
        " pods the kubelet gave them to; reset them when those pods are gone.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        default=[a for a in env("CAPINFER_AGENT_LISTEN", "").split(",") if a],
        help="unix:///path or tcp://host:port to serve sidecars on (repeatable)"
        " [env CAPINFER_AGENT_LISTEN, comma-separated]",
    )
    parser.add_argument(
        "--auth",
        choices=("kubernetes", "local"),
        default=env("CAPINFER_AGENT_AUTH", "kubernetes"),
        help="kubernetes: pod-bound tokens, TokenReview and the kubelet (default); local: a"
        " host without Kubernetes, callers known by their UID on a Unix socket",
    )
    parser.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        default=[],
        help="--auth local: a UID whose processes may steer GPUs (repeatable; default: the"
        " agent's own)",
    )
    parser.add_argument(
        "--node-name", default=env("NODE_NAME"), help="this node's name [env NODE_NAME]"
    )
    parser.add_argument(
        "--audience",
        default=env("CAPINFER_AGENT_AUDIENCE", DEFAULT_AUDIENCE),
        help=f"the token audience callers must present (default {DEFAULT_AUDIENCE})",
    )
    parser.add_argument(
        "--pod-resources-socket",
        default=env("CAPINFER_POD_RESOURCES_SOCKET", KUBELET_SOCKET),
        help=f"the kubelet's pod-resources socket (default {KUBELET_SOCKET})",
    )
    parser.add_argument(
        "--resource-name", default=GPU_RESOURCE, help=f"GPU resource (default {GPU_RESOURCE})"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("CAPINFER_AGENT_STATE_DIR", "/var/lib/capinfer-node-agent")),
        help="where the ledger of claimed GPUs is kept across restarts",
    )
    parser.add_argument(
        "--reset-on-exit",
        action=argparse.BooleanOptionalAction,
        default=env("CAPINFER_AGENT_RESET_ON_EXIT", "true").lower() == "true",
        help="reset claimed GPUs when stopped (default on) [env CAPINFER_AGENT_RESET_ON_EXIT]",
    )
    parser.add_argument(
        "--reconcile-interval", type=float, default=1.0, help="seconds between reconciles"
    )
    parser.add_argument(
        "--metrics-address",
        default=env("CAPINFER_AGENT_METRICS_ADDRESS", "0.0.0.0:9405"),
        help="host:port of /metrics (default 0.0.0.0:9405; empty: none)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig (default: in-cluster)")
    gpu = parser.add_argument_group("GPU")
    gpu.add_argument("--gpu", choices=("nvml", "virtual"), default=env("CAPINFER_GPU", "nvml"))
    gpu.add_argument(
        "--virtual-gpu",
        action="append",
        default=[],
        metavar="UUID=CONTROLS_FILE",
        help="virtual GPU: a GPU and the controls file its device follows (repeatable)",
    )
    gpu.add_argument("--virtual-profile", default="p40", help="virtual GPU: profile set")
    gpu.add_argument(
        "--virtual-workload", default="Res50/imagenet", help="virtual GPU: DNN/dataset"
    )
    parser.add_argument("--log-level", default=env("CAPINFER_LOG_LEVEL", "INFO"))
    return parser


def open_devices(args: argparse.Namespace, stack: ExitStack) -> dict[str, GpuControls]:
    if args.gpu == "virtual":
        from capinfer_sidecar.gpu.virtual import VirtualGpuControls  # noqa: PLC0415
        from capinfer_sidecar.sim.profiles import load_profile_set  # noqa: PLC0415

        dnn, _, dataset = args.virtual_workload.partition("/")
        profile = load_profile_set(args.virtual_profile).workload(dnn, dataset or "imagenet")
        devices: dict[str, GpuControls] = {}
        for item in args.virtual_gpu:
            uuid, _, path = item.partition("=")
            if not uuid or not path:
                raise StartupError(f"--virtual-gpu {item!r}: expected UUID=CONTROLS_FILE")
            devices[uuid] = VirtualGpuControls(profile, Path(path), uuid)
        if not devices:
            raise StartupError("--gpu virtual needs at least one --virtual-gpu")
        return devices
    from capinfer_node_agent.nvml import NvmlControls  # noqa: PLC0415
    from capinfer_sidecar.gpu.nvml import NvmlSession  # noqa: PLC0415

    session = stack.enter_context(NvmlSession())
    return {gpu.uuid: NvmlControls(gpu) for gpu in session.gpus(session.uuids())}


async def serve_connection(
    agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = peer_of(writer.get_extra_info("socket"))
    try:
        while line := await reader.readline():
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not a JSON object")
            except ValueError as error:
                answer = {"ok": False, "kind": "invalid", "error": f"unreadable request: {error}"}
            else:
                answer = await agent.handle(request, peer)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, ValueError) as error:  # ValueError: a line over the limit
        log.debug("connection ended: %s", error)
    finally:
        writer.close()


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a socket left by a previous run


async def start_servers(agent: Agent, addresses: Sequence[str]) -> list[asyncio.Server]:
    servers = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(agent, reader, writer)

    for address in addresses:
        family, where = parse_address(address)
        if family == "unix":
            assert isinstance(where, str)
            _prepare_socket_path(Path(where))
            server = await asyncio.start_unix_server(on_connection, where, limit=MAX_LINE_BYTES)
            # Anyone on the node may connect: each request is authenticated by its token.
            os.chmod(where, 0o666)
        else:
            assert isinstance(where, tuple)
            server = await asyncio.start_server(
                on_connection, where[0], where[1], limit=MAX_LINE_BYTES
            )
        log.info("serving sidecars on %s", address)
        servers.append(server)
    return servers


class _NoReviewer:
    def review(self, token: str) -> dict[str, object]:
        raise RuntimeError("no API server on a host without Kubernetes")


async def run(args: argparse.Namespace) -> int:
    if not args.listen:
        raise StartupError("give --listen unix:///path or tcp://host:port")
    if args.auth == "local":
        return await run_local(args)
    if not args.node_name:
        raise StartupError("--node-name (or NODE_NAME) is required")
    if args.kubeconfig:
        kube_config.load_kube_config(args.kubeconfig)  # type: ignore[no-untyped-call]
    else:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    api = kube_client.ApiClient()
    with ExitStack() as stack:
        devices = open_devices(args, stack)
        pods = NodePods(api, args.node_name)
        pods.start()
        stack.callback(pods.stop)
        pod_resources = PodResourcesClient(args.pod_resources_socket, args.resource_name)
        stack.callback(pod_resources.close)
        metrics = AgentMetrics()
        if args.metrics_address:
            host, _, port = args.metrics_address.rpartition(":")
            start_http_server(int(port), host or "0.0.0.0", registry=metrics.registry)
        agent = Agent(
            node=args.node_name,
            audience=args.audience,
            devices=devices,
            reviewer=TokenReviewer(api, args.audience, time.monotonic),
            pods=pods,
            allocations=pod_resources.allocations,
            ledger=Ledger.load(args.state_dir / "ledger.json"),
            metrics=metrics,
        )
        if not await asyncio.to_thread(pods.synced.wait, SYNC_TIMEOUT_S):
            raise StartupError(f"could not list the pods of node {args.node_name}")
        await serve(agent, args, f"node {args.node_name}")
    return 0


async def run_local(args: argparse.Namespace) -> int:
    if any(parse_address(address)[0] != "unix" for address in args.listen):
        raise StartupError("--auth local serves Unix sockets only (the kernel names the caller)")
    processes = LocalProcesses(args.allow_uid or [os.getuid()])
    with ExitStack() as stack:
        metrics = AgentMetrics()
        if args.metrics_address:
            host, _, port = args.metrics_address.rpartition(":")
            start_http_server(int(port), host or "0.0.0.0", registry=metrics.registry)
        agent = Agent(
            node=args.node_name or "localhost",
            audience=args.audience,
            devices=open_devices(args, stack),
            reviewer=_NoReviewer(),
            pods=processes,
            allocations=None,
            ledger=Ledger.load(args.state_dir / "ledger.json"),
            metrics=metrics,
            local=processes,
        )
        await serve(agent, args, "this host")
    return 0


async def serve(agent: Agent, args: argparse.Namespace, where: str) -> None:
    """Reconcile, serve until SIGTERM, reconciling every interval; then reset if asked."""
    reset = await agent.reconcile()
    log.info("%s: GPUs %s; reset at start: %s", where, sorted(agent.devices),
             ", ".join(reset) or "none")  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    servers = await start_servers(agent, args.listen)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), args.reconcile_interval)
        except TimeoutError:
            await agent.reconcile()
    for server in servers:
        server.close()
    if args.reset_on_exit:
        await agent.reset_all("the agent stopped")
    log.info("stopped")


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
    except (StartupError, ValueError) as error:
        log.error("%s", error)
        print(f"capinfer-node-agent: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
