"""The agent's work: answer the sidecars' requests, and give GPUs back when pods are gone.

Requests arrive as one JSON line each (see :mod:`capinfer_sidecar.gpu.agent` for the
protocol). Each is authenticated and authorised afresh (:mod:`capinfer_node_agent.auth`);
a refusal is logged and counted, and answered with ``kind: refused``. A GPU a pod claims
is written to the :class:`~capinfer_node_agent.ledger.Ledger` before its knob is set.
:meth:`Agent.reconcile` runs every second: a claim whose pod is gone, or no longer holds
the GPU, is reset to the card's defaults (clock unlocked, default power limit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from capinfer_node_agent.auth import (
    Caller,
    PodInfo,
    RefusedError,
    caller_from_review,
    check_gpus,
    check_pod,
)
from capinfer_node_agent.ledger import Ledger, Owner, stale_claims
from capinfer_node_agent.local import LocalProcesses, Peer
from capinfer_node_agent.podresources import Allocations
from capinfer_sidecar.gpu.agent import (
    KIND_GPU,
    KIND_INVALID,
    KIND_LOST,
    KIND_REFUSED,
    OP_HELLO,
    OP_LOCK_SM_CLOCK,
    OP_RESET_SM_CLOCK,
    OP_SET_POWER_LIMIT,
    OPS,
)
from capinfer_sidecar.gpu.base import GpuControls
from capinfer_sidecar.gpu.errors import (
    GpuError,
    GpuInvalidArgumentError,
    GpuLostError,
    GpuRefusedError,
)

log = logging.getLogger(__name__)


class Reviewer(Protocol):
    def review(self, token: str) -> Mapping[str, Any]: ...


class Pods(Protocol):
    def by_uid(self, uid: str) -> PodInfo | None: ...

    def fetch(self, namespace: str, name: str) -> PodInfo | None: ...

    def running_uids(self) -> set[str]: ...


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "capinfer_node_agent_requests_total",
            "Requests by operation and result (ok, refused, invalid, error)",
            ["op", "result"],
            registry=self.registry,
        )
        self.resets = Counter(
            "capinfer_node_agent_resets_total",
            "GPUs given back their default clocks and power limit, by cause",
            ["cause"],
            registry=self.registry,
        )
        self.claimed = Gauge(
            "capinfer_node_agent_claimed_gpus",
            "GPUs whose knobs a pod of this node holds",
            registry=self.registry,
        )


class InvalidRequestError(ValueError):
    """A request that does not follow the protocol."""


@dataclass
class Agent:
    node: str
    audience: str
    devices: Mapping[str, GpuControls]
    reviewer: Reviewer
    pods: Pods
    allocations: Callable[[], Allocations] | None
    """The kubelet's allocations; None on a host without Kubernetes (``local``)."""
    ledger: Ledger
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    local: LocalProcesses | None = None
    """Set on a host without Kubernetes: callers are processes, known by SO_PEERCRED."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    # -- requests ------------------------------------------------------------------------
    async def handle(self, request: Mapping[str, Any], peer: Peer | None = None) -> dict[str, Any]:
        op = str(request.get("op", ""))
        label = op if op in OPS else "unknown"
        try:
            answer = await self._handle(op, request, peer)
        except RefusedError as error:
            self.metrics.requests.labels(label, "refused").inc()
            log.warning("refused %s: %s", label, error)
            return {"ok": False, "kind": KIND_REFUSED, "error": str(error)}
        except (InvalidRequestError, GpuInvalidArgumentError) as error:
            self.metrics.requests.labels(label, "invalid").inc()
            log.warning("invalid %s request: %s", label, error)
            return {"ok": False, "kind": KIND_INVALID, "error": str(error)}
        except GpuRefusedError as error:
            # The GPU or driver refuses (NOT_SUPPORTED...): the sidecar goes on without it.
            self.metrics.requests.labels(label, "refused").inc()
            log.warning("%s refused by the GPU: %s", label, error)
            return {"ok": False, "kind": KIND_REFUSED, "error": str(error)}
        except GpuError as error:
            self.metrics.requests.labels(label, "error").inc()
            log.error("%s failed: %s", label, error)
            kind = KIND_LOST if isinstance(error, GpuLostError) else KIND_GPU
            return {"ok": False, "kind": kind, "error": str(error)}
        self.metrics.requests.labels(label, "ok").inc()
        return {"ok": True, **answer}

    async def _handle(
        self, op: str, request: Mapping[str, Any], peer: Peer | None
    ) -> dict[str, Any]:
        if op not in OPS:
            raise InvalidRequestError(f"unknown operation {op!r}")
        if self.local is not None:
            owner, allocated = self.local.owner(peer), set(self.devices)
        else:
            caller, allocated = await self._authenticate(str(request.get("token") or ""))
            owner = caller.owner
        if op == OP_HELLO:
            return {"gpus": sorted(g for g in allocated if g in self.devices)}
        gpus = request.get("gpus")
        if not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus):
            raise InvalidRequestError("'gpus' must be a list of GPU UUIDs")
        check_gpus(gpus, allocated, self.devices.keys(), str(owner))
        async with self._lock:
            return await asyncio.to_thread(self._apply, op, owner, gpus, request)

    async def _authenticate(self, token: str) -> tuple[Caller, set[str]]:
        if not token:
            raise RefusedError("no token: mount a projected ServiceAccount token for the agent")
        try:
            status = await asyncio.to_thread(self.reviewer.review, token)
        except Exception as error:
            raise GpuError(
                "token review", f"the API server could not review it: {error}"
            ) from error
        caller = caller_from_review(status, self.audience)
        pod = self.pods.by_uid(caller.uid)
        if pod is None:  # newer than the watch's last event: ask the API server
            pod = await asyncio.to_thread(self.pods.fetch, caller.namespace, caller.pod)
        check_pod(caller, pod, self.node)
        if self.allocations is None:
            raise RefusedError("this agent has no kubelet to ask which GPUs a pod holds")
        try:
            allocations = await asyncio.to_thread(self.allocations)
        except Exception as error:
            raise GpuError("pod resources", f"the kubelet did not answer: {error}") from error
        return caller, set(allocations.get((caller.namespace, caller.pod), ()))

    def _apply(
        self, op: str, owner: Owner, gpus: Sequence[str], request: Mapping[str, Any]
    ) -> dict[str, Any]:
        for gpu in gpus:
            self._take_over(gpu, owner)
        if op == OP_LOCK_SM_CLOCK:
            clock = request.get("clockMHz")
            if not isinstance(clock, int) or isinstance(clock, bool):
                raise InvalidRequestError("'clockMHz' must be an integer")
            for gpu in gpus:
                self.ledger.claim_for(gpu, owner).clock_mhz = clock
            self.ledger.save()
            for gpu in gpus:
                self.devices[gpu].set_locked_sm_clock_mhz(clock)
            log.info("%s: SM clock of %s locked at %d MHz", owner, ", ".join(gpus), clock)
            return {}
        if op == OP_RESET_SM_CLOCK:
            for gpu in gpus:
                self.devices[gpu].reset_sm_clock()
                self.ledger.claim_for(gpu, owner).clock_mhz = None
            self.ledger.save()
            return {}
        assert op == OP_SET_POWER_LIMIT
        return {"powerLimits": [self._set_limit(owner, gpu, request.get("watts")) for gpu in gpus]}

    def _set_limit(self, owner: Owner, gpu: str, watts: Any) -> dict[str, Any]:
        if isinstance(watts, bool) or not isinstance(watts, int | float) or watts <= 0:
            raise InvalidRequestError("'watts' must be a positive number")
        device = self.devices[gpu]
        limits = device.power_limit_range()
        target = limits.clamp(float(watts))
        self.ledger.claim_for(gpu, owner).limit_watts = target
        self.ledger.save()
        device.set_power_limit_watts(target)
        enforced = device.enforced_power_limit_watts()
        if target != watts:
            log.warning(
                "%s: power limit %.0f W for %s is outside the card's [%.0f, %.0f] W: set %.0f W",
                owner, watts, gpu, limits.min_watts, limits.max_watts, target,
            )  # fmt: skip
        return {
            "gpu": gpu,
            "requestedWatts": float(watts),
            "enforcedWatts": enforced,
            "minWatts": limits.min_watts,
            "maxWatts": limits.max_watts,
        }

    def _take_over(self, gpu: str, owner: Owner) -> None:
        """A GPU still claimed by another pod (gone, since the kubelet gave it to this one)."""
        claim = self.ledger.claims.get(gpu)
        if claim is None or claim.owner == owner:
            return
        if self.local is not None and claim.owner.uid in self.local.running_uids():
            # No kubelet decides who holds a GPU here: the first live claimant keeps it.
            raise RefusedError(f"{gpu} is held by {claim.owner}, which still runs")
        self._reset(gpu, f"{gpu} now belongs to {owner}", "reassigned")

    # -- giving GPUs back ----------------------------------------------------------------
    async def reconcile(self) -> list[str]:
        """Reset every stale claim; returns the GPUs reset."""
        allocations: Allocations | None = None
        if self.allocations is not None:
            try:
                allocations = await asyncio.to_thread(self.allocations)
            except Exception as error:
                log.warning("the kubelet's pod-resources API did not answer (%s)", error)
        async with self._lock:
            stale = stale_claims(self.ledger.claims, self.pods.running_uids(), allocations)
            for gpu, why in stale.items():
                await asyncio.to_thread(self._reset, gpu, why, "pod-gone")
            self.metrics.claimed.set(len(self.ledger.claims))
        return list(stale)

    async def reset_all(self, why: str) -> None:
        async with self._lock:
            for gpu in list(self.ledger.claims):
                await asyncio.to_thread(self._reset, gpu, why, "agent-stop")

    def _reset(self, gpu: str, why: str, cause: str) -> None:
        claim = self.ledger.claims.get(gpu)
        device = self.devices.get(gpu)
        if device is None:
            log.error("%s is in the ledger but not on this node: forgetting it", gpu)
            self.ledger.release(gpu)
            return
        try:
            if claim is None or claim.clock_mhz is not None:
                device.reset_sm_clock()
            if claim is None or claim.limit_watts is not None:
                device.set_power_limit_watts(device.power_limit_range().default_watts)
        except GpuRefusedError as error:
            log.warning("%s: %s; nothing of it to reset", gpu, error)
        except GpuError as error:
            log.error("resetting %s failed (%s); trying again at the next reconcile", gpu, error)
            return
        self.ledger.release(gpu)
        self.metrics.resets.labels(cause).inc()
        owner = claim.owner if claim is not None else "nobody"
        log.info("%s reset to its default clocks and power limit (%s; was %s's)", gpu, why, owner)
