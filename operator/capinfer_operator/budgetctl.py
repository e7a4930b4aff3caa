"""kopf handlers for PowerBudget: list, hand to :mod:`capinfer_operator.budget`, apply.

One daemon per PowerBudget runs a pass (:func:`enforce_once`) whenever something it depends
on changed and at least every :data:`BUDGET_PERIOD_S`:

- its own spec changed (a new generation);
- any PowerCappedInference changed (a sidecar reported, confirming a cap or publishing a
  curve; an object or its pods came or went): the operator's PowerCappedInference event
  handler sets every budget's trigger;
- the period passed (a node relabelled, a pod that vanished without its sidecar's word).

Passes of one budget are at least :data:`MIN_PASS_GAP_S` apart: a hundred sidecars report
every few seconds, and one pass serves them all.

Each pass lists what it needs (the objects, capinfer's pods, the selected nodes or
namespaces, the live budgets) - the API server does the label matching - then applies the
allocations, under the field manager ``capinfer-budget/<budget>``, to the ``status.pods[]``
entries of the objects whose entries changed, then the budget's status under
``capinfer-budget``. Deleting a budget applies empty lists for its field manager: its fields
go, and the pods are back on their objects' own caps.

Errors: an API error or an unreachable API server is retried after
:data:`RETRY_DELAY_S` (after :data:`FORBIDDEN_RETRY_DELAY_S` for a refusal by RBAC), with
``Enforced=False`` and reason ``WriteFailed`` when the status can still be written; the
allocations written last stay in force meanwhile. A spec the controller cannot honour sets
``Satisfiable=False`` with reason ``InvalidSpec`` and waits for the next generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from capinfer_core import CapLedger
from capinfer_operator.budget import (
    MANAGED_PODS,
    BudgetPlan,
    BudgetSpec,
    BudgetSpecError,
    Membership,
    allocation_entries,
    budget_status,
    member_pods,
    parse_budget,
    plan_budget,
    removal_entries,
)
from capinfer_operator.builders import GROUP, KIND, PLURAL, VERSION
from capinfer_operator.handlers import BUDGET_TRIGGERS as TRIGGERS
from capinfer_operator.handlers import in_pool
from capinfer_operator.kube import APPLY, REQUEST_TIMEOUT_S, api_message, is_transient
from capinfer_operator.status import condition, updated_conditions, without_time

BUDGET_PLURAL = "powerbudgets"
BUDGET_KIND = "PowerBudget"
FIELD_MANAGER = "capinfer-budget"
BUDGET_PERIOD_S = 10.0
MIN_PASS_GAP_S = 0.5
RETRY_DELAY_S = 5.0
FORBIDDEN_RETRY_DELAY_S = 60.0
STATUS_REFRESH_S = 5.0
"""Least time between two status writes that change only measured numbers."""

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def field_manager_for(budget_name: str) -> str:
    """One field manager per budget: each owns only the fields it wrote."""
    return f"{FIELD_MANAGER}/{budget_name}"[:128]


# -- the API ------------------------------------------------------------------------------------
class BudgetApi:
    """The reads and writes of one pass, blocking (run on a thread pool)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    def _items(self, response: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = response["items"]
        return items

    def inferences(self, selector: str = "") -> list[dict[str, Any]]:
        return self._items(
            self._custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, label_selector=selector,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        )  # fmt: skip

    def budget_names(self) -> set[str]:
        found = self._custom.list_cluster_custom_object(
            GROUP, VERSION, BUDGET_PLURAL, _request_timeout=REQUEST_TIMEOUT_S
        )
        return {
            b["metadata"]["name"]
            for b in self._items(found)
            if not b["metadata"].get("deletionTimestamp")
        }

    def pods(self) -> list[dict[str, Any]]:
        found = self._core.list_pod_for_all_namespaces(
            label_selector=MANAGED_PODS, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return self._items(_json(found))

    def node_names(self, selector: str) -> set[str]:
        found = self._core.list_node(
            label_selector=selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return {n["metadata"]["name"] for n in self._items(_json(found))}

    def namespace_names(self, selector: str) -> set[str]:
        found = self._core.list_namespace(
            label_selector=selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return {n["metadata"]["name"] for n in self._items(_json(found))}

    def apply_entries(
        self, budget_name: str, namespace: str, name: str, entries: list[dict[str, Any]]
    ) -> None:
        """Apply this budget's fields of the object's pod entries. Not forced: a field another
        budget owns is a conflict to report, not to take."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": {"pods": entries},
        }
        response: Any = self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body,
            field_manager=field_manager_for(budget_name), _content_type=APPLY,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        response.read()

    def apply_status(self, budget_name: str, status: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": BUDGET_KIND,
            "metadata": {"name": budget_name},
            "status": status,
        }
        response: Any = self._custom.patch_cluster_custom_object_status(
            GROUP, VERSION, BUDGET_PLURAL, budget_name, body,
            field_manager=FIELD_MANAGER, force=True, _content_type=APPLY,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        response.read()


def _json(response: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(response.data)
    return loaded


# -- one pass -----------------------------------------------------------------------------------
def select(api: BudgetApi, budget: BudgetSpec) -> tuple[Membership, list[dict[str, Any]]]:
    """The member pods, and every object (for the entries this budget must clean up)."""
    inferences = api.inferences()
    live = api.budget_names()
    pods = api.pods()
    if budget.kind == "Rack":
        nodes = api.node_names(budget.node_selector or "")
        membership = member_pods(budget, pods, inferences, node_names=nodes, live_budgets=live)
    else:
        selected = api.inferences(budget.selector or "")
        namespaces = (
            None
            if budget.namespace_selector is None
            else api.namespace_names(budget.namespace_selector)
        )
        chosen = {
            (i["metadata"]["namespace"], i["metadata"]["name"])
            for i in selected
            if namespaces is None or i["metadata"]["namespace"] in namespaces
        }
        membership = member_pods(
            budget, pods, inferences, selected_inferences=chosen, live_budgets=live
        )
    return membership, inferences


def write_allocations(
    api: BudgetApi,
    budget: BudgetSpec,
    membership: Membership,
    plan: BudgetPlan,
    inferences: list[dict[str, Any]],
) -> str | None:
    """Apply the changed entries, object by object; why some failed, None when none did.

    Decreases and removals go first: an object whose write fails keeps its pods on their
    old caps, and the transit rule already counts them there."""
    changes = allocation_entries(
        budget.name, membership.members, plan.publish, plan.generations, inferences
    )
    problems: list[str] = []

    def lowers(item: tuple[tuple[str, str], list[dict[str, Any]]]) -> bool:
        (namespace, _), entries = item
        return (
            any(
                plan.publish[f"{namespace}/{e['name']}"]
                < plan.published_before[f"{namespace}/{e['name']}"]
                for e in entries
            )
            or not entries
        )

    for (namespace, name), entries in sorted(changes.items(), key=lambda i: not lowers(i)):
        try:
            api.apply_entries(budget.name, namespace, name, entries)
        except ApiException as error:
            if error.status == 404:
                continue  # the object is gone, and its entries with it
            if error.status == 409:
                problems.append(f"{namespace}/{name}: another budget holds some of its pods"
                                f" ({api_message(error)})")  # fmt: skip
                continue
            if is_transient(error) or error.status in (401, 403):
                raise
            problems.append(f"{namespace}/{name}: {api_message(error)}")
    return "; ".join(problems) or None


class BudgetState:
    """What one budget's daemon remembers between passes (for events and rate limits)."""

    def __init__(self) -> None:
        self.written: list[Any] | None = None
        self.written_s = 0.0
        self.targets: dict[str, float] = {}
        self.satisfiable: bool | None = None
        self.ledger: CapLedger | None = None
        """What was published and confirmed; rebuilt from the entries after a restart."""


def _comparable(status: Mapping[str, Any]) -> list[Any]:
    """The status without what changes on every pass: times and measured numbers."""
    rows = [
        {k: v for k, v in row.items() if k not in ("capWatts", "powerWatts")}
        for row in status.get("allocations", [])
    ]
    conditions = [without_time(c) for c in status.get("conditions", [])]
    return [status.get("allocatedWatts"), status.get("members"), rows, conditions]


def enforce_once(
    api: BudgetApi,
    name: str,
    *,
    spec: Mapping[str, Any],
    generation: int,
    existing_conditions: list[dict[str, Any]],
    state: BudgetState,
) -> tuple[dict[str, Any], BudgetPlan | None]:
    """Select, plan, write the allocations and the status; answers the status written (or
    due) and the plan. Raises :class:`ApiException` (or a transport error) to retry."""
    budget = parse_budget(name, spec)
    membership, inferences = select(api, budget)
    plan = None
    if membership.members:
        plan, state.ledger = plan_budget(budget, membership.members, state.ledger)
    if plan is None:
        problem = _clean_up(api, name, inferences)
    else:
        problem = write_allocations(api, budget, membership, plan, inferences)
    status = budget_status(
        budget, generation=generation, membership=membership, plan=plan,
        existing_conditions=existing_conditions, now=now(), write_problem=problem,
    )  # fmt: skip
    comparable = _comparable(status)
    due = comparable != state.written or time.monotonic() - state.written_s >= STATUS_REFRESH_S
    if due:
        api.apply_status(name, status)
        state.written, state.written_s = comparable, time.monotonic()
    return status, plan


def _clean_up(api: BudgetApi, name: str, inferences: list[dict[str, Any]]) -> str | None:
    for namespace, inference in removal_entries(name, inferences):
        try:
            api.apply_entries(name, namespace, inference, [])
        except ApiException as error:
            if error.status != 404:
                raise
    return None


def invalid_status(
    name: str, generation: int, error: BudgetSpecError, existing: list[dict[str, Any]]
) -> dict[str, Any]:
    stamp = now()
    refused = [
        condition("Satisfiable", False, "InvalidSpec", str(error), generation=generation,
                  now=stamp),
        condition("Enforced", False, "InvalidSpec", "nothing allocated until the spec is fixed",
                  generation=generation, now=stamp),
    ]  # fmt: skip
    return {"observedGeneration": generation, "conditions": updated_conditions(existing, refused)}


# -- kopf ---------------------------------------------------------------------------------------
def _announce(body: kopf.Body, status: Mapping[str, Any], plan: BudgetPlan | None,
              state: BudgetState) -> None:  # fmt: skip
    """Events: a Warning when the minimums stop fitting, a Normal one when targets move."""
    satisfiable = next(
        (c for c in status.get("conditions", []) if c["type"] == "Satisfiable"), None
    )
    ok = satisfiable is not None and satisfiable["status"] == "True"
    if satisfiable is not None and not ok and state.satisfiable is not False:
        kopf.warn(body, reason=satisfiable["reason"], message=satisfiable["message"])
    state.satisfiable = ok
    if plan is None:
        state.targets = {}
        return
    targets = {k: round(v, 1) for k, v in plan.allocation.caps_watts.items()}
    if targets.keys() != state.targets.keys() or any(
        abs(targets[k] - state.targets[k]) >= 1.0 for k in targets
    ):
        kopf.event(body, type="Normal", reason="Allocated", message=plan.allocation.reason)
    state.targets = targets


@kopf.daemon(GROUP, VERSION, BUDGET_PLURAL, cancellation_backoff=10.0, cancellation_timeout=10.0)
async def run_budget(
    *,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """A pass now, then one per trigger or period, until the budget goes."""
    triggers: dict[str, asyncio.Event] = memo.setdefault(TRIGGERS, {})
    trigger = triggers.setdefault(name, asyncio.Event())
    state = BudgetState()
    api = BudgetApi(api_client(memo))
    stopping = asyncio.ensure_future(stopped.wait())
    try:
        while not stopped and not body.get("metadata", {}).get("deletionTimestamp"):
            trigger.clear()
            # ``body`` is live: each pass reads the newest spec.
            spec = dict(body.get("spec", {}))
            generation = int(body.get("metadata", {}).get("generation", 0))
            existing = [dict(c) for c in body.get("status", {}).get("conditions", [])]
            delay_s = await _pass(
                memo, api, name, body=body, spec=spec, generation=generation,
                existing=existing, state=state, logger=logger,
            )  # fmt: skip
            # The next pass: on a trigger, after the delay, or never (stopped: at once).
            woken = asyncio.ensure_future(trigger.wait())
            await asyncio.wait({woken, stopping}, timeout=delay_s,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            woken.cancel()
            if not stopping.done():
                await asyncio.wait({stopping}, timeout=MIN_PASS_GAP_S)
    finally:
        stopping.cancel()
        if triggers.get(name) is trigger:
            del triggers[name]


async def _pass(
    memo: kopf.Memo,
    api: BudgetApi,
    name: str,
    *,
    body: kopf.Body,
    spec: dict[str, Any],
    generation: int,
    existing: list[dict[str, Any]],
    state: BudgetState,
    logger: kopf.Logger,
) -> float:
    """One pass; answers how long to wait for a trigger before the next."""
    try:
        status, plan = await in_pool(
            memo, "budget", enforce_once, api, name, spec=spec, generation=generation,
            existing_conditions=existing, state=state,
        )  # fmt: skip
    except BudgetSpecError as error:
        logger.error("budget %s: %s", name, error)
        await _best_effort_status(memo, api, name, invalid_status(name, generation, error,
                                                                  existing), logger)  # fmt: skip
        return BUDGET_PERIOD_S
    except ApiException as error:
        forbidden = error.status in (401, 403)
        message = api_message(error) + ("; check the operator's ClusterRole" if forbidden else "")
        delay_s = FORBIDDEN_RETRY_DELAY_S if forbidden else RETRY_DELAY_S
        logger.warning("budget %s: %s; again in %.0f s", name, message, delay_s)
        failed = condition("Enforced", False, "WriteFailed", f"{message}; retrying",
                           generation=generation, now=now())  # fmt: skip
        update = {"conditions": updated_conditions(existing, [failed])}
        await _best_effort_status(memo, api, name, update, logger)
        return delay_s
    except kopf.TemporaryError as error:  # the API server out of reach (in_pool says so)
        logger.warning("budget %s: %s; again in %.0f s", name, error, RETRY_DELAY_S)
        return RETRY_DELAY_S
    _announce(body, status, plan, state)
    return BUDGET_PERIOD_S


async def _best_effort_status(
    memo: kopf.Memo, api: BudgetApi, name: str, status: dict[str, Any], logger: kopf.Logger
) -> None:
    try:
        await in_pool(memo, "budget", api.apply_status, name, status)
    except (ApiException, kopf.TemporaryError) as error:
        logger.debug("budget %s: the status could not say so either: %s", name, error)


@kopf.on.event(GROUP, VERSION, BUDGET_PLURAL)
def budget_changed(*, type: str, name: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """A new generation of a budget: its daemon runs a pass at once (status writes, which
    do not change the generation, wake nothing)."""
    seen: dict[str, int] = memo.setdefault("budget_generations", {})
    generation = int(meta.get("generation", 0))
    if type == "DELETED":
        seen.pop(name, None)
        return
    if seen.get(name) != generation:
        seen[name] = generation
        trigger = memo.get(TRIGGERS, {}).get(name)
        if trigger is not None:
            trigger.set()


@kopf.on.delete(GROUP, VERSION, BUDGET_PLURAL)
async def budget_deleted(*, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Remove this budget's fields from every pod entry: the pods go back to their objects'
    own caps. Retried until it is done (kopf keeps the finalizer meanwhile)."""
    if name in memo.get(TRIGGERS, {}):
        # Its daemon may still be in a pass that writes allocations: clean up after it.
        raise kopf.TemporaryError(f"budget {name}: waiting for its daemon to stop", delay=1)
    api = BudgetApi(api_client(memo))
    try:
        inferences = await in_pool(memo, "budget", api.inferences)
        await in_pool(memo, "budget", _clean_up, api, name, inferences)
    except ApiException as error:
        raise kopf.TemporaryError(
            f"removing budget {name}'s allocations: {api_message(error)}", delay=RETRY_DELAY_S
        ) from error
    logger.info("budget %s deleted: its allocations are removed", name)


def api_client(memo: kopf.Memo) -> client.ApiClient:
    found = memo.get("api_client")
    if not isinstance(found, client.ApiClient):
        raise kopf.TemporaryError("the Kubernetes client is not configured yet", delay=1)
    return found
