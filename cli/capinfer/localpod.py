"""A capinfer pod as local processes: a real tritonserver and a real ``capinfer-sidecar``.

The ``simbatch`` model runs in Triton's Python backend and reports every batch to the
sidecar's virtual GPU, which publishes the batch latency at its SM clock back to the model:
the control loop is closed through real inference, on a machine without a GPU. Tests and
the demo use it; the demo takes the sidecar's command line from the rendered pod spec.

By default the pod comes with a node agent of its own, as a host without Kubernetes runs
it (``--auth local``): the sidecar locks the virtual GPU's clocks through it, as it would
on a real node. ``local_agent=False`` leaves it out (batch size alone, or the caller's own
agent through ``--node-agent`` and ``virtual_controls``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from capinfer.localagent import LocalNodeAgent
from capinfer.localcluster.cluster import free_port
from capinfer.testmodels import SimBatchSpec, write_model_repository
from capinfer.tritonlocal import LocalTritonServer

SIDECAR_STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class SidecarSample:
    """One scrape of the sidecar's metrics."""

    at_s: float
    power_watts: float | None
    cap_watts: float | None
    batch_size: float | None
    sm_clock_mhz: float | None
    inferences_per_second: float | None
    over_cap_seconds: float | None
    reloads: float | None
    energy_joules: float | None = None
    reload_failures: float | None = None
    degraded: str | None = None
    """The ``reason`` of ``capinfer_degraded`` while it is 1; None while healthy."""
    quarantined: tuple[int, ...] = ()
    task_restarts: Mapping[str, float] = field(default_factory=dict)


def parse_sidecar_metrics(text: str, at_s: float) -> SidecarSample:
    values: dict[str, float] = {}
    degraded = None
    quarantined: list[int] = []
    restarts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "capinfer_reloads_total" and sample.labels.get("result") != "ok":
                values["reload_failures"] = sample.value
                continue
            if sample.name == "capinfer_degraded" and sample.value == 1:
                degraded = sample.labels.get("reason", "")
            elif sample.name == "capinfer_reload_quarantined" and sample.value == 1:
                quarantined.append(int(sample.labels["batch_size"]))
            elif sample.name == "capinfer_task_restarts_total":
                restarts[sample.labels["task"]] = sample.value
            values[sample.name] = sample.value
    return SidecarSample(
        at_s=at_s,
        power_watts=values.get("capinfer_gpu_power_watts"),
        cap_watts=values.get("capinfer_power_cap_watts"),
        batch_size=values.get("capinfer_batch_size"),
        sm_clock_mhz=values.get("capinfer_sm_clock_mhz"),
        inferences_per_second=values.get("capinfer_inferences_per_second"),
        over_cap_seconds=values.get("capinfer_over_cap_seconds_total"),
        reloads=values.get("capinfer_reloads_total"),
        energy_joules=values.get("capinfer_gpu_energy_joules_total"),
        reload_failures=values.get("reload_failures"),
        degraded=degraded,
        quarantined=tuple(sorted(quarantined)),
        task_restarts=restarts,
    )


@dataclass
class LocalPod:
    """Triton + sidecar for one ``simbatch`` model on a virtual GPU, in ``work_dir``."""

    work_dir: Path
    sidecar_args: Sequence[str]
    """Arguments for ``capinfer-sidecar`` besides the wiring this class adds."""
    model: SimBatchSpec = field(default_factory=SimBatchSpec)
    virtual_profile: str = "p40"
    virtual_workload: str = "Res50/imagenet"
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment of the sidecar on top of this process's (a pod spec's env, say)."""
    sidecar_command: Sequence[str] = (sys.executable, "-m", "capinfer_sidecar.main")
    """How the sidecar starts: the pod spec's command, or this Python's module."""
    virtual_controls: Path | None = None
    """The virtual GPU's controls file, when a node agent sets its knobs."""
    local_agent: bool = True
    """Run a node agent for this pod (``--auth local``) and point the sidecar at it."""
    agent: LocalNodeAgent | None = field(default=None, init=False)
    triton: LocalTritonServer | None = field(default=None, init=False)
    sidecar: subprocess.Popen[bytes] | None = field(default=None, init=False)
    metrics_port: int = field(default=0, init=False)

    @property
    def report_socket(self) -> Path:
        return self.work_dir / "batches.sock"

    @property
    def latency_table(self) -> Path:
        return self.work_dir / "latency.json"

    @property
    def sidecar_log(self) -> Path:
        return self.work_dir / "sidecar.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, ready_timeout_s: float = 120.0) -> None:
        try:
            self._start(ready_timeout_s)
        except BaseException:
            self.stop()  # never leave a half-started pod's processes behind
            raise

    def _start(self, ready_timeout_s: float) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        model = SimBatchSpec(
            **{
                **self.model.__dict__,
                "batch_report_path": str(self.report_socket),
                "latency_table_path": str(self.latency_table),
            }
        )
        repository = self.work_dir / "models"
        write_model_repository(repository, model)
        from capinfer_sidecar.triton import SUMMARY_LATENCIES_ARG  # noqa: PLC0415

        # As the operator runs it: with the latency summaries the sidecar reads p99 from.
        self.triton = LocalTritonServer(
            repository, self.work_dir / "triton", load_models=[model.name], stop_timeout_s=8.0,
            extra_args=[SUMMARY_LATENCIES_ARG],
        )  # fmt: skip
        self.triton.start()
        agent_args: list[str] = []
        if self.local_agent:
            from capinfer_sidecar.gpu.virtual import VIRTUAL_UUID  # noqa: PLC0415

            self.virtual_controls = self.work_dir / "gpu-controls.json"
            self.agent = LocalNodeAgent(
                self.work_dir / "node-agent", "localhost", None, None,
                {VIRTUAL_UUID: self.virtual_controls},
                virtual_profile=self.virtual_profile, virtual_workload=self.virtual_workload,
            ).start()  # fmt: skip
            agent_args = ["--node-agent", self.agent.address]
        self.metrics_port = free_port()
        # Flags that point the sidecar at the local processes; they win over the env.
        argv = [
            *self.sidecar_command,
            "--model", model.name,
            "--triton-grpc", self.triton.grpc_url.removeprefix("grpc://"),
            "--triton-metrics", f"{self.triton.metrics_url.rstrip('/')}",
            "--gpu", "virtual",
            "--virtual-profile", self.virtual_profile,
            "--virtual-workload", self.virtual_workload,
            "--batch-report-socket", str(self.report_socket),
            "--latency-table", str(self.latency_table),
            "--metrics-address", f"127.0.0.1:{self.metrics_port}",
            *(["--virtual-controls", str(self.virtual_controls)] if self.virtual_controls else []),
            *agent_args,
            *self.sidecar_args,
        ]  # fmt: skip
        with self.sidecar_log.open("ab") as log:
            self.sidecar = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while not self._sidecar_ready():
            if self.sidecar.poll() is not None:
                raise RuntimeError(f"capinfer-sidecar exited; see {self.sidecar_log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"capinfer-sidecar never became ready; see {self.sidecar_log}")
            time.sleep(0.2)

    def _sidecar_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1
            ) as response:
                return b"capinfer_gpu_power_watts" in response.read()
        except (urllib.error.URLError, OSError):
            return False

    def scrape(self) -> SidecarSample:
        with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
            return parse_sidecar_metrics(response.read().decode(), time.monotonic())

    def probe(self, path: str) -> tuple[int, str]:
        """A probe of the sidecar (``/readyz``...): its HTTP status and the reason it gives."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2
            ) as response:
                return int(response.status), response.read().decode().strip()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode().strip()

    def inject_gpu_fault(self, kind: str, duration_s: float) -> None:
        """Make the virtual GPU's readings raise NVML error ``kind`` for ``duration_s``."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"F {kind} {duration_s}\n".encode(), str(self.report_socket))

    def sidecar_alive(self) -> bool:
        return self.sidecar is not None and self.sidecar.poll() is None

    def stop(self) -> int | None:
        """Stop the sidecar (SIGTERM, as the kubelet does), then Triton; the sidecar's code."""
        code = None
        if self.sidecar is not None:
            self.sidecar.terminate()
            try:
                code = self.sidecar.wait(SIDECAR_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.sidecar.kill()
                code = self.sidecar.wait()
            self.sidecar = None
        if self.triton is not None:
            self.triton.stop()
            self.triton = None
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        return code

    def __enter__(self) -> LocalPod:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
