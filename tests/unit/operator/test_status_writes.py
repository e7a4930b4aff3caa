"""The Deployment event handler's status writes, with the API server's answers as the client
raises them (no cluster: the integration tests drive the same handler against a real one)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from capinfer_operator import handlers
from capinfer_operator.kube import Applier
from capinfer_operator.replicabook import ReplicaBook


class FlakyStatusApi(Applier):
    """An applier whose status writes fail ``failures`` times, then are recorded."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.written: list[dict[str, Any]] = []

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], concern: str) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.written.append({"concern": concern, **status})


def deployment(replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "ns", "generation": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
        },
    }


def owner(replicas: int) -> dict[str, Any]:
    """The owner as the operator's index keeps it."""
    body = {
        "metadata": {"name": "m", "namespace": "ns", "generation": 3},
        "spec": {"replicas": replicas},
        "status": {},
    }
    return handlers.inferences(namespace="ns", name="m", body=kopf.Body(body))[("ns", "m")]


async def changed(memo: kopf.Memo, body: dict[str, Any], replicas: int) -> None:
    await handlers.deployment_changed(
        type="MODIFIED",
        body=kopf.Body(body),
        labels={handlers.OWNER_LABEL: "m"},
        namespace="ns",
        memo=memo,
        logger=logging.getLogger("test"),
        inferences={("ns", "m"): [owner(replicas)]},
    )


@pytest.fixture
def memo_with(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(handlers, "RETRY_DELAY_S", 0)
    pools: list[ThreadPoolExecutor] = []

    def make(api: Applier) -> kopf.Memo:
        memo = kopf.Memo()
        memo["applier"] = api
        memo["replica_book"] = ReplicaBook()
        memo["pools"] = {"status": (pool := ThreadPoolExecutor(2))}
        pools.append(pool)
        return memo

    yield make
    for pool in pools:
        pool.shutdown()


async def test_a_failed_write_from_an_event_is_retried_until_it_lands(memo_with: Any) -> None:
    unavailable = ApiException(status=503, reason="Service Unavailable")
    api = FlakyStatusApi([unavailable, ConnectionResetError("reset"), unavailable])
    await asyncio.wait_for(changed(memo_with(api), deployment(1, 1), replicas=1), timeout=30)
    (written,) = api.written
    assert (written["concern"], written["replicas"], written["readyReplicas"]) == ("replicas", 1, 1)
    assert written["conditions"][0]["reason"] == "PodsReady"


async def test_an_unchanged_state_is_written_once(memo_with: Any) -> None:
    api = FlakyStatusApi([])
    memo = memo_with(api)
    await changed(memo, deployment(2, 1), replicas=2)
    await changed(memo, deployment(2, 1), replicas=2)
    await changed(memo, deployment(2, 2), replicas=2)
    assert [w["readyReplicas"] for w in api.written] == [1, 2]


async def test_an_object_gone_meanwhile_ends_the_retries(memo_with: Any) -> None:
    api = FlakyStatusApi([ApiException(status=503), ApiException(status=404)])
    await asyncio.wait_for(changed(memo_with(api), deployment(1, 1), replicas=1), timeout=30)
    assert api.written == []
