"""The agent's request handling and reconciling, over fakes of the cluster and the GPUs.

The real API server, kubelet stand-in and agent process are in
``tests/integration/node_agent``; here the paths that a cluster cannot easily provoke:
GPUs that refuse or are lost, and resets that must touch only what was set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client as kube_client

from capinfer_node_agent.agent import Agent
from capinfer_node_agent.auth import POD_NAME_EXTRA, POD_UID_EXTRA, PodInfo
from capinfer_node_agent.kube import OUTAGE_GRACE_S, REVIEW_CACHE_S, TokenReviewer
from capinfer_node_agent.ledger import Ledger
from capinfer_sidecar.gpu.base import GpuControls, PowerLimitRange
from capinfer_sidecar.gpu.errors import GpuError, GpuLostError, GpuNotSupportedError

AUDIENCE = "capinfer-node-agent"
POD = PodInfo("ml", "p", "uid-p", "n0", "sa", "Running")


@dataclass
class FakeControls(GpuControls):
    name: str
    fail_with: GpuError | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def uuid(self) -> str:
        return self.name

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return (900, 1200)

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append(("lock", clock_mhz))

    def reset_sm_clock(self) -> None:
        self.calls.append(("reset", None))

    def power_limit_range(self) -> PowerLimitRange:
        return PowerLimitRange(100.0, 300.0, 300.0)

    def set_power_limit_watts(self, watts: float) -> None:
        self.calls.append(("limit", watts))

    def enforced_power_limit_watts(self) -> float:
        limits = [w for op, w in self.calls if op == "limit"]
        return float(limits[-1]) if limits else 300.0


class Reviewer:
    def review(self, token: str) -> dict[str, Any]:
        return {
            "authenticated": token == "good",
            "audiences": [AUDIENCE],
            "user": {
                "username": "system:serviceaccount:ml:sa",
                "extra": {POD_NAME_EXTRA: ["p"], POD_UID_EXTRA: ["uid-p"]},
            },
        }


@dataclass
class Pods:
    running: set[str] = field(default_factory=lambda: {"uid-p"})

    def by_uid(self, uid: str) -> PodInfo | None:
        return POD if uid in self.running else None

    def fetch(self, namespace: str, name: str) -> PodInfo | None:
        return None

    def running_uids(self) -> set[str]:
        return set(self.running)


def agent_with(*devices: FakeControls, pods: Pods | None = None) -> Agent:
    return Agent(
        node="n0",
        audience=AUDIENCE,
        devices={d.name: d for d in devices},
        reviewer=Reviewer(),
        pods=pods or Pods(),
        allocations=lambda: {("ml", "p"): {d.name for d in devices}},
        ledger=Ledger(),
    )


async def test_a_gpu_that_refuses_clocks_is_a_refusal_not_a_transient_error() -> None:
    gpu = FakeControls("GPU-a", fail_with=GpuNotSupportedError("lock", "not supported"))
    answer = await agent_with(gpu).handle(
        {"op": "lock-sm-clock", "token": "good", "gpus": ["GPU-a"], "clockMHz": 900}
    )
    assert answer["ok"] is False and answer["kind"] == "refused"


async def test_a_lost_gpu_is_said_as_lost() -> None:
    gpu = FakeControls("GPU-a", fail_with=GpuLostError("lock", "fell off the bus"))
    answer = await agent_with(gpu).handle(
        {"op": "lock-sm-clock", "token": "good", "gpus": ["GPU-a"], "clockMHz": 900}
    )
    assert (answer["ok"], answer["kind"]) == (False, "lost")


async def test_malformed_requests_are_invalid_and_bad_tokens_refused() -> None:
    agent = agent_with(FakeControls("GPU-a"))
    bad_clock = {"op": "lock-sm-clock", "token": "good", "gpus": ["GPU-a"], "clockMHz": "x"}
    assert (await agent.handle(bad_clock))["kind"] == "invalid"
    assert (await agent.handle({"op": "format-disk", "token": "good"}))["kind"] == "invalid"
    assert (await agent.handle({"op": "hello", "token": "forged"}))["kind"] == "refused"
    text = agent.metrics.registry.get_sample_value(
        "capinfer_node_agent_requests_total", {"op": "hello", "result": "refused"}
    )
    assert text == 1.0


async def test_a_gone_pod_gets_back_exactly_what_was_set_and_nothing_else() -> None:
    clocked, limited = FakeControls("GPU-a"), FakeControls("GPU-b")
    pods = Pods()
    agent = agent_with(clocked, limited, pods=pods)
    await agent.handle(
        {"op": "lock-sm-clock", "token": "good", "gpus": ["GPU-a"], "clockMHz": 1200}
    )
    answer = await agent.handle(
        {"op": "set-power-limit", "token": "good", "gpus": ["GPU-b"], "watts": 50}
    )
    assert answer["powerLimits"][0]["enforcedWatts"] == 100.0  # clamped to the minimum
    assert await agent.reconcile() == []  # the pod runs: nothing to reset
    pods.running.clear()
    assert sorted(await agent.reconcile()) == ["GPU-a", "GPU-b"]
    assert clocked.calls == [("lock", 1200), ("reset", None)]
    assert limited.calls == [("limit", 100.0), ("limit", 300.0)]
    assert agent.ledger.claims == {}
    assert (
        agent.metrics.registry.get_sample_value(
            "capinfer_node_agent_resets_total", {"cause": "pod-gone"}
        )
        == 2.0
    )


class FlakyAuthApi:
    """The API server answering, then unreachable, then refusing."""

    def __init__(self) -> None:
        self.mode = "up"

    def create_token_review(self, body: Any) -> Any:
        if self.mode == "down":
            raise OSError("connection refused")
        if self.mode == "forbidden":
            raise kube_client.ApiException(status=403, reason="Forbidden")
        return kube_client.V1TokenReview(
            spec=kube_client.V1TokenReviewSpec(token="t"),
            status=kube_client.V1TokenReviewStatus(authenticated=True, audiences=[AUDIENCE]),
        )


def test_a_control_plane_outage_does_not_take_reviewed_tokens_away() -> None:
    now = [0.0]
    reviewer = TokenReviewer(kube_client.ApiClient(), AUDIENCE, lambda: now[0])
    api = FlakyAuthApi()
    reviewer._api = api  # type: ignore[assignment]
    assert reviewer.review("t")["authenticated"] is True
    api.mode = "down"
    now[0] = REVIEW_CACHE_S + 1  # due for a new review, and the API server is away
    assert reviewer.review("t")["authenticated"] is True
    with pytest.raises(OSError):
        reviewer.review("never-seen")
    api.mode = "forbidden"  # an answer, not an outage: no fallback
    with pytest.raises(kube_client.ApiException):
        reviewer.review("t")
    api.mode = "down"
    now[0] = OUTAGE_GRACE_S + 1
    with pytest.raises(OSError):
        reviewer.review("t")
