"""kopf handlers: parse, build, adopt, apply. The decisions live in the pure modules.

The blocking official client never runs on the event loop: every handler is a coroutine
that hands its API calls to one of four thread pools, each a FIFO queue of its own, so one
kind of slow work cannot hold back another under a burst of objects:

- ``pods``: what the pods need first, the ServiceAccount and the Deployment: under a burst,
  every object's Deployment goes out before any object's other writes;
- ``apply``: the sidecar's Role and RoleBinding, and the status a reconcile writes;
- ``service``: the Services, which the API server creates one at a time (it allocates each
  ClusterIP in turn): a few threads keep it busy, and a burst of them never holds a thread
  while other objects' Deployments wait;
- ``status``: the writes that carry a Deployment's state or the sidecars' reports into the
  status, so a queue of new objects never holds back a Ready that is already true.

The ``pods`` pool goes first: while any of its calls waits or runs, calls for the other
pools wait before they are queued (:class:`PodsFirst`), so under a burst the API server
spends itself on Deployments before anything else. A handler waiting for a thread is a
coroutine, not a held thread. Deletion needs no
handler: every child carries an owner reference, and the garbage collector removes them
with the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from capinfer_operator.builders import (
    GROUP,
    PLURAL,
    TEMPLATE_HASH_ANNOTATION,
    VERSION,
    Manifest,
    SpecError,
    Target,
    build_children,
    clock_control_enabled,
)
from capinfer_operator.changes import live_change_message, rolling_change_message
from capinfer_operator.kube import (
    Applier,
    api_message,
    is_transient,
    namespace_terminating,
)
from capinfer_operator.replicabook import ObjectKey, ReplicaBook, SpecSeen
from capinfer_operator.status import (
    DeploymentState,
    aggregate_pods,
    condition,
    conditions_already_set,
    latency_slo_status,
    numbers_due,
    removal_patch,
    stale_pods,
    updated_conditions,
    without_time,
)

SIDECAR_IMAGE_ENV = "CAPINFER_SIDECAR_IMAGE"
KOPF_DEFAULTS_ENV = "CAPINFER_KOPF_DEFAULTS"
"""Set to 1, the operator leaves kopf's and the client's tuning at their defaults: a
benchmark baseline (bench/operator), never a way to run it."""
PEERING_LIFETIME_ENV = "CAPINFER_PEERING_LIFETIME"
PEERING_LIFETIME_S = 15
"""How long a replica's keep-alive is valid (kopf's default is 60 s): the longest another
replica waits to take over after the active one died without a word."""

NODE_AGENT_ENV = "CAPINFER_NODE_AGENT_ADDRESS"
"""Where sidecars reach the node agent (the chart sets it when it installs the agent)."""


def render_children(target: Target, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The children, with the operator's own settings (never the object's) for images and
    the node agent."""
    return build_children(
        target,
        spec,
        os.environ.get(SIDECAR_IMAGE_ENV, ""),
        node_agent=os.environ.get(NODE_AGENT_ENV, ""),
    )


RETRY_DELAY_S = 5
POOL_THREADS = {"pods": 16, "apply": 8, "service": 8, "status": 8}
"""Threads per pool (see the module's docstring)."""
POOL_OF_CHILD = {
    "ServiceAccount": "pods",
    "Deployment": "pods",
    "Role": "apply",
    "RoleBinding": "apply",
    "Service": "service",
}
FORBIDDEN_RETRY_DELAY_S = 60
STATUS_RETRY_MAX_S = 60
MANAGED_BY = "app.kubernetes.io/managed-by=capinfer"
OWNER_LABEL = "capinfer.io/inference"

log = logging.getLogger(__name__)
Result = TypeVar("Result")


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
    configuration = client.Configuration.get_default_copy()
    tuned = os.environ.get(KOPF_DEFAULTS_ENV, "") not in ("1", "true")
    if tuned:
        # One kept-alive connection per thread that calls the API: one dropped from a full
        # pool costs a new TLS handshake, which dominated the operator's CPU under a burst.
        configuration.connection_pool_maxsize = sum(POOL_THREADS.values())
    memo["applier"] = Applier(client.ApiClient(configuration))
    memo["pools"] = {
        name: ThreadPoolExecutor(threads, thread_name_prefix=name)
        for name, threads in POOL_THREADS.items()
    }
    memo["replica_book"] = ReplicaBook()
    memo["pods_first"] = PodsFirst()
    # Progress and the last-handled spec go into annotations: status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.peering.lifetime = int(os.environ.get(PEERING_LIFETIME_ENV) or PEERING_LIFETIME_S)
    # Warnings and errors become Events; the Normal ones are posted on purpose below, not
    # one per handler run.
    settings.posting.level = logging.WARNING
    if tuned:
        tune(settings)
    else:
        logger.warning("%s is set: kopf and the client run on their default settings (a"
                       " benchmark baseline)", KOPF_DEFAULTS_ENV)  # fmt: skip
    logger.info("capinfer operator configured; default sidecar image %r",
                os.environ.get(SIDECAR_IMAGE_ENV, ""))  # fmt: skip


def tune(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for a burst of objects (bench/operator measures them against the
    defaults)."""
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Only the Deployments capinfer manages, filtered by the API server, not after the fact.
    settings.watching.label_selectors["apps", "deployments"] = MANAGED_BY


@kopf.on.cleanup()
def release(*, memo: kopf.Memo, **_: Any) -> None:
    for threads in memo.get("pools", {}).values():
        threads.shutdown(wait=False, cancel_futures=True)


def replica_book(memo: kopf.Memo) -> ReplicaBook:
    found = memo.get("replica_book")
    if not isinstance(found, ReplicaBook):
        raise kopf.TemporaryError("the replica book is not configured yet", delay=1)
    return found


class PodsFirst:
    """Calls for the ``pods`` pool in flight, and an event set while there are none.

    Used on the event loop only."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.in_flight += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()


async def in_pool(
    memo: kopf.Memo, pool: str, call: Callable[..., Result], *args: Any, **kwargs: Any
) -> Result:
    """Run a blocking call on one of the operator's thread pools, off the event loop; a
    transport error comes back as a :class:`kopf.TemporaryError`.

    In kopf's context (its settings, the handler's cause): kopf.event and kopf.adopt read
    them from context variables, which a plain executor does not carry over.
    """
    threads = memo.get("pools", {}).get(pool)
    if not isinstance(threads, ThreadPoolExecutor):
        raise kopf.TemporaryError(f"the {pool} pool is not configured yet", delay=1)
    first = memo.get("pods_first")
    if isinstance(first, PodsFirst) and pool != "pods":
        await first.idle.wait()
    counting = (
        first.counting()
        if isinstance(first, PodsFirst) and pool == "pods"
        else contextlib.nullcontext()
    )
    context = contextvars.copy_context()
    try:
        with counting:
            return await asyncio.get_running_loop().run_in_executor(
                threads, functools.partial(context.run, call, *args, **kwargs)
            )
    except (urllib3.exceptions.HTTPError, OSError) as error:
        # The API server is out of reach (restarting, a network cut): a retry soon, not
        # kopf's default backoff for an unknown error (a minute).
        raise kopf.TemporaryError(
            f"the API server is out of reach: {error}", delay=RETRY_DELAY_S
        ) from error


async def in_status_thread(memo: kopf.Memo, call: Callable[..., Result], *args: Any) -> Result:
    """A blocking status write on the status pool."""
    return await in_pool(memo, "status", call, *args)


# -- errors -----------------------------------------------------------------------------------
class ChildRejectedError(Exception):
    """The API server refused a child as rendered: retrying the same spec cannot help."""


class NamespaceGoingError(Exception):
    """The namespace is being deleted, the object with it: there is nothing left to do."""


def retry_or_reject(error: ApiException, doing: str) -> NoReturn:
    """Transient trouble and missing permissions retry later; anything else is a rejection."""
    if namespace_terminating(error):
        # The API server's words name the namespace: a log reader can tell this 403 apart.
        raise NamespaceGoingError(f"{doing}: {api_message(error)}") from error
    if is_transient(error):
        raise kopf.TemporaryError(f"{doing}: {api_message(error)}", delay=RETRY_DELAY_S) from error
    if error.status in (401, 403):
        # Someone may fix the operator's RBAC: keep trying, slowly, and say what is missing.
        raise kopf.TemporaryError(
            f"{doing}: not permitted ({api_message(error)}); check the operator's ClusterRole",
            delay=FORBIDDEN_RETRY_DELAY_S,
        ) from error
    raise ChildRejectedError(f"{doing}: {api_message(error)}") from error


def _set_status(
    memo: kopf.Memo, namespace: str, name: str, status: dict[str, Any], concern: str
) -> bool:
    """Apply status fields; False when there is no object left to report on."""
    try:
        applier(memo).apply_status(namespace, name, status, concern)
    except ApiException as error:
        if error.status == 404:
            return False  # the object is gone; nothing to report on
        try:
            retry_or_reject(error, "updating the status")
        except NamespaceGoingError as going:
            log.debug("%s/%s: %s", namespace, name, going)
            return False
    return True


def selector_of(key: ObjectKey) -> str:
    """The pods' label selector, as the scale subresource reports it."""
    namespace, name = key
    return ",".join(
        f"{k}={v}" for k, v in Target(name=name, namespace=namespace).selector().items()
    )


def publish_replicas(
    memo: kopf.Memo,
    key: ObjectKey,
    existing_conditions: list[dict[str, Any]],
    *,
    spec: SpecSeen | None = None,
    handled: bool = False,
    deployment: DeploymentState | None = None,
    from_watch: bool = False,
) -> None:
    """Record what the caller saw, then write the object's replica counts and Ready as the
    book now holds them (see :mod:`capinfer_operator.replicabook`)."""
    with replica_book(memo).holding(key) as record:
        if spec is not None:
            record.learn_spec(spec, handled=handled)
        if deployment is not None:
            record.learn_deployment(deployment, from_watch=from_watch)
        update = record.status_due(existing_conditions, now())
        if update is None:
            return
        namespace, name = key
        if _set_status(memo, namespace, name, update, "replicas"):
            record.mark_written(update)


def _refuse(
    memo: kopf.Memo,
    body: kopf.Body,
    *,
    generation: int,
    existing: list[dict[str, Any]],
    reason: str,
    message: str,
) -> NoReturn:
    """Ready=False with the reason, a Warning event, and no retries of this generation."""
    target = body["metadata"]
    key = (target["namespace"], target["name"])
    ready = condition("Ready", False, reason, message, generation=generation, now=now())
    _set_status(
        memo, *key, {"observedGeneration": generation, "selector": selector_of(key)}, "spec"
    )
    replicas = int(body.get("spec", {}).get("replicas", 1))
    refused = SpecSeen(generation=generation, replicas=replicas, refusal=ready)
    publish_replicas(memo, key, existing, spec=refused, handled=True)
    kopf.warn(body, reason=reason, message=message)
    raise kopf.PermanentError(message)


# -- reconciliation ---------------------------------------------------------------------------
InferenceKey = tuple[str, str]
NOT_APPLIED = ""
"""The template hash of a Deployment that carries none (not written by capinfer)."""


@kopf.index("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "capinfer"})
def deployment_templates(
    *, namespace: str | None, name: str, annotations: kopf.Annotations, **_: Any
) -> dict[InferenceKey, str]:
    """Each managed Deployment's template hash, from the watch: what reconcile compares a
    new template with, without a GET per object (kopf fills its indexes before any handler
    runs, so after a restart too)."""
    return {(namespace or "", name): str(annotations.get(TEMPLATE_HASH_ANNOTATION, NOT_APPLIED))}


def _template_before(index: kopf.Index[InferenceKey, str], target: Target) -> str | None:
    """The template hash of the Deployment as last seen, or None when there is none."""
    for found in index.get((target.namespace, target.child_name), []):
        return found
    return None


def apply_children(
    the_applier: Applier, owner: kopf.Body, children: list[Manifest]
) -> dict[str, dict[str, Any]]:
    """Adopt and apply each child in order; answer them as applied, by kind."""
    applied: dict[str, dict[str, Any]] = {}
    for child in children:
        kopf.adopt(child, owner=owner)
        try:
            applied[child["kind"]] = the_applier.apply(child)
        except ApiException as error:
            retry_or_reject(error, f"applying {child['kind']} {child['metadata']['name']}")
    return applied


def _announce(
    body: kopf.Body,
    old_hash: str | None,
    deployment: Manifest,
    old_spec: Mapping[str, Any] | None,
    new_spec: Mapping[str, Any],
) -> None:
    """Events for what a user should see: created, rolling out, changed live.

    ``old_hash``: the template hash of the Deployment before the apply, None if none was."""
    new_hash = deployment["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    if old_hash is None:
        kopf.event(body, type="Normal", reason="Created",
                   message="Deployment, Service and the sidecar's ServiceAccount, Role and"
                           " RoleBinding created")  # fmt: skip
    elif old_hash != new_hash:
        kopf.event(body, type="Normal", reason="RollingOut",
                   message=rolling_change_message(old_spec, new_spec))  # fmt: skip
    if old_spec is not None and (live := live_change_message(old_spec, new_spec)):
        kopf.event(body, type="Normal", reason="PowerChanged", message=live)


def _finish(
    memo: kopf.Memo,
    key: ObjectKey,
    *,
    generation: int,
    replicas: int,
    existing: list[dict[str, Any]],
    deployment: dict[str, Any],
) -> None:
    """The status of a handled generation: observedGeneration and selector, then replica
    counts and Ready from the apply's answer."""
    spec_fields = {"observedGeneration": generation, "selector": selector_of(key)}
    _set_status(memo, *key, spec_fields, "spec")
    publish_replicas(
        memo,
        key,
        existing,
        spec=SpecSeen(generation=generation, replicas=replicas),
        handled=True,
        deployment=DeploymentState.from_deployment(deployment),
    )


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    status: kopf.Status,
    reason: str,
    old: Any,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    if namespace is None:
        raise kopf.PermanentError("PowerCappedInference is namespaced")
    generation = int(meta.get("generation", 0))
    target = Target(name=name, namespace=namespace)
    existing = list(status.get("conditions", []))
    the_applier = applier(memo)
    refuse = functools.partial(
        in_pool, memo, "apply", _refuse, memo, body, generation=generation, existing=existing
    )
    try:
        children = render_children(target, spec)
    except SpecError as error:
        await refuse(reason="InvalidSpec", message=str(error))
    templates: kopf.Index[InferenceKey, str] = kwargs["deployment_templates"]  # kopf passes it
    old_hash = _template_before(templates, target)
    applied: dict[str, dict[str, Any]] = {}
    try:
        for pool in ("pods", "apply", "service"):
            stage = [c for c in children if POOL_OF_CHILD[c["kind"]] == pool]
            applied |= await in_pool(memo, pool, apply_children, the_applier, body, stage)
    except NamespaceGoingError as error:
        logger.debug("nothing to apply: %s", error)
        return
    except ChildRejectedError as error:
        await refuse(reason="ApplyRejected", message=str(error))
    # With field="spec", an update's ``old`` is the previous spec.
    old_spec = old if reason == kopf.Reason.UPDATE and isinstance(old, Mapping) else None
    rendered = next(c for c in children if c["kind"] == "Deployment")
    _announce(body, old_hash, rendered, old_spec, spec)
    await in_pool(
        memo, "apply", _finish, memo, (namespace, name), generation=generation,
        replicas=int(spec.get("replicas", 1)), existing=existing,
        deployment=applied["Deployment"],
    )  # fmt: skip
    logger.info("applied %s", ", ".join(f"{c['kind']}/{c['metadata']['name']}" for c in children))


# -- the Deployment moved ---------------------------------------------------------------------
@kopf.index(GROUP, VERSION, PLURAL)
def inferences(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[InferenceKey, dict[str, Any]]:
    """What a Deployment event needs of its owner, kept from the watch: no GET per event.

    Only those few fields, and no copies: each watch event brings a new body, and this
    runs for every event of every object."""
    metadata = body.get("metadata", {})
    return {
        (namespace or "", name): {
            "generation": metadata.get("generation", 0),
            "deleting": bool(metadata.get("deletionTimestamp")),
            "replicas": body.get("spec", {}).get("replicas", 1),
            "conditions": list(body.get("status", {}).get("conditions", [])),
        }
    }


def _owner(
    index: kopf.Index[InferenceKey, dict[str, Any]], key: InferenceKey
) -> dict[str, Any] | None:
    for found in index.get(key, []):
        return found
    return None


def _restore_if_owned(the_applier: Applier, namespace: str, name: str, logger: kopf.Logger) -> None:
    """Someone deleted the Deployment while its owner lives: apply the children again.

    The owner is read from the API, not the index: the index may not have heard yet that
    the owner is gone, and children of a gone owner would only be collected again.
    """
    try:
        owner = the_applier.read_inference(namespace, name)
    except ApiException as error:
        logger.warning("reading %s: %s", name, api_message(error))
        return
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    metadata = owner["metadata"]
    target = Target(name=metadata["name"], namespace=metadata["namespace"])
    try:
        children = render_children(target, owner["spec"])
        apply_children(the_applier, kopf.Body(owner), children)  # type: ignore[arg-type]
    except NamespaceGoingError as error:
        logger.debug("nothing to restore: %s", error)
        return
    except (SpecError, ChildRejectedError, kopf.TemporaryError) as error:
        logger.warning("could not recreate the children of %s: %s", target.name, error)
        return
    kopf.event(kopf.Body(owner),  # type: ignore[arg-type]
               type="Normal", reason="Recreated",
               message=f"Deployment {target.child_name} was deleted; created it again")  # fmt: skip


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "capinfer"})
async def deployment_changed(
    *,
    type: str,
    body: kopf.Body,
    labels: kopf.Labels,
    namespace: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """A managed Deployment moved: carry its replica counts to the owner's status."""
    owner_name = labels.get(OWNER_LABEL)
    if not owner_name or namespace is None:
        return
    the_applier = applier(memo)
    index: kopf.Index[InferenceKey, dict[str, Any]] = kwargs["inferences"]  # kopf passes it
    owner = _owner(index, (namespace, owner_name))
    if owner is None or owner["deleting"]:
        return  # the owner is going: the garbage collector takes its children
    if type == "DELETED":
        await in_status_thread(memo, _restore_if_owned, the_applier, namespace, owner_name, logger)
        return
    # The index's copy of the owner may be older than what reconcile last handled: the
    # book keeps whichever generation is newer.
    seen = SpecSeen(
        generation=int(owner["generation"]),
        replicas=int(owner["replicas"]),
    )
    existing = [dict(c) for c in owner["conditions"]]
    publish = functools.partial(
        publish_replicas, memo, (namespace, owner_name), existing, spec=seen,
        deployment=DeploymentState.from_deployment(body), from_watch=True,
    )  # fmt: skip
    # kopf never retries an event handler, and this event may be the Deployment's last: a
    # failed write is retried here until it lands or the object is gone (its record then
    # is forgotten and there is nothing left to write). Later events of this Deployment
    # wait meanwhile and are merged, so the order of writes is kept.
    for attempt in itertools.count():
        try:
            await in_status_thread(memo, publish)
            return
        except (kopf.TemporaryError, urllib3.exceptions.HTTPError, OSError) as error:
            delay_s = min(STATUS_RETRY_MAX_S, RETRY_DELAY_S * 2**attempt)
            logger.warning("writing the replica status of %s failed (%s); again in %.0f s",
                           owner_name, error, delay_s)  # fmt: skip
            await asyncio.sleep(delay_s)


# -- the sidecars reported --------------------------------------------------------------------
@kopf.on.event(GROUP, VERSION, PLURAL)
async def sidecar_reports(
    *,
    type: str,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """The sidecars wrote their entries: keep totals and CapMet/ClockControl current."""
    if namespace is None:
        return
    written: dict[ObjectKey, float] = memo.setdefault("numbers_written_s", {})
    # What was last written per object, transition times aside: an event that comes before
    # our own write's event still shows the old status, and must not bring the same write.
    sent: dict[ObjectKey, list[Any]] = memo.setdefault("pods_status_sent", {})
    if type == "DELETED":
        replica_book(memo).forget((namespace, name))
        written.pop((namespace, name), None)
        sent.pop((namespace, name), None)
        return
    if meta.get("deletionTimestamp"):
        return
    if "observedGeneration" not in status:
        # Not handled yet: its first reconcile writes observedGeneration, and that write's
        # event brings it here. Under a burst, a write now would queue in front of the
        # object's own Deployment.
        return
    pods = [dict(p) for p in status.get("pods", [])]
    if stale := stale_pods(pods, datetime.now(UTC)):
        patch = removal_patch(pods, stale)
        try:
            await in_status_thread(memo, applier(memo).patch_status, namespace, name, patch)
        except ApiException as error:
            # 422: the list changed meanwhile (the guarded patch refused); the next event
            # brings the new list.
            logger.debug("pruning %s: %s", stale, api_message(error))
            return
        logger.info("removed the entries of pods gone silent: %s", ", ".join(stale))
        return  # the patch brings a new event with the pruned list
    generation = int(meta.get("generation", 0))
    cap_watts = float(spec.get("power", {}).get("capWatts", 0))
    fields, conditions = aggregate_pods(
        pods, cap_watts, generation, now(), clock_control_wanted=clock_control_enabled(spec)
    )
    slo_ms = (spec.get("latencySLO") or {}).get("p99Ms")
    slo_fields, slo_conditions = latency_slo_status(
        pods, None if slo_ms is None else float(slo_ms), generation, now()
    )
    fields.update(slo_fields)
    conditions.extend(slo_conditions)
    existing = list(status.get("conditions", []))
    updated = updated_conditions(existing, conditions)
    # Per object; only this coroutine, on the event loop, reads and writes it.
    written_s = written.get((namespace, name))
    since_s = None if written_s is None else time.monotonic() - written_s
    if not numbers_due(status, fields, not conditions_already_set(updated, existing), since_s):
        return  # nothing new (or only numbers, written moments ago)
    update = {**fields, "conditions": updated}
    unchanged = [fields, [without_time(c) for c in updated]]
    if sent.get((namespace, name)) == unchanged:
        return
    written[(namespace, name)] = time.monotonic()
    if await in_status_thread(memo, _set_status, memo, namespace, name, update, "pods"):
        sent[(namespace, name)] = unchanged
