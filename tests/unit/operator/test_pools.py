"""The operator's pools: what the pods need goes out before anything else."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import kopf
import pytest
import urllib3

from capinfer_operator import handlers


@pytest.fixture
def memo() -> Iterator[kopf.Memo]:
    found = kopf.Memo()
    found["pools"] = {name: ThreadPoolExecutor(2) for name in ("pods", "apply")}
    found["pods_first"] = handlers.PodsFirst()
    yield found
    for pool in found["pools"].values():
        pool.shutdown()


async def test_other_pools_wait_while_a_call_for_the_pods_is_in_flight(memo: kopf.Memo) -> None:
    release = threading.Event()
    order: list[str] = []

    def deployment() -> None:
        release.wait(5)
        order.append("deployment")

    def role() -> None:
        order.append("role")

    pods = asyncio.create_task(handlers.in_pool(memo, "pods", deployment))
    await asyncio.sleep(0.05)
    other = asyncio.create_task(handlers.in_pool(memo, "apply", role))
    await asyncio.sleep(0.1)
    assert order == [], "the apply pool ran while the pods pool was busy"
    release.set()
    await asyncio.gather(pods, other)
    assert order == ["deployment", "role"]
    assert memo["pods_first"].idle.is_set()


async def test_a_failed_call_for_the_pods_does_not_hold_the_others(memo: kopf.Memo) -> None:
    def unreachable() -> None:
        raise urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused")  # type: ignore[arg-type]

    with pytest.raises(kopf.TemporaryError, match="out of reach"):
        await handlers.in_pool(memo, "pods", unreachable)
    assert await asyncio.wait_for(handlers.in_pool(memo, "apply", lambda: 7), timeout=5) == 7
