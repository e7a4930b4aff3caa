"""Sidecar stand-ins and a transit checker for the budget controller's tests.

kwok runs no containers, so no sidecar writes the pods' status entries. The stand-ins do
what a sidecar does with the sidecar's own code: they read the object, take the cap in force
as the sidecar's follower does (``power_version`` then ``parse_power_spec``: the lower of
``spec.power.capWatts`` and the pod's allocation), and write the pod's entry with the
sidecar's ``StatusWriter`` (server-side apply, one field manager per pod), reporting that cap,
the allocation's generation it includes, a power under it and the object's throughput curve.
A pod that is gone has its entry removed as a stopping sidecar removes it. What they do not
do is control a GPU: the power they report is the cap times a fixed fraction, the curve a
fixed one per object.

The transit checker watches the objects and holds the controller to the transit rule at
every event: a pod's allocation may rise only while the watts counted (each member at the
higher of its allocation and the cap its sidecar confirmed) stay within the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from capinfer_sidecar.kube import ObjectRef, StatusWriter, power_version
from capinfer_sidecar.settings import parse_power_spec

GROUP, VERSION, PLURAL = "capinfer.io", "v1alpha1", "powercappedinferences"
POWER_FRACTION = 0.95
"""Stand-ins report this fraction of their cap (never above it)."""
REFRESH_S = 3.0
"""Stand-ins rewrite their entry at least this often, as a sidecar does."""


def running_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    found = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/managed-by=capinfer"
    )
    return [
        p for p in found.items
        if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
    ]  # fmt: skip


class SidecarStandIns:
    """One stand-in per Running pod of the namespace, in a background thread."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, curves: Mapping[str, dict[str, Any]]
    ) -> None:
        """``curves``: the curve (status form) each object's pods publish, by object name."""
        self._api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._namespace = namespace
        self._curves = dict(curves)
        self._stop = threading.Event()
        self._writers: dict[str, tuple[str, StatusWriter]] = {}
        self._written: dict[str, tuple[Any, float]] = {}
        self._thread = threading.Thread(target=self._run, name="sidecar-stand-ins", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> SidecarStandIns:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while not self._stop.is_set():
                try:
                    loop.run_until_complete(self._round())
                except Exception as error:  # reported by the test, not swallowed
                    self.errors.append(f"{type(error).__name__}: {error}")
                self._stop.wait(0.2)
            loop.run_until_complete(self._remove_all())
        finally:
            loop.close()

    async def _round(self) -> None:
        pods = running_pods(self._core, self._namespace)
        objects = {
            o["metadata"]["name"]: o
            for o in self._custom.list_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL
            )["items"]
        }
        alive = set()
        for pod in pods:
            owner = pod.metadata.labels.get("capinfer.io/inference")
            if owner not in objects:
                continue
            name = pod.metadata.name
            alive.add(name)
            if name not in self._writers:
                ref = ObjectRef(self._namespace, owner)
                self._writers[name] = (owner, StatusWriter(self._api_client, ref, name))
            spec = parse_power_spec(power_version(objects[owner], name))
            cap = spec.cap_watts
            report = (cap, self._curves.get(owner), spec.allocation_generation)
            last = self._written.get(name)
            if last is not None and last[0] == report and time.monotonic() - last[1] < REFRESH_S:
                continue
            entry: dict[str, Any] = {
                "name": name,
                "gpus": [f"GPU-{name}"],
                "capWatts": round(cap, 1),
                "powerWatts": round(cap * POWER_FRACTION, 1),
                "inferencesPerSecond": 100.0,
                "lastUpdate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if report[1] is not None:
                entry["curve"] = report[1]
            if spec.allocation_generation is not None:
                entry["allocationGenerationInForce"] = spec.allocation_generation
            if await self._writers[name][1].write(entry):
                self._written[name] = (report, time.monotonic())
        for gone in set(self._writers) - alive:
            await self._writers.pop(gone)[1].remove()
            self._written.pop(gone, None)

    async def _remove_all(self) -> None:
        for _, writer in self._writers.values():
            await writer.remove()
        self._writers.clear()


class TransitChecker:
    """Watches the namespace's objects; records every event at which an allocation rose
    while the counted watts went above the budget (:attr:`violations`)."""

    def __init__(self, api_client: client.ApiClient, namespace: str, budget: str) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._namespace = namespace
        self._budget = budget
        self.watts = math.inf
        """The budget now: lowered after a patch lands, raised before it is sent."""
        self.violations: list[str] = []
        self.rises = 0
        self._objects: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="transit-checker", daemon=True)

    def __enter__(self) -> TransitChecker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _members(self) -> Iterator[tuple[str, float, float, float]]:
        """(pod, published, confirmed, gpus) of every pod this budget holds."""
        for obj in self._objects.values():
            declared = float(obj["spec"]["power"]["capWatts"])
            for entry in obj.get("status", {}).get("pods") or []:
                if entry.get("budget") != self._budget:
                    continue
                published = float(entry.get("allocatedCapWatts", declared))
                confirmed = float(entry.get("capWatts", declared))
                yield entry["name"], published, confirmed, 1.0

    def _counted(self) -> tuple[float, dict[str, float]]:
        published = {}
        total = 0.0
        for name, allocation, confirmed, gpus in self._members():
            published[name] = allocation
            total += max(allocation, confirmed) * gpus
        return total, published

    def _run(self) -> None:
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        while not self._stop.is_set():
            with contextlib.suppress(ApiException):
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self._custom.list_namespaced_custom_object, GROUP, VERSION,
                    self._namespace, PLURAL, timeout_seconds=5,
                ):  # fmt: skip
                    if self._stop.is_set():
                        stream.stop()  # type: ignore[no-untyped-call]
                        return
                    self._on(event)

    def _on(self, event: Mapping[str, Any]) -> None:
        before, published_before = self._counted()
        obj = event["object"]
        name = obj["metadata"]["name"]
        if event["type"] == "DELETED":
            self._objects.pop(name, None)
        else:
            self._objects[name] = obj
        after, published_after = self._counted()
        rose = [
            pod
            for pod, watts in published_after.items()
            if pod in published_before and watts > published_before[pod] + 1e-6
        ]
        if rose:
            self.rises += 1
            if after > self.watts + 1e-6 and after > before + 1e-6:
                self.violations.append(
                    f"{', '.join(rose)} rose while {after:.1f} W counted > budget {self.watts:g} W"
                )
