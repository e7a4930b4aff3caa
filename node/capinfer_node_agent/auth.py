"""Who is calling, and which GPUs it may steer: pure decisions over what the cluster says.

A caller proves which pod it is with a ServiceAccount token the kubelet projected into
that pod for this agent's audience alone. The API server's TokenReview says whether the
token is valid for the audience, and names the pod it is bound to (the
``authentication.kubernetes.io/pod-*`` extras). The pod must run on this node with that
ServiceAccount, and it may steer only the GPUs the kubelet allocated to it (the
pod-resources API). Never the workload's own word about which GPU it holds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capinfer_node_agent.ledger import Owner

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
TERMINAL_PHASES = ("Succeeded", "Failed")


class RefusedError(Exception):
    """The request is refused; the message says why (it is logged and counted)."""


@dataclass(frozen=True)
class PodInfo:
    """What the agent needs of a pod of its node."""

    namespace: str
    name: str
    uid: str
    node: str
    service_account: str
    phase: str

    @property
    def running(self) -> bool:
        return self.phase not in TERMINAL_PHASES

    @classmethod
    def from_manifest(cls, pod: Mapping[str, Any]) -> PodInfo:
        metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        return cls(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            node=str(spec.get("nodeName") or ""),
            service_account=str(spec.get("serviceAccountName") or "default"),
            phase=str((pod.get("status") or {}).get("phase") or "Pending"),
        )


@dataclass(frozen=True)
class Caller:
    """The pod a valid token is bound to, and its ServiceAccount."""

    namespace: str
    service_account: str
    pod: str
    uid: str

    @property
    def owner(self) -> Owner:
        return Owner(self.namespace, self.pod, self.uid)


def _one(extra: Mapping[str, Any], key: str) -> str:
    values = extra.get(key) or []
    return str(values[0]) if values else ""


def caller_from_review(status: Mapping[str, Any], audience: str) -> Caller:
    """The caller a TokenReview status describes; :class:`RefusedError` otherwise."""
    if not status.get("authenticated"):
        raise RefusedError(f"token not valid: {status.get('error') or 'not authenticated'}")
    if audience not in (status.get("audiences") or []):
        raise RefusedError(f"token not issued for the audience {audience!r}")
    user = status.get("user") or {}
    username = str(user.get("username", ""))
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        raise RefusedError(f"{username or 'the caller'} is not a ServiceAccount")
    namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    extra = user.get("extra") or {}
    pod, uid = _one(extra, POD_NAME_EXTRA), _one(extra, POD_UID_EXTRA)
    if not pod or not uid:
        raise RefusedError("token is not bound to a pod (use a projected ServiceAccount token)")
    return Caller(namespace, account, pod, uid)


def check_pod(caller: Caller, pod: PodInfo | None, node: str) -> PodInfo:
    """The caller's pod, when it runs on this node with the token's ServiceAccount."""
    name = f"{caller.namespace}/{caller.pod}"
    if pod is None or pod.uid != caller.uid:
        raise RefusedError(f"pod {name} (uid {caller.uid}) does not run on node {node}")
    if pod.node != node:
        raise RefusedError(f"pod {name} runs on node {pod.node or 'none'}, not {node}")
    if not pod.running:
        raise RefusedError(f"pod {name} has finished ({pod.phase})")
    if pod.service_account != caller.service_account:
        raise RefusedError(f"pod {name} does not run as ServiceAccount {caller.service_account}")
    return pod


def check_gpus(
    requested: Sequence[str], allocated: Collection[str], managed: Collection[str], pod: str
) -> None:
    """Every requested GPU is allocated to the pod and managed by this agent."""
    if not requested:
        raise RefusedError("no GPU named")
    foreign = [gpu for gpu in requested if gpu not in allocated]
    if foreign:
        held = ", ".join(sorted(allocated)) or "none"
        raise RefusedError(f"pod {pod} does not hold {', '.join(foreign)} (it holds: {held})")
    unknown = [gpu for gpu in requested if gpu not in managed]
    if unknown:
        raise RefusedError(f"this agent does not manage {', '.join(unknown)}")
