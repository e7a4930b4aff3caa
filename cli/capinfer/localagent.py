"""``capinfer-node-agent`` as a local process on virtual GPUs, for tests and the demo.

On a real node the agent is a DaemonSet pod; here it runs as a subprocess with a kubeconfig
of its own ServiceAccount (the chart's RBAC), the kubelet's pod-resources API served by
:class:`capinfer.podresources.PodResourcesServer`, and virtual GPUs whose knobs live in
controls files that the sidecars' virtual devices follow. Without a kubeconfig it runs as
on a host without Kubernetes (``--auth local``: callers known by their UID).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capinfer.localcluster.cluster import free_port

STOP_GRACE_S = 10.0


@dataclass
class LocalNodeAgent:
    """One agent for ``node``, serving on a Unix socket in ``work_dir``."""

    work_dir: Path
    node: str
    kubeconfig: Path | None
    """None: a host without Kubernetes (``--auth local``)."""
    pod_resources_socket: Path | None
    gpus: Mapping[str, Path]
    """GPU UUID -> its controls file."""
    virtual_profile: str = "p40"
    virtual_workload: str = "Res50/imagenet"
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    metrics_port: int = field(default=0, init=False)

    @property
    def socket_path(self) -> Path:
        return self.work_dir / "agent.sock"

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "node-agent.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, ready_timeout_s: float = 60.0) -> LocalNodeAgent:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.metrics_port = free_port()
        if self.kubeconfig is None:
            auth = ["--auth", "local"]
        else:
            auth = [
                "--kubeconfig", str(self.kubeconfig),
                "--pod-resources-socket", str(self.pod_resources_socket),
            ]  # fmt: skip
        argv = [
            sys.executable, "-m", "capinfer_node_agent.main",
            "--listen", self.address,
            "--node-name", self.node,
            *auth,
            "--state-dir", str(self.work_dir / "state"),
            "--metrics-address", f"127.0.0.1:{self.metrics_port}",
            "--gpu", "virtual",
            "--virtual-profile", self.virtual_profile,
            "--virtual-workload", self.virtual_workload,
            *[f"--virtual-gpu={uuid}={path}" for uuid, path in self.gpus.items()],
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while not (self.socket_path.exists() and self._metrics_answer()):
            if self.process.poll() is not None:
                raise RuntimeError(f"capinfer-node-agent exited; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"capinfer-node-agent never served; see {self.log_path}")
            time.sleep(0.1)
        return self

    def _metrics_answer(self) -> bool:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
            return str(response.read().decode())

    def stop(self) -> int | None:
        """SIGTERM, as the kubelet stops a pod; the exit code."""
        if self.process is None:
            return None
        self.process.terminate()
        try:
            code = self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: no chance to reset anything (a crash, an OOM kill)."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def __enter__(self) -> LocalNodeAgent:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
