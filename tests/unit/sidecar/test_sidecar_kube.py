"""The sidecar's Kubernetes side survives the API server going away.

Errors are the client's own: a real ``ApiClient`` aimed at a closed port raises urllib3's
``MaxRetryError``, and the other transport failures are built as urllib3 builds them.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import urllib3.exceptions
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from capinfer_sidecar import kube
from capinfer_sidecar.kube import ObjectRef, PowerSpecWatch, StatusWriter

REF = ObjectRef("ml", "resnet")


def closed_port_client() -> client.ApiClient:
    """An API client aimed at a local port nothing listens on: every call is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = 1
    return client.ApiClient(configuration)


def transport_errors() -> list[BaseException]:
    url = "/apis/capinfer.io/v1alpha1/namespaces/ml/powercappedinferences/resnet/status"
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return [
        urllib3.exceptions.MaxRetryError(None, url, reason=refused),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError(
            "Connection aborted.", http.client.RemoteDisconnected("closed without response")
        ),
        urllib3.exceptions.ReadTimeoutError(None, url, "Read timed out. (read timeout=15)"),  # type: ignore[arg-type]
        ConnectionResetError(104, "Connection reset by peer"),
        http.client.IncompleteRead(b"partial"),
        ApiException(status=503, reason="Service Unavailable"),
    ]


class ScriptedApi:
    """Stands in for ``CustomObjectsApi``: raises the scripted errors, then answers."""

    def __init__(self, errors: list[BaseException], obj: dict[str, Any] | None = None) -> None:
        self.errors = list(errors)
        self.obj = obj or {}
        self.calls = 0

    def _next(self) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.obj

    def patch_namespaced_custom_object_status(self, *_: Any, **__: Any) -> dict[str, Any]:
        return self._next()

    def get_namespaced_custom_object(self, *_: Any, **__: Any) -> dict[str, Any]:
        return self._next()

    def list_namespaced_custom_object(self, *_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("the fake watch never lists")


async def test_status_write_to_an_unreachable_api_server_returns_false() -> None:
    writer = StatusWriter(closed_port_client(), REF, "pod-a")
    assert await writer.write({"name": "pod-a"}) is False
    assert await writer.write({"name": "pod-a"}) is False
    assert writer.failures == 2
    await writer.remove()  # no exception either


async def test_status_write_survives_every_transport_error_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = StatusWriter(client.ApiClient(), REF, "pod-a")
    errors = transport_errors()
    writer._api = ScriptedApi(errors)  # type: ignore[assignment]
    caplog.set_level(logging.DEBUG, logger="capinfer_sidecar.kube")
    results = [await writer.write({"name": "pod-a"}) for _ in range(len(errors))]
    assert results == [False] * len(errors)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "MaxRetryError" in warnings[0].getMessage()
    assert await writer.write({"name": "pod-a"}) is True
    assert writer.failures == 0
    assert any("work again" in r.getMessage() for r in caplog.records)


async def test_status_write_raises_what_is_not_a_transport_error() -> None:
    writer = StatusWriter(client.ApiClient(), REF, "pod-a")
    writer._api = ScriptedApi([KeyError("a bug")])  # type: ignore[assignment]
    with pytest.raises(KeyError):
        await writer.write({"name": "pod-a"})


class FakeWatch:
    """``watch.Watch`` with scripted events; the stream then waits until stopped."""

    events: ClassVar[list[dict[str, Any]]] = []

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def stream(self, *_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        yield from self.events
        self._stopped.wait(5)

    def stop(self) -> None:
        self._stopped.set()


def obj(cap_watts: float) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": "7"}, "spec": {"power": {"capWatts": cap_watts}}}


async def first_items(watcher: PowerSpecWatch, count: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    changes = watcher.changes()
    try:
        async for power in changes:
            items.append(power)
            if len(items) == count:
                break
    finally:
        await changes.aclose()  # type: ignore[attr-defined]
    return items


async def test_watch_retries_transport_errors_then_follows_changes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kube, "RETRY_DELAY_S", 0.001)
    monkeypatch.setattr(kube, "TRANSPORT_RETRY_S", 0.001)
    monkeypatch.setattr(kube.watch, "Watch", FakeWatch)
    monkeypatch.setattr(FakeWatch, "events", [{"type": "MODIFIED", "object": obj(120)}])
    caplog.set_level(logging.INFO, logger="capinfer_sidecar.kube")
    watcher = PowerSpecWatch(client.ApiClient(), REF)
    api = ScriptedApi(transport_errors(), obj(150))
    watcher._api = api  # type: ignore[assignment]
    items = await asyncio.wait_for(first_items(watcher, 2), timeout=10)
    assert items == [{"capWatts": 150}, {"capWatts": 120}]
    assert api.calls == len(transport_errors()) + 1
    # Said as soon as the object is read again, not when the watch ends minutes later.
    recovered = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert recovered == [f"watch of ml/resnet works again after {len(transport_errors())} failures"]


async def test_watch_of_an_unreachable_api_server_keeps_trying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube, "RETRY_DELAY_S", 0.001)
    monkeypatch.setattr(kube, "TRANSPORT_RETRY_S", 0.001)
    watcher = PowerSpecWatch(closed_port_client(), REF)
    changes = watcher.changes()
    pending = asyncio.ensure_future(anext(changes))
    done, _ = await asyncio.wait([pending], timeout=0.5)
    assert not done  # nothing to yield, and nothing raised: still trying
    pending.cancel()
    watcher.stop()


async def test_watch_hands_an_unexpected_error_to_its_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watcher = PowerSpecWatch(client.ApiClient(), REF)
    watcher._api = ScriptedApi([ValueError("unparseable object")])  # type: ignore[assignment]
    with pytest.raises(ValueError, match="unparseable"):
        await asyncio.wait_for(first_items(watcher, 1), timeout=10)


def test_transport_failures_are_retried_at_once_and_answers_back_off() -> None:
    assert kube.retry_delay_s(0) == kube.TRANSPORT_RETRY_S == 0.5
    assert [kube.retry_delay_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert kube.retry_delay_s(100) == kube.MAX_RETRY_DELAY_S


class ExpiringWatch(FakeWatch):
    """A stream from a resourceVersion ends with 410 Gone, as a restarted API server's
    does when its watch cache starts after the object's version."""

    expired = 0

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        if "resource_version" in kwargs:
            ExpiringWatch.expired += 1
            raise ApiException(status=410, reason="Expired: too old resource version")
        yield from super().stream(*args, **kwargs)


async def test_a_watch_expired_410_is_read_again_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "RETRY_DELAY_S", 30.0)  # a backoff would outlast the test
    monkeypatch.setattr(kube.watch, "Watch", ExpiringWatch)
    monkeypatch.setattr(ExpiringWatch, "events", [{"type": "MODIFIED", "object": obj(120)}])
    watcher = PowerSpecWatch(client.ApiClient(), REF)
    api = ScriptedApi([], obj(150))
    watcher._api = api  # type: ignore[assignment]
    items = await asyncio.wait_for(first_items(watcher, 2), timeout=10)
    assert items == [{"capWatts": 150}, {"capWatts": 120}]
    # read, watch from its version (410), read again, watch from the current state
    assert ExpiringWatch.expired == 1 and api.calls == 2


def test_the_watch_carries_this_pods_budget_allocation_with_spec_power() -> None:
    found = {
        "spec": {"power": {"capWatts": 180}},
        "status": {"pods": [
            {"name": "other", "allocatedCapWatts": 50},
            {"name": "me", "allocatedCapWatts": 120, "allocationGeneration": 3, "budget": "r"},
        ]},
    }  # fmt: skip
    assert kube.power_version(found, "me") == {
        "capWatts": 180,
        "allocatedCapWatts": 120,
        "allocationGeneration": 3,
    }
    assert kube.power_version(found, "third") == {"capWatts": 180}
    assert kube.power_version(found, None) == {"capWatts": 180}
