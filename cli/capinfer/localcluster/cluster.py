"""A real Kubernetes control plane on this machine, from binaries built from source.

etcd, kube-apiserver (secure serving, RBAC, default admission plugins),
kube-controller-manager and kube-scheduler run as local processes bound to 127.0.0.1 on
free ports; kwok plays the kubelet for fake nodes that advertise ``nvidia.com/gpu``, so
scheduled pods become Running without any container runtime. Several clusters (a demo,
a test run) can live side by side: each has its own state folder and ports.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from capinfer.errors import UserError
from capinfer.localcluster import pki as pki_module
from capinfer.localcluster.binaries import ClusterBinaries
from capinfer.localcluster.processes import (
    DaemonRecord,
    is_running,
    start_daemon,
    stop_daemons,
)

SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
STATE_FILE = "cluster.json"
NODE_READY_JSONPATH = (
    "jsonpath={range .items[*]}{.metadata.name}="
    '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class FakeGpuNode:
    """A node kwok keeps Ready, with the labels NVIDIA's GPU feature discovery sets."""

    name: str
    gpu_count: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    cpu: str = "64"
    memory: str = "512Gi"

    def manifest(self) -> dict[str, object]:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": "110",
            "nvidia.com/gpu": str(self.gpu_count),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": self.gpu_product,
                    "nvidia.com/gpu.count": str(self.gpu_count),
                },
            },
            "spec": {},
            "status": {"capacity": resources, "allocatable": resources},
        }


DEFAULT_NODES = (FakeGpuNode("gpu-node-0"), FakeGpuNode("gpu-node-1"))


def default_state_root() -> Path:
    cache = os.environ.get("CAPINFER_CACHE_DIR") or str(Path.home() / ".cache" / "capinfer")
    return Path(cache) / "clusters"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        # Hold every socket until all are chosen so no two ports collide.
        sockets = []
        try:
            for _ in range(6):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
                sockets.append(sock)
            numbers = [s.getsockname()[1] for s in sockets]
        finally:
            for sock in sockets:
                sock.close()
        return cls(*numbers)


@dataclass
class ClusterStatus:
    name: str
    state_dir: Path
    kubeconfig: Path
    apiserver_url: str | None
    daemons: dict[str, bool] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return bool(self.daemons) and all(self.daemons.values())


class LocalCluster:
    """One local cluster: its state folder, its daemons, its kubeconfig."""

    def __init__(
        self,
        name: str = "capinfer",
        *,
        binaries: ClusterBinaries | None = None,
        state_root: Path | None = None,
        nodes: Sequence[FakeGpuNode] = DEFAULT_NODES,
    ) -> None:
        if not name.replace("-", "").isalnum():
            raise UserError(f"cluster name {name!r} must be letters, digits and '-'")
        self.name = name
        self.state_dir = (state_root or default_state_root()) / name
        self._binaries = binaries
        self.nodes = tuple(nodes)
        self._records: list[DaemonRecord] = []
        self._handles: dict[int, subprocess.Popen[bytes]] = {}
        self._ports: Ports | None = None

    # -- paths -------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pki(self) -> pki_module.Pki:
        return pki_module.Pki(self.state_dir / "pki")

    @property
    def binaries(self) -> ClusterBinaries:
        if self._binaries is None:
            self._binaries = ClusterBinaries.ensure()
        return self._binaries

    @property
    def ports(self) -> Ports:
        if self._ports is None:
            raise RuntimeError(f"cluster {self.name!r} has no ports: it was never started")
        return self._ports

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    # -- state -------------------------------------------------------------------------
    def _save_state(self) -> None:
        state = {
            "name": self.name,
            "ports": vars(self.ports),
            "daemons": [record.to_json() for record in self._records],
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _load_state(self) -> bool:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return False
        state = json.loads(path.read_text())
        self._ports = Ports(**state["ports"])
        self._records = [DaemonRecord.from_json(item) for item in state["daemons"]]
        return True

    def status(self) -> ClusterStatus:
        loaded = self._load_state()
        return ClusterStatus(
            name=self.name,
            state_dir=self.state_dir,
            kubeconfig=self.kubeconfig,
            apiserver_url=self.apiserver_url if loaded else None,
            daemons={record.name: is_running(record) for record in self._records},
        )

    # -- lifecycle ---------------------------------------------------------------------
    def up(self, progress: Progress = _quiet, timeout_s: float = 180.0) -> None:
        """Start every daemon and wait until the fake GPU nodes are Ready."""
        current = self.status()
        if current.running:
            progress(f"cluster {self.name!r} is already running")
            return
        if current.daemons:
            progress(f"cluster {self.name!r} is half up; stopping what is left first")
            self.down(progress)
        binaries = self.binaries
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ports = Ports.pick()
        self._records = []
        deadline = time.monotonic() + timeout_s
        try:
            progress("creating certificates")
            pki = pki_module.create_pki(self.pki.directory, KUBERNETES_SERVICE_IP)
            self._write_kubeconfigs(pki)
            progress(f"starting etcd on 127.0.0.1:{self.ports.etcd_client}")
            self._start("etcd", self._etcd_argv(binaries))
            self._wait_http(f"http://127.0.0.1:{self.ports.etcd_client}/health", "etcd", deadline)
            progress(f"starting kube-apiserver on {self.apiserver_url}")
            self._start("kube-apiserver", self._apiserver_argv(binaries, pki))
            self._wait_https(f"{self.apiserver_url}/readyz", "kube-apiserver", deadline)
            progress("starting kube-controller-manager and kube-scheduler")
            self._start("kube-controller-manager", self._controller_manager_argv(binaries, pki))
            self._start("kube-scheduler", self._scheduler_argv(binaries))
            cm_port, sched_port = self.ports.controller_manager, self.ports.scheduler
            self._wait_https(f"https://127.0.0.1:{cm_port}/healthz", "controller-mgr", deadline)
            self._wait_https(f"https://127.0.0.1:{sched_port}/healthz", "scheduler", deadline)
            progress("starting kwok and registering fake GPU nodes")
            self._start("kwok", self._kwok_argv(binaries))
            self._wait_http(f"http://127.0.0.1:{self.ports.kwok}/healthz", "kwok", deadline)
            self._register_nodes()
            self._wait_ready(deadline, progress)
        except BaseException:
            self.down()
            raise
        progress(f"cluster {self.name!r} is up; kubeconfig: {self.kubeconfig}")

    def down(self, progress: Progress = _quiet) -> None:
        """Stop every daemon of this cluster and delete its state."""
        if not self._records:
            self._load_state()
        if self._records:
            progress(f"stopping {', '.join(r.name for r in reversed(self._records))}")
        stop_daemons(self._records, self._handles)
        self._records = []
        self._handles = {}
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        progress(f"cluster {self.name!r} is down")

    def stop_apiserver(self) -> None:
        """Stop only the kube-apiserver (SIGTERM, then SIGKILL after 10 s): etcd, the
        controllers, kwok and the state stay; clients see the API server go away."""
        if not self._records:
            self._load_state()
        stopping = [r for r in self._records if r.name == "kube-apiserver"]
        stop_daemons(stopping, self._handles)
        self._records = [r for r in self._records if r.name != "kube-apiserver"]
        self._save_state()

    def start_apiserver(self, timeout_s: float = 120.0) -> None:
        """Start the kube-apiserver again, on the same port with the same certificates, and
        wait until it is ready."""
        if not self._records:
            self._load_state()
        if any(r.name == "kube-apiserver" and is_running(r) for r in self._records):
            return
        self._records = [r for r in self._records if r.name != "kube-apiserver"]
        self._start("kube-apiserver", self._apiserver_argv(self.binaries, self.pki))
        deadline = time.monotonic() + timeout_s
        self._wait_https(f"{self.apiserver_url}/readyz", "kube-apiserver", deadline)

    # -- helpers for callers -----------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binaries.path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def service_account_kubeconfig(
        self, namespace: str, account: str, path: Path, duration: str = "2h"
    ) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount by a bearer token alone.

        What runs with it has exactly that account's RBAC: how the tests and the demo run
        a pod's sidecar (or the operator) outside the cluster with in-cluster permissions.
        """
        token = self.kubectl(
            "create", "token", account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        server = json.loads(self.kubeconfig.read_text())["clusters"][0]["cluster"]
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": self.name, "cluster": server}],
                    "users": [{"name": account, "user": {"token": token}}],
                    "contexts": [
                        {"name": account, "context": {"cluster": self.name, "user": account}}
                    ],
                    "current-context": account,
                }
            )
        )
        path.chmod(0o600)
        return path

    # -- internals ---------------------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> None:
        record, handle = start_daemon(name, argv, self.log_dir / f"{name}.log")
        self._records.append(record)
        self._handles[record.pid] = handle
        self._save_state()

    def _log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _check_alive(self) -> None:
        for record in self._records:
            if not is_running(record):
                raise UserError(
                    f"{record.name} exited during start-up; last lines of {record.log_path}:\n"
                    f"{self._log_tail(record.name)}"
                )

    def _wait_until(self, what: str, deadline: float, probe: Callable[[], bool]) -> None:
        while True:
            self._check_alive()
            if probe():
                return
            if time.monotonic() > deadline:
                raise UserError(f"timed out waiting for {what}; logs are in {self.log_dir}")
            time.sleep(0.2)

    def _wait_http(self, url: str, what: str, deadline: float) -> None:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self._wait_until(what, deadline, probe)

    def _wait_https(self, url: str, what: str, deadline: float) -> None:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(
            str(self.pki.client_cert(pki_module.ADMIN)), str(self.pki.client_key(pki_module.ADMIN))
        )
        if not url.startswith(self.apiserver_url):
            # Controllers serve /healthz with a self-signed certificate of their own.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE

        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self._wait_until(what, deadline, probe)

    def _write_kubeconfigs(self, pki: pki_module.Pki) -> None:
        for identity in pki_module.CLIENT_IDENTITIES:
            path = (
                self.kubeconfig
                if identity is pki_module.ADMIN
                else self.state_dir / f"{identity.file_stem}.kubeconfig"
            )
            path.write_text(
                json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [
                            {
                                "name": self.name,
                                "cluster": {
                                    "server": self.apiserver_url,
                                    "certificate-authority": str(pki.ca_cert),
                                },
                            }
                        ],
                        "users": [
                            {
                                "name": identity.common_name,
                                "user": {
                                    "client-certificate": str(pki.client_cert(identity)),
                                    "client-key": str(pki.client_key(identity)),
                                },
                            }
                        ],
                        "contexts": [
                            {
                                "name": self.name,
                                "context": {"cluster": self.name, "user": identity.common_name},
                            }
                        ],
                        "current-context": self.name,
                    },
                    indent=2,
                )
            )
            path.chmod(0o600)

    def _etcd_argv(self, binaries: ClusterBinaries) -> list[str]:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            str(binaries.path("etcd")),
            "--name=capinfer",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=capinfer={peer}",
            "--listen-metrics-urls=",
            # A throw-away cluster: durability is not worth the fsync cost on CI disks.
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ]

    def _apiserver_argv(self, binaries: ClusterBinaries, pki: pki_module.Pki) -> list[str]:
        return [
            str(binaries.path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _controller_manager_argv(self, binaries: ClusterBinaries, pki: pki_module.Pki) -> list[str]:
        kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        return [
            str(binaries.path("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-cidr={POD_CIDR}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ]

    def _scheduler_argv(self, binaries: ClusterBinaries) -> list[str]:
        kubeconfig = self.state_dir / "scheduler.kubeconfig"
        return [
            str(binaries.path("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _kwok_argv(self, binaries: ClusterBinaries) -> list[str]:
        config = resources.files("capinfer.localcluster").joinpath("kwok-stages.yaml")
        return [
            str(binaries.path("kwok")),
            f"--kubeconfig={self.state_dir / 'kwok.kubeconfig'}",
            f"--config={config}",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-ip=127.0.0.1",
            "--cidr=10.244.0.0/24",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
        ]

    def _register_nodes(self) -> None:
        manifest = {"apiVersion": "v1", "kind": "List", "items": [n.manifest() for n in self.nodes]}
        self.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

    def _wait_ready(self, deadline: float, progress: Progress) -> None:
        names = [node.name for node in self.nodes]

        def nodes_ready() -> bool:
            result = self.kubectl("get", "nodes", "-o", NODE_READY_JSONPATH, check=False)
            ready = {
                line.split("=")[0] for line in result.stdout.splitlines() if line.endswith("=True")
            }
            return all(name in ready for name in names)

        def default_service_account() -> bool:
            result = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
            return result.returncode == 0

        self._wait_until("the fake GPU nodes to be Ready", deadline, nodes_ready)
        progress(f"nodes Ready: {', '.join(names)}")
        self._wait_until("the default ServiceAccount", deadline, default_service_account)
