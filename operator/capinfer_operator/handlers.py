"""kopf handlers: parse, build, adopt, apply. The decisions live in the pure builders.

Handlers are synchronous on purpose: kopf runs them in its thread pool, so the blocking
official client never stalls the event loop.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from capinfer_operator.builders import (
    GROUP,
    PLURAL,
    VERSION,
    SpecError,
    Target,
    build_children,
)
from capinfer_operator.kube import Applier, is_transient
from capinfer_operator.status import aggregate_pods, condition, readiness, updated_conditions

SIDECAR_IMAGE_ENV = "CAPINFER_SIDECAR_IMAGE"
RETRY_DELAY_S = 5
MANAGED = {"app.kubernetes.io/managed-by": "capinfer"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def applier(memo: kopf.Memo) -> Applier:
    found = memo.get("applier")
    if not isinstance(found, Applier):
        raise kopf.TemporaryError("the Kubernetes client is not configured yet", delay=1)
    return found


@kopf.on.startup()
def configure(
    *, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    memo["applier"] = Applier(client.ApiClient())
    # Progress and the last-handled spec go into annotations: status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    logger.info("capinfer operator configured; default sidecar image %r",
                os.environ.get(SIDECAR_IMAGE_ENV, ""))  # fmt: skip


def _set_status(
    memo: kopf.Memo, namespace: str, name: str, status: dict[str, Any], concern: str
) -> None:
    try:
        applier(memo).apply_status(namespace, name, status, concern)
    except ApiException as error:
        if error.status == 404:
            return  # the object is gone; nothing to report on
        if is_transient(error):
            raise kopf.TemporaryError(
                f"status update: {error.reason}", delay=RETRY_DELAY_S
            ) from error
        raise


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
def reconcile(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    if namespace is None:
        raise kopf.PermanentError("PowerCappedInference is namespaced")
    generation = int(meta.get("generation", 0))
    target = Target(name=name, namespace=namespace)
    existing = list(status.get("conditions", []))
    try:
        children = build_children(target, spec, os.environ.get(SIDECAR_IMAGE_ENV, ""))
    except SpecError as error:
        ready = condition(
            "Ready", False, "InvalidSpec", str(error), generation=generation, now=now()
        )
        invalid = {
            "observedGeneration": generation,
            "conditions": updated_conditions(existing, [ready]),
        }
        _set_status(memo, namespace, name, invalid, "spec")
        kopf.warn(body, reason="InvalidSpec", message=str(error))
        raise kopf.PermanentError(str(error)) from error
    for child in children:
        kopf.adopt(child, owner=body)
        try:
            applier(memo).apply(child)
        except ApiException as error:
            what = f"{child['kind']} {child['metadata']['name']}"
            if is_transient(error):
                raise kopf.TemporaryError(
                    f"applying {what}: {error.reason}", delay=RETRY_DELAY_S
                ) from error
            raise kopf.PermanentError(f"applying {what}: {error.status} {error.reason}") from error
    counts, ready = readiness(
        applier(memo).read_deployment_status(namespace, target.child_name),
        int(spec.get("replicas", 1)),
        generation,
        now(),
    )
    selector = ",".join(f"{k}={v}" for k, v in target.selector().items())
    _set_status(
        memo,
        namespace,
        name,
        {
            "observedGeneration": generation,
            "selector": selector,
            **counts,
            "conditions": updated_conditions(existing, [ready]),
        },
        "spec",
    )
    logger.info("applied %s", ", ".join(f"{c['kind']}/{c['metadata']['name']}" for c in children))
    kopf.info(body, reason="Applied", message=f"{len(children)} children applied")


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(
    *,
    type: str,
    labels: kopf.Labels,
    status: kopf.Status,
    namespace: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """A managed Deployment moved: carry its replica counts to the owner's status."""
    owner = labels.get("capinfer.io/inference")
    if not owner or namespace is None or type == "DELETED":
        return
    custom = client.CustomObjectsApi()
    try:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, namespace, PLURAL, owner
        )
    except ApiException as error:
        if error.status == 404:
            return
        raise
    generation = int(obj["metadata"].get("generation", 0))
    desired = int(obj.get("spec", {}).get("replicas", 1))
    counts, ready = readiness(dict(status), desired, generation, now())
    current = obj.get("status", {})
    existing = list(current.get("conditions", []))
    updated = updated_conditions(existing, [ready])
    same_counts = all(current.get(k) == v for k, v in counts.items())
    if same_counts and _already_set(updated, existing):
        return
    _set_status(memo, namespace, owner, {**counts, "conditions": updated}, "replicas")
    logger.debug("%s: %s", owner, ready["message"])


@kopf.on.event(GROUP, VERSION, PLURAL)
def sidecar_reports(
    *,
    type: str,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """The sidecars wrote their entries: keep totals and CapMet/ClockControl current."""
    if type == "DELETED" or namespace is None:
        return
    generation = int(meta.get("generation", 0))
    cap_watts = float(spec.get("power", {}).get("capWatts", 0))
    fields, conditions = aggregate_pods(status.get("pods", []), cap_watts, generation, now())
    existing = list(status.get("conditions", []))
    updated = updated_conditions(existing, conditions)
    unchanged = all(status.get(k) == v for k, v in fields.items())
    if unchanged and _already_set(updated, existing):
        return  # nothing new: writing would only wake every watcher again
    _set_status(memo, namespace, name, {**fields, "conditions": updated}, "pods")


def _already_set(updated: list[dict[str, Any]], existing: list[dict[str, Any]]) -> bool:
    """Every updated condition is already there, apart from its transition time."""

    def strip(condition: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in condition.items() if k != "lastTransitionTime"}

    present = [strip(dict(c)) for c in existing]
    return all(strip(c) in present for c in updated)
