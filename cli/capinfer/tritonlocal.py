"""A real ``tritonserver`` on this machine, for tests and the demo.

The ``nvidia-pytriton`` wheel ships a ``tritonserver`` binary (2.51) with the Python
backend. :class:`LocalTritonServer` runs it the way pytriton does, without pytriton:

- a backend folder of our own holds the Python backend and the backend stub built for the
  running interpreter (the wheel carries one stub per Python version);
- the stub embeds ``libpython`` and finds its ``sys.prefix`` through the ``python3`` on
  ``PATH``, so the running interpreter's ``bin`` goes first on ``PATH`` (the model then
  imports numpy from this environment);
- ``LD_LIBRARY_PATH`` gets the wheel's bundled libraries;
- explicit model-control mode; HTTP, gRPC and metrics on 127.0.0.1 and free ports.

No GPU is needed: without CUDA the server logs that NVML/DCGM are missing and serves
``KIND_CPU`` instances. The server runs in a session of its own; stopping it signals the
whole process group, because a killed ``tritonserver`` leaves its stub processes running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from capinfer.errors import UserError

HOST = "127.0.0.1"
_PORT_CONFLICT_MARKER = "already in use"


class TritonNotInstalledError(UserError):
    """The ``tritonserver`` from the ``nvidia-pytriton`` wheel cannot be found or run."""


class TritonStartError(RuntimeError):
    """``tritonserver`` exited or did not become ready; the message ends with its log tail."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the wheel keeps the server, its libraries and the Python backend."""

    binary_path: Path
    libs_dir: Path
    python_backend_dir: Path
    stub_path: Path
    caches_dir: Path


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(
            "the nvidia-pytriton package is not installed (it carries tritonserver): "
            "pip install 'capinfer[test]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_libs_dir(root: Path) -> Path:
    # A wheel install keeps the bundled libraries beside the package, an editable install
    # of pytriton inside it.
    editable = root / "tritonserver" / "external_libs"
    return editable if editable.is_dir() else root.parent / "nvidia_pytriton.libs"


def find_distribution(
    pytriton_root: Path | None = None, python_version: tuple[int, int] | None = None
) -> TritonDistribution:
    """Locate tritonserver and the backend stub for ``python_version`` (default: this one)."""
    root = pytriton_root or _pytriton_root()
    major, minor = python_version or (sys.version_info.major, sys.version_info.minor)
    server_dir = root / "tritonserver"
    distribution = TritonDistribution(
        binary_path=server_dir / "bin" / "tritonserver",
        libs_dir=_bundled_libs_dir(root),
        python_backend_dir=server_dir / "backends" / "python",
        stub_path=server_dir
        / "python_backend_stubs"
        / f"{major}.{minor}"
        / "triton_python_backend_stub",
        caches_dir=server_dir / "caches",
    )
    for path in (distribution.binary_path, distribution.python_backend_dir / "libtriton_python.so"):
        if not path.exists():
            raise TritonNotInstalledError(f"{path} is missing: reinstall nvidia-pytriton")
    if not distribution.stub_path.exists():
        raise TritonNotInstalledError(
            f"nvidia-pytriton has no Python-backend stub for Python {major}.{minor} "
            f"({distribution.stub_path}); use a Python it ships stubs for"
        )
    return distribution


def missing_shared_libraries(binary: Path, env: Mapping[str, str]) -> list[str]:
    """Shared libraries ``ldd`` cannot resolve for ``binary`` (empty when ldd is absent)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    result = subprocess.run(
        [ldd, str(binary)], env=dict(env), capture_output=True, text=True, check=False
    )
    return [
        line.split("=>")[0].strip() for line in result.stdout.splitlines() if "not found" in line
    ]


def prepare_backend_directory(distribution: TritonDistribution, backends_dir: Path) -> Path:
    """A ``--backend-directory`` whose ``python`` backend holds the stub for this Python."""
    python_dir = backends_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in distribution.python_backend_dir.iterdir():
        if source.is_file():
            target = python_dir / source.name
            target.unlink(missing_ok=True)
            target.symlink_to(source)
    stub = python_dir / "triton_python_backend_stub"
    stub.unlink(missing_ok=True)
    shutil.copy2(distribution.stub_path, stub)
    return backends_dir


def server_environment(
    distribution: TritonDistribution,
    base: Mapping[str, str],
    python_bin_dir: Path,
) -> dict[str, str]:
    """The server's environment: bundled libraries, and this Python first on ``PATH``."""
    env = dict(base)
    library_path = [str(distribution.libs_dir)]
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    env["PATH"] = os.pathsep.join(p for p in (str(python_bin_dir), env.get("PATH", "")) if p)
    return env


@dataclass(frozen=True)
class ServerPorts:
    http: int
    grpc: int
    metrics: int


def server_arguments(
    distribution: TritonDistribution,
    model_repository: Path,
    backends_dir: Path,
    ports: ServerPorts,
    *,
    load_models: Sequence[str],
    shm_prefix: str,
    exit_timeout_s: int,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``tritonserver`` command line (flags as tritonserver 2.51 spells them)."""
    return [
        str(distribution.binary_path),
        f"--model-repository={model_repository}",
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in load_models),
        f"--backend-directory={backends_dir}",
        f"--cache-directory={distribution.caches_dir}",
        f"--http-address={HOST}",
        f"--http-port={ports.http}",
        f"--grpc-address={HOST}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-address={HOST}",
        f"--metrics-port={ports.metrics}",
        # A known prefix lets stop() remove the shared-memory regions a killed stub leaves.
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--exit-timeout-secs={exit_timeout_s}",
        *extra_args,
    ]


def started_service_lines(ports: ServerPorts) -> tuple[str, ...]:
    """What tritonserver logs once each service has bound its port."""
    return (
        f"Started GRPCInferenceService at {HOST}:{ports.grpc}",
        f"Started HTTPService at {HOST}:{ports.http}",
        f"Started Metrics Service at {HOST}:{ports.metrics}",
    )


def free_tcp_ports(count: int, host: str = HOST) -> list[int]:
    """Ports the kernel hands out now; all sockets stay open until all are picked."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def process_group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces: state, ppid, pgrp, ...
        state, _ppid, pgrp = raw[raw.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` log lines, without the wide option and model tables."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    kept = [line for line in text.splitlines() if not line.startswith(("+-", "| "))]
    return "\n".join(kept[-lines:])


class LocalTritonServer:
    """One ``tritonserver`` process group: start, wait until ready, stop without leftovers.

    ``work_dir`` holds the backend folder and the log (``log_path``). Ports are picked at the
    first start and kept, so a server that was killed restarts at the same addresses.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        model_repository: Path,
        work_dir: Path,
        *,
        load_models: Sequence[str] = (),
        ready_timeout_s: float = 120.0,
        stop_timeout_s: float = 15.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        distribution: TritonDistribution | None = None,
    ) -> None:
        self.model_repository = model_repository
        self.work_dir = work_dir
        self.log_path = work_dir / "tritonserver.log"
        self._load_models = tuple(load_models)
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._extra_args = tuple(extra_args)
        self._base_env = dict(env if env is not None else os.environ)
        self._distribution = distribution
        self._ports: ServerPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._shm_prefix = f"capinfer{os.getpid()}-{secrets.token_hex(4)}-"
        self._log_offset = 0

    # -- addresses --------------------------------------------------------------------
    @property
    def ports(self) -> ServerPorts:
        if self._ports is None:
            raise RuntimeError("the server has not been started")
        return self._ports

    @property
    def http_address(self) -> str:
        """``host:port``, the form ``tritonclient.http`` takes."""
        return f"{HOST}:{self.ports.http}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        """``host:port``, the gRPC target form ``tritonclient.grpc`` takes."""
        return f"{HOST}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's pid, which is also its process group id; None when not started."""
        return self._process.pid if self._process is not None else None

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> LocalTritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and return once ``/v2/health/ready`` answers 200."""
        if self.is_running():
            raise RuntimeError(f"tritonserver is already running (pid {self.pid})")
        distribution = self._distribution or find_distribution()
        self._distribution = distribution
        env = server_environment(distribution, self._base_env, Path(sys.executable).parent)
        missing = missing_shared_libraries(distribution.stub_path, env)
        if missing:
            raise TritonNotInstalledError(
                f"the Python-backend stub cannot load {', '.join(missing)} "
                f"(on Debian: apt-get install libpython{sys.version_info.major}."
                f"{sys.version_info.minor})"
            )
        backends_dir = prepare_backend_directory(distribution, self.work_dir / "backends")
        # Free ports can be taken by someone else before the server binds them: retry with
        # fresh ones, but only on the first start (a restart keeps its addresses).
        attempts = 3 if self._ports is None else 1
        for attempt in range(1, attempts + 1):
            if self._ports is None:
                self._ports = ServerPorts(*free_tcp_ports(3))
            argv = server_arguments(
                distribution,
                self.model_repository,
                backends_dir,
                self._ports,
                load_models=self._load_models,
                shm_prefix=self._shm_prefix,
                exit_timeout_s=max(1, int(self._stop_timeout_s) - 2),
                extra_args=self._extra_args,
            )
            self._spawn(argv, env)
            try:
                self._wait_until_ready()
                return
            except TritonStartError as error:
                self.stop()
                tail = log_tail(self.log_path).lower()
                if attempt == attempts or _PORT_CONFLICT_MARKER not in tail:
                    raise error from None
                self._ports = None

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n=== capinfer: starting {' '.join(argv)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.work_dir,
                start_new_session=True,
            )

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        url = f"{self.http_url}/v2/health/ready"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                raise TritonStartError(
                    f"tritonserver exited with code {code} before it was ready; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            # Ready means this process bound all three ports (its log says so) and answers:
            # a 200 alone could come from another server that holds the port.
            if self._services_started() and _http_ok(url) and process.poll() is None:
                return
            if time.monotonic() > deadline:
                raise TritonStartError(
                    f"tritonserver was not ready after {self._ready_timeout_s:.0f} s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _services_started(self) -> bool:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return False
        return all(line in text for line in started_service_lines(self.ports))

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        return self.is_running() and _http_ok(f"{self.http_url}/v2/health/ready")

    def kill(self) -> None:
        """SIGKILL the whole group at once, the way a crash would end it (fault tests)."""
        self._end_group(grace_s=0.0)

    def stop(self) -> None:
        """SIGTERM the group, wait for the server to unload its models, then SIGKILL.

        ``--exit-timeout-secs`` is set just under ``stop_timeout_s``: after a failed model
        load tritonserver 2.51 counts a model that never unloads and waits out that timeout.
        """
        self._end_group(grace_s=self._stop_timeout_s)

    def _end_group(self, grace_s: float) -> None:
        process = self._process
        if process is None:
            return
        pgid = process.pid
        if process.poll() is None and grace_s > 0:
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while not _leader_exited(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        # The leader is not reaped yet (a zombie at worst), so its pid cannot be reused and
        # the group id still names only our processes.
        _signal_group(pgid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 5.0
        while process_group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._process = None
        self._remove_shared_memory()

    def _remove_shared_memory(self) -> None:
        shm = Path("/dev/shm")
        if shm.is_dir():
            for region in shm.glob(f"{self._shm_prefix}*"):
                region.unlink(missing_ok=True)

    def shared_memory_regions(self) -> list[Path]:
        """The Python backend's shared-memory regions of this server (for leak checks)."""
        return sorted(Path("/dev/shm").glob(f"{self._shm_prefix}*"))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _leader_exited(pid: int) -> bool:
    """True once ``pid`` (our child) has exited; WNOWAIT leaves it unreaped."""
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return result is not None
