"""The node agent's wire protocol, and the sidecar's client of it.

The sidecar runs unprivileged: every privileged GPU knob (locked SM clocks, the board power
limit) is set by ``capinfer-node-agent`` on its behalf. The agent listens on a stream
socket -- a Unix socket (``unix:///path``) or TCP (``tcp://host:port``, the node-local
Service in a cluster) -- and speaks one JSON object per line each way::

    {"op": "lock-sm-clock", "token": "<pod-bound ServiceAccount token>",
     "gpus": ["GPU-…"], "clockMHz": 1200}
    {"ok": true, ...}  or  {"ok": false, "kind": "refused", "error": "…"}

``kind`` maps back onto the typed GPU errors, so the control loop treats the agent exactly
as it treated NVML: ``refused`` is a :class:`GpuPermissionError` (batch size alone),
``lost`` a :class:`GpuLostError`, ``invalid`` a :class:`GpuInvalidArgumentError`, anything
else a transient :class:`GpuError`. An agent that cannot be reached is
:class:`NodeAgentUnreachableError`, transient too: the loop retries it and moves to its
failsafe once it lasts.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capinfer_sidecar.gpu.errors import (
    GpuError,
    GpuInvalidArgumentError,
    GpuLostError,
    GpuPermissionError,
)

OP_HELLO = "hello"
OP_LOCK_SM_CLOCK = "lock-sm-clock"
OP_RESET_SM_CLOCK = "reset-sm-clock"
OP_SET_POWER_LIMIT = "set-power-limit"
OPS = (OP_HELLO, OP_LOCK_SM_CLOCK, OP_RESET_SM_CLOCK, OP_SET_POWER_LIMIT)

KIND_REFUSED = "refused"
KIND_INVALID = "invalid"
KIND_LOST = "lost"
KIND_GPU = "gpu"
MAX_LINE_BYTES = 64 * 1024
"""The longest request or answer; a ServiceAccount token is about 1 KiB."""
DEFAULT_TIMEOUT_S = 2.0


class NodeAgentUnreachableError(GpuError):
    """No answer from the node agent (not running, restarting, or not on this node)."""


def error_from_answer(operation: str, answer: Mapping[str, Any]) -> GpuError:
    kind = answer.get("kind")
    detail = str(answer.get("error", "no reason given"))
    error_type: type[GpuError] = {
        KIND_REFUSED: GpuPermissionError,
        KIND_INVALID: GpuInvalidArgumentError,
        KIND_LOST: GpuLostError,
    }.get(str(kind), GpuError)
    return error_type(operation, f"node agent: {detail}")


def parse_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """``unix:///path`` or ``tcp://host:port`` -> (family, where)."""
    if address.startswith("unix://"):
        return "unix", address.removeprefix("unix://")
    if address.startswith("tcp://"):
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"node agent address {address!r}: expected tcp://host:port")
        return "tcp", (host, int(port))
    raise ValueError(f"node agent address {address!r}: expected unix:///path or tcp://host:port")


@dataclass(frozen=True)
class PowerLimitResult:
    """What the agent did to one GPU's board limit, and what the GPU enforces now."""

    gpu: str
    requested_watts: float
    enforced_watts: float
    min_watts: float
    max_watts: float

    @property
    def below_minimum(self) -> bool:
        return self.requested_watts < self.min_watts


class NodeAgentClient:
    """Blocking calls to the node agent (each a local round trip of about a millisecond).

    The loop calls the clock knob synchronously, as it called NVML; ``timeout_s`` bounds a
    stalled agent. The token file is read at every call: the kubelet rotates it.
    """

    def __init__(
        self, address: str, token_path: Path | None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.address = address
        self._family, self._where = parse_address(address)
        self._token_path = token_path
        self._timeout_s = timeout_s

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        request = {"op": op, "token": self._token(), **fields}
        try:
            answer = self._round_trip(json.dumps(request).encode() + b"\n")
        except (OSError, ValueError) as error:
            raise NodeAgentUnreachableError(op, f"node agent at {self.address}: {error}") from error
        if not answer.get("ok"):
            raise error_from_answer(op, answer)
        return answer

    def hello(self) -> list[str]:
        """The GPUs this pod may steer, as the agent sees them (a refusal raises)."""
        return [str(gpu) for gpu in self.call(OP_HELLO).get("gpus", [])]

    def lock_sm_clock(self, gpus: Sequence[str], clock_mhz: int) -> None:
        self.call(OP_LOCK_SM_CLOCK, gpus=list(gpus), clockMHz=clock_mhz)

    def reset_sm_clock(self, gpus: Sequence[str]) -> None:
        self.call(OP_RESET_SM_CLOCK, gpus=list(gpus))

    def set_power_limit(self, gpus: Sequence[str], watts: float) -> list[PowerLimitResult]:
        answer = self.call(OP_SET_POWER_LIMIT, gpus=list(gpus), watts=watts)
        return [
            PowerLimitResult(
                gpu=str(item["gpu"]),
                requested_watts=float(item["requestedWatts"]),
                enforced_watts=float(item["enforcedWatts"]),
                min_watts=float(item["minWatts"]),
                max_watts=float(item["maxWatts"]),
            )
            for item in answer.get("powerLimits", [])
        ]

    def _token(self) -> str:
        if self._token_path is None:
            return ""
        try:
            return self._token_path.read_text().strip()
        except OSError as error:
            raise NodeAgentUnreachableError("read token", f"{self._token_path}: {error}") from error

    def _round_trip(self, payload: bytes) -> dict[str, Any]:
        family = socket.AF_UNIX if self._family == "unix" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(self._timeout_s)
            sock.connect(self._where)
            sock.sendall(payload)
            received = b""
            while not received.endswith(b"\n"):
                chunk = sock.recv(MAX_LINE_BYTES)
                if not chunk:
                    raise ValueError("the node agent closed the connection without an answer")
                received += chunk
                if len(received) > MAX_LINE_BYTES:
                    raise ValueError("answer too long")
        answer = json.loads(received)
        if not isinstance(answer, dict):
            raise ValueError("answer is not a JSON object")
        return answer
