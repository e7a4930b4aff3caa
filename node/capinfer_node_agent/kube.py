"""The API server's side: TokenReview, and the pods of this node (list and watch).

Both are blocking (the ``kubernetes`` client); the agent calls them from threads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client as kube_client
from kubernetes import watch as kube_watch

from capinfer_node_agent.auth import PodInfo

log = logging.getLogger(__name__)

REVIEW_CACHE_S = 10.0
"""A token reviewed within this long is not reviewed again (the pod is checked each time)."""
OUTAGE_GRACE_S = 600.0
"""While the API server cannot be reached, a token it accepted this recently still counts
(the sidecar's token lives 10 minutes): an outage of the control plane must not take the
clocks from every pod. The pod is still checked against the last known pods of the node."""
WATCH_TIMEOUT_S = 60
RETRY_S = 2.0


class TokenReviewer:
    """TokenReview for the agent's audience, with a short cache keyed by the token's hash."""

    def __init__(
        self, api: kube_client.ApiClient, audience: str, monotonic: Callable[[], float]
    ) -> None:
        self._api = kube_client.AuthenticationV1Api(api)
        self._sanitize: Callable[[Any], Any] = api.sanitize_for_serialization
        self._audience = audience
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def review(self, token: str) -> dict[str, Any]:
        """The review's status (``authenticated``, ``user``, ``audiences``, ``error``)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < REVIEW_CACHE_S:
            return cached[1]
        body = kube_client.V1TokenReview(
            spec=kube_client.V1TokenReviewSpec(token=token, audiences=[self._audience])
        )
        try:
            review = self._api.create_token_review(body)
        except Exception as error:
            refused = isinstance(error, kube_client.ApiException) and (error.status or 0) < 500
            usable = cached is not None and cached[1].get("authenticated")
            if refused or not usable or cached is None or now - cached[0] >= OUTAGE_GRACE_S:
                raise
            log.warning("TokenReview failed (%s): using this token's last review", error)
            return cached[1]
        status = self._sanitize(review.status) or {}
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] < OUTAGE_GRACE_S}
        self._cache[key] = (now, status)
        return dict(status)


class NodePods:
    """The pods bound to one node, kept current by a list and watch in a thread."""

    def __init__(self, api: kube_client.ApiClient, node: str) -> None:
        self._core = kube_client.CoreV1Api(api)
        self._sanitize: Callable[[Any], Any] = api.sanitize_for_serialization
        self._selector = f"spec.nodeName={node}"
        self._pods: dict[str, PodInfo] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-pods", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def by_uid(self, uid: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(uid)

    def fetch(self, namespace: str, name: str) -> PodInfo | None:
        """One pod from the API server (a pod so new the watch has not brought it yet)."""
        try:
            pod = self._core.read_namespaced_pod(name, namespace)
        except kube_client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return PodInfo.from_manifest(self._sanitize(pod))

    def running_uids(self) -> set[str]:
        with self._lock:
            return {uid for uid, pod in self._pods.items() if pod.running}

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._list_and_watch()
            except Exception as error:
                log.warning("watching the pods of this node failed (%s); again in %.0f s",
                            error, RETRY_S)  # fmt: skip
                self._stopping.wait(RETRY_S)

    def _list_and_watch(self) -> None:
        listed = self._core.list_pod_for_all_namespaces(field_selector=self._selector)
        pods = {}
        for item in listed.items:
            pod = PodInfo.from_manifest(self._sanitize(item))
            pods[pod.uid] = pod
        with self._lock:
            self._pods = pods
        self.synced.set()
        stream = kube_watch.Watch().stream(  # type: ignore[no-untyped-call]
            self._core.list_pod_for_all_namespaces,
            field_selector=self._selector,
            resource_version=listed.metadata.resource_version if listed.metadata else None,
            timeout_seconds=WATCH_TIMEOUT_S,
        )
        for event in stream:
            if self._stopping.is_set():
                return
            if event["type"] == "ERROR":
                return  # e.g. 410 Gone: list again
            pod = PodInfo.from_manifest(self._sanitize(event["object"]))
            with self._lock:
                if event["type"] == "DELETED":
                    self._pods.pop(pod.uid, None)
                else:
                    self._pods[pod.uid] = pod


def wait_synced(pods: NodePods, timeout_s: float, monotonic: Callable[[], float]) -> bool:
    deadline = monotonic() + timeout_s
    while not pods.synced.wait(0.1):
        if monotonic() > deadline:
            return False
    return True
