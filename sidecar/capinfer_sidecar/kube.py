"""The sidecar's view of its own PowerCappedInference: watch ``spec.power``, write its status.

The official client is synchronous; its watch runs in a worker thread and hands each
new ``spec.power`` to the event loop, so a patched cap reaches the policy within one
watch event (milliseconds), not a polling period. The sidecar's Role allows exactly
get/list/watch on its own object (by name) and patch on its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

GROUP = "capinfer.io"
VERSION = "v1alpha1"
PLURAL = "powercappedinferences"
KIND = "PowerCappedInference"
WATCH_TIMEOUT_S = 300
RETRY_DELAY_S = 2.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str


def field_manager_for(pod_name: str) -> str:
    """One field manager per pod, so each sidecar owns only its own ``status.pods`` entry."""
    return f"capinfer-sidecar/{pod_name}"[:128]


def pod_status_patch(ref: ObjectRef, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The server-side-apply body that sets this pod's entry in ``status.pods``."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": ref.name, "namespace": ref.namespace},
        "status": {"pods": [dict(entry)]},
    }


class PowerSpecWatch:
    """Yields ``spec.power`` of one object each time it changes (and once at start)."""

    def __init__(self, api_client: client.ApiClient, ref: ObjectRef) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._ref = ref
        self._stop = threading.Event()

    def _read(self) -> dict[str, Any]:
        obj = self._api.get_namespaced_custom_object(
            GROUP, VERSION, self._ref.namespace, PLURAL, self._ref.name
        )
        return cast(dict[str, Any], obj)

    def _pump(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Worker thread: list-then-watch forever, pushing each new ``spec.power``."""
        last: dict[str, Any] | None = None

        def push(power: dict[str, Any]) -> None:
            nonlocal last
            if power != last:
                last = power
                loop.call_soon_threadsafe(queue.put_nowait, power)

        while not self._stop.is_set():
            try:
                obj = self._read()
                push(dict(obj.get("spec", {}).get("power", {})))
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self._ref.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={self._ref.name}",
                    resource_version=obj["metadata"]["resourceVersion"],
                    timeout_seconds=WATCH_TIMEOUT_S,
                ):
                    if self._stop.is_set():
                        stream.stop()  # type: ignore[no-untyped-call]
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        push(dict(event["object"].get("spec", {}).get("power", {})))
            except ApiException as error:
                log.warning(
                    "watch of %s/%s failed (%s %s); retrying in %.0f s",
                    self._ref.namespace, self._ref.name, error.status, error.reason,
                    RETRY_DELAY_S,
                )  # fmt: skip
                self._stop.wait(RETRY_DELAY_S)
            except Exception:  # the watch must outlive any transport hiccup
                log.exception("watch of %s/%s broke; retrying", self._ref.namespace, self._ref.name)
                self._stop.wait(RETRY_DELAY_S)

    async def changes(self) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        worker = threading.Thread(
            target=self._pump, args=(loop, queue), name="power-spec-watch", daemon=True
        )
        worker.start()
        try:
            while True:
                yield await queue.get()
        finally:
            self._stop.set()

    def stop(self) -> None:
        self._stop.set()


class StatusWriter:
    """Writes this pod's ``status.pods`` entry by server-side apply."""

    def __init__(self, api_client: client.ApiClient, ref: ObjectRef, pod_name: str) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._ref = ref
        self._field_manager = field_manager_for(pod_name)

    def _apply(self, body: dict[str, Any]) -> None:
        self._api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self._ref.namespace,
            PLURAL,
            self._ref.name,
            body,
            field_manager=self._field_manager,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    async def write(self, entry: Mapping[str, Any]) -> bool:
        """Apply the entry; False (and a warning) when the API server refused it."""
        try:
            await asyncio.to_thread(self._apply, pod_status_patch(self._ref, entry))
        except ApiException as error:
            log.warning("status update refused: %s %s", error.status, error.reason)
            return False
        return True

    async def remove(self) -> None:
        """Drop this pod's entry (on shutdown): apply an empty list for our manager."""
        body = pod_status_patch(self._ref, {})
        body["status"]["pods"] = []
        with contextlib.suppress(ApiException):
            await asyncio.to_thread(self._apply, body)
