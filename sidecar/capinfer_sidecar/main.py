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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from prometheus_client import CollectorRegistry

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
from capinfer_sidecar.metrics import SnapshotCollector
from capinfer_sidecar.policies import make_policy
from capinfer_sidecar.settings import (
    InvalidPowerSpecError,
    PowerSpec,
    parse_power_spec,
    to_power_settings,
)
from capinfer_sidecar.sim.profiles import load_profile_set
from capinfer_sidecar.status import pod_status_entry
from capinfer_sidecar.triton import TritonModel, gpu_uuids_in_metrics, open_client, read_metrics

log = logging.getLogger("capinfer_sidecar")

FILE_POLL_S = 0.2
TRITON_WAIT_S = 600.0


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
        help="standalone: YAML with spec.power's fields (capWatts, policy, ...), re-read on change",
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
        "--status-interval",
        type=float,
        default=3.0,
        help="seconds between status updates on the object (default 3)",
    )
    ops.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("CAPINFER_STATE_DIR", "/tmp/capinfer")),
        help="where the sidecar notes locked clocks, to reset them after a crash",
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
    return power


async def power_file_changes(
    args: argparse.Namespace, sleep: Callable[[float], Any] = asyncio.sleep
) -> AsyncIterator[dict[str, Any]]:
    """Standalone mode: the spec once, then again whenever the file changes."""
    yield standalone_spec(args)
    if args.power_file is None:
        return
    last_mtime = args.power_file.stat().st_mtime_ns
    while True:
        await sleep(FILE_POLL_S)
        try:
            mtime = args.power_file.stat().st_mtime_ns
        except OSError:
            continue
        if mtime != last_mtime:
            last_mtime = mtime
            try:
                yield standalone_spec(args)
            except InvalidPowerSpecError as error:
                log.error("ignoring the new power file: %s", error)


@dataclass
class Runtime:
    """Everything a running sidecar holds, so shutdown can release it in order."""

    loop: ControlLoop
    group: GpuGroup
    spec: PowerSpec
    clock_control_available: bool


def settings_for(spec: PowerSpec, group: GpuGroup, args: argparse.Namespace) -> Any:
    clocks_ok = spec.clock_control and not args.no_clock_control
    return to_power_settings(spec, group.supported_sm_clocks_mhz(), clocks_ok)


def policy_for(spec: PowerSpec, group: GpuGroup) -> Any:
    # BatchSizer's offline-profiling cutoff, and other per-policy options, come with
    # measured profiles; the defaults serve every GPU.
    del group
    try:
        return make_policy(spec.policy)
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
            raise StartupError(f"Triton never served model {name!r}")
        await asyncio.sleep(0.5)


async def open_gpus(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack, model_ready: bool
) -> GpuGroup:
    marker = args.state_dir / "clocks-locked"
    args.state_dir.mkdir(parents=True, exist_ok=True)
    if args.gpu == "virtual":
        return GpuGroup([await open_virtual_gpu(args, stack)], clock_marker=marker)
    if not nvml_is_available():
        raise StartupError("NVML is not available: no NVIDIA driver visible to this container")
    session = stack.enter_context(NvmlSession())
    uuids = list(args.gpu_uuid)
    if not uuids and model_ready:
        uuids = gpu_uuids_in_metrics(await read_metrics(args.triton_metrics))
    if not uuids:
        raise StartupError("no GPU to control: give --gpu-uuid, or let Triton's metrics name them")
    return GpuGroup(session.gpus(uuids), clock_marker=marker)


async def open_virtual_gpu(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> Any:
    dnn, _, dataset = args.virtual_workload.partition("/")
    try:
        profile = load_profile_set(args.virtual_profile).workload(dnn, dataset or "imagenet")
    except Exception as error:
        raise StartupError(f"virtual GPU: {error}") from error
    device = VirtualGpuDevice(profile, time.monotonic, latency_table_path=args.latency_table)
    if args.batch_report_socket is None:
        raise StartupError("the virtual GPU needs --batch-report-socket (the model reports there)")
    transport = await receive_batch_reports(device, bind_report_socket(args.batch_report_socket))
    stack.callback(transport.close)
    log.info("virtual GPU: %s; batch reports on %s", device.name, args.batch_report_socket)
    return device


# -- the daemon ---------------------------------------------------------------------------------
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

    async with contextlib.AsyncExitStack() as stack:
        client = open_client(args.triton_grpc)
        stack.push_async_callback(client.close)
        model = TritonModel(client, args.model, metrics_url=args.triton_metrics)

        changes: AsyncIterator[dict[str, Any]]
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
            changes = watcher.changes()
            status_writer = StatusWriter(api, ref, args.pod_name)
        else:
            changes = power_file_changes(args)

        spec = parse_power_spec(await anext(changes))
        log.info("cap %.0f W per GPU, policy %s", spec.cap_watts, spec.policy)
        initial_batch = await wait_for_model(model, args.model, time.monotonic() + TRITON_WAIT_S)
        group = await open_gpus(args, stack, model_ready=True)
        if group.recover_after_crash():
            log.warning("reset SM clocks a previous run had locked (it did not exit cleanly)")
        log.info("controlling GPUs %s, model %s (max batch %d)", group.uuids, args.model,
                 initial_batch)  # fmt: skip

        registry = CollectorRegistry()
        collector = SnapshotCollector({"model": args.model, "pod": args.pod_name})
        collector.register(registry)
        health = Health(monotonic=time.monotonic)
        host, _, port = args.metrics_address.rpartition(":")
        runner = await serve(build_app(registry, health), host or "0.0.0.0", int(port))
        stack.push_async_callback(runner.cleanup)

        latest: list[LoopSnapshot] = []

        def on_snapshot(snapshot: LoopSnapshot) -> None:
            collector.update(snapshot)
            health.sampled(snapshot.degraded)
            latest[:] = [snapshot]

        control = ControlLoop(
            policy=policy_for(spec, group),
            settings=settings_for(spec, group, args),
            gpu=group,
            server=model,
            initial_batch_size=initial_batch,
            monotonic=time.monotonic,
            sample_interval_s=spec.sample_interval_s,
            on_snapshot=on_snapshot,
        )
        publish_now = asyncio.Event()

        async def follow_changes() -> None:
            nonlocal spec
            async for power in changes:
                try:
                    new = parse_power_spec(power)
                except InvalidPowerSpecError as error:
                    log.error("keeping the current settings: %s", error)
                    continue
                if new.policy != spec.policy:
                    control.switch_policy(policy_for(new, group))
                control.sample_interval_s = new.sample_interval_s
                control.update_settings(settings_for(new, group, args))
                spec = new
                publish_now.set()

        async def publish_status() -> None:
            if status_writer is None:
                return
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(publish_now.wait(), args.status_interval)
                publish_now.clear()
                if latest:
                    await status_writer.write(pod_status_entry(args.pod_name, group.uuids,
                                                               latest[0]))  # fmt: skip

        control_task = asyncio.create_task(control.run(), name="control-loop")
        helpers = [asyncio.create_task(follow_changes(), name="power-spec")]
        if status_writer is not None:
            helpers.append(asyncio.create_task(publish_status(), name="status"))
        for helper in helpers:
            helper.add_done_callback(_log_failure)
        stopper = asyncio.create_task(_wait_for(stop), name="signals")
        await asyncio.wait([control_task, stopper], return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        control.stop()
        for task in (*helpers, stopper):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(control_task, timeout=5)
        if status_writer is not None:
            await status_writer.remove()
        if control_task.done() and not control_task.cancelled():
            error = control_task.exception()
            if error is not None:
                raise error
    return 0


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())


async def _wait_for(event: asyncio.Event) -> None:
    await event.wait()


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
