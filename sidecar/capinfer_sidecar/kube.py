"""The sidecar's view of its own PowerCappedInference: watch ``spec.power``, write its status.

The official client is synchronous; its watch runs in a worker thread and hands each
new ``spec.power`` to the event loop, so a patched cap reaches the policy within one
watch event (milliseconds), not a polling period. The sidecar's Role allows exactly
get/list/watch on its own object (by name) and patch on its status.

Errors by kind: an answer that says no (:class:`ApiException`) and every connection-level
failure of the client (:data:`CONNECTION_ERRORS`: urllib3's ``MaxRetryError``,
``ProtocolError``, timeouts, ``OSError``...) are expected while the API server restarts or
the network is down. The watch retries a transport failure every 0.5 s and an answer
with a backoff up to 30 s (:func:`retry_delay_s`); a status write that meets them returns
False. Anything else is a bug: the watch hands it to the coroutine
iterating :meth:`PowerSpecWatch.changes`, which raises it, so the task's supervisor sees
it instead of a thread dying in a log line.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import urllib3.exceptions
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from capinfer_sidecar.settings import LATENCY_SLO_KEY

GROUP = "capinfer.io"
VERSION = "v1alpha1"
PLURAL = "powercappedinferences"
KIND = "PowerCappedInference"
WATCH_TIMEOUT_S = 300
RETRY_DELAY_S = 2.0
"""First delay before the watch tries again after the API server answered with an error;
it doubles per such answer in a row."""
MAX_RETRY_DELAY_S = 30.0
TRANSPORT_RETRY_S = 0.5
"""Delay before the watch tries again after a transport failure (nothing listening, a
reset connection, a timeout), however often it happened: a connection attempt costs an
absent API server nothing, and a cap patched as soon as the API server is back must reach
the sidecar within a second, not after a backoff grown during the outage."""
REQUEST_TIMEOUT_S = (5.0, 15.0)
"""(connect, read) for reads and status writes: a black-holed connection cannot hang them."""
WATCH_REQUEST_TIMEOUT_S = (5.0, WATCH_TIMEOUT_S + 30.0)
"""The server ends a watch after WATCH_TIMEOUT_S; a silent socket longer than that is dead."""

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,  # MaxRetryError, ProtocolError, timeouts, SSL errors...
    http.client.HTTPException,  # IncompleteRead, a bad status line
    OSError,  # refused, reset, unreachable, DNS
)
"""Failures of the transport, not answers of the API server: retry later."""

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


def describe_error(error: BaseException) -> str:
    """One line for the log: an API answer's status, or the transport failure's type and text."""
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


def retry_delay_s(answers_in_a_row: int) -> float:
    """How long the watch waits before it tries again.

    After ``answers_in_a_row`` errors the API server answered with (429, 5xx, 404...): a
    backoff that doubles from RETRY_DELAY_S up to MAX_RETRY_DELAY_S, so a busy server is
    left alone. After a transport failure (``answers_in_a_row`` 0): TRANSPORT_RETRY_S.
    """
    if answers_in_a_row <= 0:
        return TRANSPORT_RETRY_S
    return float(min(RETRY_DELAY_S * 2 ** (answers_in_a_row - 1), MAX_RETRY_DELAY_S))


def is_expired(error: BaseException) -> bool:
    """410 Gone: the watch asked for a resourceVersion the server no longer has."""
    return isinstance(error, ApiException) and error.status == 410


def is_expected(error: BaseException) -> bool:
    """An API answer or a transport failure: worth retrying, not a bug."""
    return isinstance(error, (ApiException, *CONNECTION_ERRORS))


def live_settings_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``spec.power``, with ``spec.latencySLO`` under its key: the settings the sidecar follows."""
    spec = obj.get("spec") or {}
    live = dict(spec.get("power") or {})
    if spec.get("latencySLO") is not None:
        live[LATENCY_SLO_KEY] = spec["latencySLO"]
    return live


class PowerSpecWatch:
    """Yields ``spec.power`` of one object each time it changes (and once at start).

    Each call of :meth:`changes` runs its own worker thread, so a supervisor can call it
    again after the iteration broke.
    """

    def __init__(self, api_client: client.ApiClient, ref: ObjectRef) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._ref = ref
        self._stop = threading.Event()

    def _read(self) -> dict[str, Any]:
        obj = self._api.get_namespaced_custom_object(
            GROUP,
            VERSION,
            self._ref.namespace,
            PLURAL,
            self._ref.name,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        return cast(dict[str, Any], obj)

    def _watch_once(
        self,
        stop: threading.Event,
        push: Callable[[dict[str, Any]], None],
        read_worked: Callable[[], None],
        *,
        from_read: bool = True,
    ) -> None:
        """Read the object, then follow its changes until the server ends the watch.

        The watch starts at the version read; with ``from_read`` False (that version was
        too old for the server), at the server's current state, which it sends first.
        """
        obj = self._read()
        read_worked()
        push(live_settings_of(obj))
        since: dict[str, Any] = (
            {"resource_version": obj["metadata"]["resourceVersion"]} if from_read else {}
        )
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        for event in stream.stream(  # type: ignore[no-untyped-call]
            self._api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self._ref.namespace,
            PLURAL,
            field_selector=f"metadata.name={self._ref.name}",
            timeout_seconds=WATCH_TIMEOUT_S,
            _request_timeout=WATCH_REQUEST_TIMEOUT_S,
            **since,
        ):
            if stop.is_set() or self._stop.is_set():
                stream.stop()  # type: ignore[no-untyped-call]
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                push(live_settings_of(event["object"]))

    def _pump(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[dict[str, Any] | BaseException],
        stop: threading.Event,
    ) -> None:
        """Worker thread: list-then-watch until stopped, pushing each new ``spec.power``.

        Expected errors are retried (:func:`retry_delay_s`; one warning per outage, and a
        line once the object is read again); an unexpected one is pushed to the queue and
        ends the thread.
        """
        last: dict[str, Any] | None = None
        failures = 0
        answers = 0  # errors the API server answered with, in a row

        def push(power: dict[str, Any]) -> None:
            nonlocal last
            if power != last:
                last = power
                loop.call_soon_threadsafe(queue.put_nowait, power)

        def stopped() -> bool:
            return stop.is_set() or self._stop.is_set()

        def read_worked() -> None:
            # The object was read: the API server is back, whatever ends this watch later.
            nonlocal failures, answers
            if failures:
                log.info(
                    "watch of %s/%s works again after %d failures",
                    self._ref.namespace, self._ref.name, failures,
                )  # fmt: skip
            failures = answers = 0

        expired = False  # the last attempt ended with 410 Gone
        while not stopped():
            try:
                self._watch_once(stop, push, read_worked, from_read=not expired)
            except Exception as error:
                if not is_expected(error):
                    loop.call_soon_threadsafe(queue.put_nowait, error)
                    return
                if is_expired(error) and not expired:
                    # The version read is older than the server's watch history (a restarted
                    # API server's cache starts at its own): at once, from its current state.
                    expired = True
                    log.info(
                        "watch of %s/%s: %s; watching again from the server's current state",
                        self._ref.namespace, self._ref.name, describe_error(error),
                    )  # fmt: skip
                    continue
                expired = is_expired(error)
                failures += 1
                answers = answers + 1 if isinstance(error, ApiException) else 0
                delay_s = retry_delay_s(answers)
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "watch of %s/%s failed (%s); retrying in %.1f s, quietly until it works",
                    self._ref.namespace, self._ref.name, describe_error(error), delay_s,
                )  # fmt: skip
                stop.wait(delay_s)
                continue
            expired = False  # the watch ran until the server ended it

    async def changes(self) -> AsyncIterator[dict[str, Any]]:
        """``spec.power`` now and after every change; raises what broke the watch thread."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        stop = threading.Event()
        worker = threading.Thread(
            target=self._pump, args=(loop, queue, stop), name="power-spec-watch", daemon=True
        )
        worker.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def stop(self) -> None:
        self._stop.set()


class StatusWriter:
    """Writes this pod's ``status.pods`` entry by server-side apply."""

    def __init__(self, api_client: client.ApiClient, ref: ObjectRef, pod_name: str) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._ref = ref
        self._field_manager = field_manager_for(pod_name)
        self.failures = 0
        """Writes that failed in a row (0 after a success)."""

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
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    async def write(self, entry: Mapping[str, Any]) -> bool:
        """Apply the entry; False when the API server refused it or could not be reached.

        The first failure of a run of them is a warning, the rest debug lines, and the
        first success after them says so: an outage is three log lines, not one per write.
        """
        try:
            await asyncio.to_thread(self._apply, pod_status_patch(self._ref, entry))
        except Exception as error:
            if not is_expected(error):
                raise
            self.failures += 1
            log.log(
                logging.WARNING if self.failures == 1 else logging.DEBUG,
                "status update failed (%s); the next one comes with the next report",
                describe_error(error),
            )
            return False
        if self.failures:
            log.info("status updates work again after %d failures", self.failures)
        self.failures = 0
        return True

    async def remove(self) -> None:
        """Drop this pod's entry (on shutdown): apply an empty list for our manager."""
        body = pod_status_patch(self._ref, {})
        body["status"]["pods"] = []
        try:
            await asyncio.to_thread(self._apply, body)
        except Exception as error:
            if not is_expected(error):
                raise
            log.warning("could not remove this pod's status entry: %s", describe_error(error))
