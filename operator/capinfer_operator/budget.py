"""Pure budget logic: which pods a PowerBudget governs, what to publish to them, its status.

The budget controller (:mod:`capinfer_operator.budgetctl`) lists what it needs from the API
server and hands plain dicts here; nothing in this module performs I/O. One pass:

1. :func:`parse_budget` reads the spec (selectors become the API server's label-selector
   strings, so the server does the matching);
2. :func:`member_pods` picks the member pods from the listed pods and objects, and the
   pods another budget already governs;
3. :func:`plan_budget` builds a :class:`~capinfer_core.BudgetMember` per pod (its curve from
   the sidecar's status entry), calls :func:`~capinfer_core.allocate` for the targets and
   :func:`~capinfer_core.next_caps` (through a :class:`~capinfer_core.CapLedger`, which
   remembers what was published and confirmed) for what may be published now without the
   budget being exceeded in transit;
4. :func:`allocation_entries` and :func:`budget_status` turn the plan into the status
   entries to apply on each PowerCappedInference and the PowerBudget's own status.

Members are pods, keyed ``namespace/pod``: each pod has its own sidecar, curve and cap, and a
rack budget may hold some pods of an object and not others.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from capinfer_core import (
    Allocation,
    BudgetMember,
    CapLedger,
    SplitPolicy,
    ThroughputCurve,
    allocate,
    counted_watts,
)
from capinfer_core.curve import CurveError
from capinfer_operator.status import Condition, condition, updated_conditions

OWNER_LABEL = "capinfer.io/inference"
MANAGED_PODS = "app.kubernetes.io/managed-by=capinfer,app.kubernetes.io/component=inference"
"""The label selector of every pod capinfer runs Triton and a sidecar in."""
ALLOCATION_FIELD = "allocatedCapWatts"
BUDGET_FIELD = "budget"
GENERATION_FIELD = "allocationGeneration"
"""Numbers each cap a budget publishes to a pod (written with it)."""
CONFIRMED_GENERATION_FIELD = "allocationGenerationInForce"
"""The generation whose cap the pod's sidecar runs under (written by the sidecar)."""
OVER_BUDGET_FACTOR = 1.05
"""Measured power above the budget by more than this (the sidecars report sampled peaks)
says the caps are not holding."""
DEFAULT_MIN_WATTS_PER_GPU = 1.0
"""The floor when a budget names none: the lowest cap the API accepts. A budget that knows
its GPUs sets minWattsPerGpu to the least a GPU does useful work at."""

Kind = Literal["Rack", "Service"]


class BudgetSpecError(ValueError):
    """A spec the schema let through but the controller cannot honour; names the field."""


# -- the spec -----------------------------------------------------------------------------------
def label_selector(raw: Mapping[str, Any], field_path: str) -> str:
    """A ``LabelSelector`` (matchLabels, matchExpressions) as the API server's selector string.

    An empty selector is the empty string: it matches everything.
    """
    terms = [f"{key}={value}" for key, value in sorted((raw.get("matchLabels") or {}).items())]
    for index, expression in enumerate(raw.get("matchExpressions") or []):
        key, operator = expression.get("key"), expression.get("operator")
        values = sorted(expression.get("values") or [])
        where = f"{field_path}.matchExpressions[{index}]"
        if operator in ("In", "NotIn"):
            if not values:
                raise BudgetSpecError(f"{where}.values: required for {operator}")
            terms.append(f"{key} {operator.lower()} ({','.join(values)})")
        elif operator == "Exists":
            terms.append(f"{key}")
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            raise BudgetSpecError(f"{where}.operator: unknown operator {operator!r}")
    return ",".join(terms)


@dataclass(frozen=True)
class MemberBounds:
    """Per-GPU bounds and priority; None: not set here (the defaults or the built-in apply)."""

    min_watts_per_gpu: float | None = None
    max_watts_per_gpu: float | None = None
    priority: int | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> MemberBounds:
        def number(key: str) -> float | None:
            value = raw.get(key)
            return None if value is None else float(value)

        priority = raw.get("priority")
        return cls(number("minWattsPerGpu"), number("maxWattsPerGpu"),
                   None if priority is None else int(priority))  # fmt: skip

    def over(self, defaults: MemberBounds) -> MemberBounds:
        """These bounds, each unset one taken from ``defaults``."""
        return MemberBounds(
            self.min_watts_per_gpu if self.min_watts_per_gpu is not None
            else defaults.min_watts_per_gpu,
            self.max_watts_per_gpu if self.max_watts_per_gpu is not None
            else defaults.max_watts_per_gpu,
            self.priority if self.priority is not None else defaults.priority,
        )  # fmt: skip


@dataclass(frozen=True)
class BudgetSpec:
    name: str
    watts: float
    kind: Kind
    policy: SplitPolicy
    node_selector: str | None = None
    """Rack: the nodes, as a label-selector string."""
    selector: str | None = None
    """Service: the PowerCappedInference objects, as a label-selector string."""
    namespace_selector: str | None = None
    """Service: the namespaces (None: every namespace)."""
    defaults: MemberBounds = MemberBounds()
    overrides: Mapping[tuple[str, str], MemberBounds] = field(default_factory=dict)

    def bounds_for(self, namespace: str, inference: str) -> MemberBounds:
        override = self.overrides.get((namespace, inference))
        return override.over(self.defaults) if override is not None else self.defaults


def parse_budget(name: str, spec: Mapping[str, Any]) -> BudgetSpec:
    """The spec as the controller uses it; the schema has checked types and bounds."""
    watts = float(spec.get("watts", 0))
    if not watts > 0:
        raise BudgetSpecError(f"spec.watts: must be positive, got {watts:g}")
    try:
        policy = SplitPolicy(spec.get("policy", SplitPolicy.MAX_THROUGHPUT.value))
    except ValueError as error:
        raise BudgetSpecError(f"spec.policy: {error}") from error
    has_nodes, has_objects = "nodeSelector" in spec, "selector" in spec
    if has_nodes == has_objects:
        raise BudgetSpecError("exactly one of spec.nodeSelector and spec.selector must be set")
    overrides = {
        (str(m["namespace"]), str(m["name"])): MemberBounds.parse(m)
        for m in spec.get("members") or []
    }
    defaults = MemberBounds.parse(spec.get("defaults") or {})
    if has_nodes:
        return BudgetSpec(
            name=name, watts=watts, kind="Rack", policy=policy,
            node_selector=label_selector(spec["nodeSelector"], "spec.nodeSelector"),
            defaults=defaults, overrides=overrides,
        )  # fmt: skip
    namespaces = spec.get("namespaceSelector")
    return BudgetSpec(
        name=name, watts=watts, kind="Service", policy=policy,
        selector=label_selector(spec["selector"], "spec.selector"),
        namespace_selector=None
        if namespaces is None
        else label_selector(namespaces, "spec.namespaceSelector"),
        defaults=defaults, overrides=overrides,
    )  # fmt: skip


# -- membership ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberPod:
    """A pod the budget governs, with what its object declares and its sidecar reports."""

    namespace: str
    pod: str
    inference: str
    gpus: int
    declared_cap_watts: float
    """The object's spec.power.capWatts: the most the pod may ever be given."""
    entry: Mapping[str, Any]
    """The pod's ``status.pods[]`` entry; empty before its sidecar or a budget wrote one."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    def number(self, name: str) -> float | None:
        value = self.entry.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)


def pod_gpus(pod: Mapping[str, Any], inference: Mapping[str, Any]) -> int:
    """GPUs the pod holds: its containers' ``nvidia.com/gpu`` limits, else the object's
    gpusPerReplica, at least 1."""
    total = 0
    for container in pod.get("spec", {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        try:
            total += int(str(limits.get("nvidia.com/gpu", 0)))
        except ValueError:
            continue
    if total:
        return total
    return max(1, int(inference.get("spec", {}).get("gpusPerReplica", 1)))


def _running(pod: Mapping[str, Any]) -> bool:
    """Not finished: a pod that is pending, running or terminating may draw power."""
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Membership:
    members: list[MemberPod]
    elsewhere: dict[str, str]
    """Pods the selection picks that another live budget already governs, with its name."""


def member_pods(
    budget: BudgetSpec,
    pods: Iterable[Mapping[str, Any]],
    inferences: Iterable[Mapping[str, Any]],
    *,
    node_names: set[str] | None = None,
    selected_inferences: set[tuple[str, str]] | None = None,
    live_budgets: Collection[str] = (),
) -> Membership:
    """The member pods: on the selected nodes (rack) or of the selected objects (service).

    ``pods``: capinfer's pods (:data:`MANAGED_PODS`); ``inferences``: every object they may
    belong to. A pod whose entry names another budget in ``live_budgets`` stays with that
    budget (the older claim wins; it is reported, not fought over). A pod not yet scheduled
    is no rack member (it draws nothing yet); a service budget takes it at once, so its
    sidecar starts under the allocation.
    """
    by_key = {
        (i["metadata"]["namespace"], i["metadata"]["name"]): i
        for i in inferences
        if not i["metadata"].get("deletionTimestamp")
    }
    members: list[MemberPod] = []
    elsewhere: dict[str, str] = {}
    for pod in pods:
        metadata = pod["metadata"]
        namespace, owner = metadata["namespace"], (metadata.get("labels") or {}).get(OWNER_LABEL)
        inference = by_key.get((namespace, owner or ""))
        if inference is None or not _running(pod):
            continue
        if budget.kind == "Rack":
            if pod.get("spec", {}).get("nodeName") not in (node_names or set()):
                continue
        elif (namespace, owner) not in (selected_inferences or set()):
            continue
        name = metadata["name"]
        entries = inference.get("status", {}).get("pods") or []
        entry: Mapping[str, Any] = next((e for e in entries if e.get("name") == name), {})
        claimed_by = entry.get(BUDGET_FIELD)
        if claimed_by and claimed_by != budget.name and claimed_by in live_budgets:
            elsewhere[f"{namespace}/{name}"] = str(claimed_by)
            continue
        members.append(
            MemberPod(
                namespace=namespace,
                pod=name,
                inference=str(owner),
                gpus=pod_gpus(pod, inference),
                declared_cap_watts=float(inference["spec"].get("power", {}).get("capWatts", 0)),
                entry=entry,
            )
        )
    members.sort(key=lambda m: m.key)
    return Membership(members, elsewhere)


# -- the plan -----------------------------------------------------------------------------------
def member_curve(member: MemberPod) -> tuple[ThroughputCurve | None, str | None]:
    """The curve its sidecar published, or None and why it cannot be used."""
    raw = member.entry.get("curve")
    if raw is None:
        return None, None
    try:
        return ThroughputCurve.from_status(raw), None
    except CurveError as error:
        return None, f"{member.key}: unusable curve ({error})"


def budget_member(budget: BudgetSpec, member: MemberPod) -> tuple[BudgetMember, str | None]:
    """The allocator's view of a pod. Its maximum is the lower of the budget's bound and the
    object's own cap (a person lowering capWatts frees watts for the others); a minimum
    above that maximum comes down to it."""
    bounds = budget.bounds_for(member.namespace, member.inference)
    highest = member.declared_cap_watts
    if bounds.max_watts_per_gpu is not None:
        highest = min(highest, bounds.max_watts_per_gpu)
    lowest = bounds.min_watts_per_gpu
    lowest = DEFAULT_MIN_WATTS_PER_GPU if lowest is None else lowest
    curve, problem = member_curve(member)
    return (
        BudgetMember(
            key=member.key,
            gpus=member.gpus,
            min_watts=min(lowest, highest),
            max_watts=highest,
            priority=bounds.priority or 0,
            curve=curve,
        ),
        problem,
    )


def _floor_tenth(watts: float) -> float:
    """Down to 0.1 W: what is written never sums above what was allocated."""
    return math.floor(watts * 10 + 1e-9) / 10


@dataclass(frozen=True)
class BudgetPlan:
    allocation: Allocation
    """The targets."""
    publish: dict[str, float]
    """Per-GPU caps to write now (0: parked), on the way to the targets."""
    generations: dict[str, int]
    """The generation of each member's published cap (its sidecar echoes the one it runs)."""
    published_before: dict[str, float]
    held: dict[str, float]
    """The highest cap each member may be running under (:attr:`CapLedger.held`)."""
    settled: set[str]
    """Members whose sidecar confirmed the generation published to them now."""
    priorities: dict[str, int]
    problems: list[str]
    """Curves that could not be read (those members get the default share)."""

    def in_force(self, key: str) -> bool:
        return key in self.settled


def _generation(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def sync_ledger(budget: BudgetSpec, members: Sequence[MemberPod], ledger: CapLedger) -> None:
    """Bring the ledger to the current members and their sidecars' confirmations.

    A member new to the ledger (a new pod, or every pod after the operator started) starts
    from its entry: its published cap is this budget's allocation there (its object's cap
    when there is none), numbered on from the entry's generation; it is held at that
    allocation only when its sidecar confirmed that very generation, else at the higher of
    its object's cap and the cap its sidecar last reported (a sidecar never runs above its
    object's cap, and the report may predate a later one).
    """
    present = {m.key for m in members}
    for key in [k for k in ledger.gpus if k not in present]:
        ledger.remove(key)
    for m in members:
        written = m.number(ALLOCATION_FIELD)
        ours = m.entry.get(BUDGET_FIELD) == budget.name and written is not None
        generation = _generation(m.entry.get(GENERATION_FIELD)) if ours else None
        confirmed = _generation(m.entry.get(CONFIRMED_GENERATION_FIELD))
        if m.key not in ledger.gpus:
            reported = m.number("capWatts")
            if ours and written is not None and generation is not None and confirmed == generation:
                held = written
            else:
                held = max(m.declared_cap_watts, reported or 0.0)
            ledger.add(m.key, m.gpus, held)
            ledger.published[m.key] = written if ours and written is not None else held
            ledger.generation[m.key] = generation or 0
        elif ledger.gpus[m.key] != m.gpus:
            # A pod's GPUs do not change; a new pod of the same name starts over.
            ledger.remove(m.key)
            ledger.add(m.key, m.gpus, m.declared_cap_watts)
        if confirmed is not None:
            ledger.confirm(m.key, confirmed)


def plan_budget(
    budget: BudgetSpec, members: Sequence[MemberPod], ledger: CapLedger | None = None
) -> tuple[BudgetPlan, CapLedger]:
    """Targets by the budget's policy, and what the transit rule lets out now.

    ``ledger``: what this budget published and its sidecars confirmed so far (None: start
    from the members' entries, :func:`sync_ledger`); it is brought up to date, stepped
    towards the targets and returned with the plan.
    """
    pairs = [budget_member(budget, m) for m in members]
    allocation = allocate(budget.watts, [bm for bm, _ in pairs], budget.policy)
    if ledger is None:
        ledger = CapLedger({}, {})
    sync_ledger(budget, members, ledger)
    published_before = dict(ledger.published)
    targets = {key: _floor_tenth(cap) for key, cap in allocation.caps_watts.items()}
    publish = {key: _floor_tenth(cap) for key, cap in ledger.step(targets, budget.watts).items()}
    held = ledger.held
    settled = {
        m.key for m in members
        if _generation(m.entry.get(CONFIRMED_GENERATION_FIELD)) == ledger.generation[m.key]
        and held[m.key] <= ledger.published[m.key]
    }  # fmt: skip
    return (
        BudgetPlan(
            allocation=allocation,
            publish=publish,
            generations=dict(ledger.generation),
            published_before=published_before,
            held=held,
            settled=settled,
            priorities={bm.key: bm.priority for bm, _ in pairs},
            problems=[p for _, p in pairs if p is not None],
        ),
        ledger,
    )


# -- what to write ------------------------------------------------------------------------------
def allocation_entries(
    budget_name: str,
    members: Sequence[MemberPod],
    publish: Mapping[str, float],
    generations: Mapping[str, int],
    inferences: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per object, the ``status.pods[]`` entries this budget applies (its own fields only),
    for each object where they differ from what is there.

    An object where the budget no longer has members but whose entries still carry its
    fields gets an empty list: server-side apply then removes the fields (and an entry left
    with nothing else, the pod's sidecar having dropped its own, with them).
    """
    wanted: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in members:
        wanted.setdefault((m.namespace, m.inference), []).append(
            {
                "name": m.pod,
                ALLOCATION_FIELD: publish[m.key],
                GENERATION_FIELD: generations[m.key],
                BUDGET_FIELD: budget_name,
            }
        )
    changes: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for inference in inferences:
        metadata = inference["metadata"]
        key = (metadata["namespace"], metadata["name"])
        present = sorted(
            ({"name": e.get("name"), ALLOCATION_FIELD: e.get(ALLOCATION_FIELD),
              GENERATION_FIELD: e.get(GENERATION_FIELD), BUDGET_FIELD: budget_name}
             for e in inference.get("status", {}).get("pods") or []
             if e.get(BUDGET_FIELD) == budget_name),
            key=lambda e: str(e["name"]),
        )  # fmt: skip
        entries = sorted(wanted.pop(key, []), key=lambda e: str(e["name"]))
        if entries != present:
            changes[key] = entries
    changes.update(wanted)  # objects not listed (created meanwhile): written anyway
    return changes


def removal_entries(
    budget_name: str, inferences: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """Objects whose entries carry this budget's fields: where a deleted budget must apply
    an empty list."""
    return [
        (i["metadata"]["namespace"], i["metadata"]["name"])
        for i in inferences
        if any(e.get(BUDGET_FIELD) == budget_name for e in i.get("status", {}).get("pods") or [])
    ]


def _measured_watts(membership: Membership) -> float:
    gpus = {m.key: m.gpus for m in membership.members}
    measured = {
        m.key: power for m in membership.members if (power := m.number("powerWatts")) is not None
    }
    return _sum_watts(measured, gpus)


def _sum_watts(values: Mapping[str, float], gpus: Mapping[str, int]) -> float:
    return round(math.fsum(values[key] * gpus[key] for key in values), 1)


def budget_status(
    budget: BudgetSpec,
    *,
    generation: int,
    membership: Membership,
    plan: BudgetPlan | None,
    existing_conditions: Sequence[Mapping[str, Any]],
    now: str,
    write_problem: str | None = None,
) -> dict[str, Any]:
    """The PowerBudget's status: per-member allocations, totals and the two conditions.

    ``write_problem``: why some allocations could not be written (they are retried).
    """
    members = membership.members
    gpus = {m.key: m.gpus for m in members}
    measured = {m.key: power for m in members if (power := m.number("powerWatts")) is not None}
    measured_watts = _sum_watts(measured, gpus)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "kind": budget.kind,
        "members": len(members),
        "gpus": sum(gpus.values()),
        "measuredWatts": measured_watts,
        "headroomWatts": round(budget.watts - measured_watts, 1),
        "lastAllocation": now,
    }
    conditions = _conditions(
        budget, generation=generation, membership=membership, plan=plan, now=now,
        write_problem=write_problem,
    )  # fmt: skip
    status["conditions"] = updated_conditions(existing_conditions, conditions)
    if plan is None:
        status["allocatedWatts"] = 0.0
        status["allocations"] = []
        return status
    status["allocatedWatts"] = _sum_watts(plan.publish, gpus)
    cut = set(plan.allocation.cut_members)
    rows = []
    for m in members:
        row: dict[str, Any] = {
            "namespace": m.namespace,
            "pod": m.pod,
            "inference": m.inference,
            "gpus": m.gpus,
            "priority": plan.priorities[m.key],
            ALLOCATION_FIELD: plan.publish[m.key],
            "targetCapWatts": _floor_tenth(plan.allocation.caps_watts[m.key]),
            "curve": member_curve(m)[0] is not None,
            "cut": m.key in cut,
        }
        if (cap := m.number("capWatts")) is not None:
            row["capWatts"] = cap
        if m.key in measured:
            row["powerWatts"] = measured[m.key]
        rows.append(row)
    status["allocations"] = rows
    return status


def _conditions(
    budget: BudgetSpec,
    *,
    generation: int,
    membership: Membership,
    plan: BudgetPlan | None,
    now: str,
    write_problem: str | None,
) -> list[Condition]:
    def make(kind: str, ok: bool | None, reason: str, message: str) -> Condition:
        return condition(kind, ok, reason, message, generation=generation, now=now)

    elsewhere = "".join(
        f"; {pod} is governed by budget {other}" for pod, other in membership.elsewhere.items()
    )
    if plan is None:
        message = f"no pod matches this {budget.kind.lower()} budget{elsewhere}"
        return [make("Satisfiable", True, "NoMembers", message),
                make("Enforced", None, "NoMembers", message)]  # fmt: skip
    allocation = plan.allocation
    notes = "".join(f"; {problem}" for problem in plan.problems) + elsewhere
    if allocation.satisfiable:
        satisfiable = make("Satisfiable", True, "MinimumsFit", allocation.reason + notes)
    else:
        satisfiable = make("Satisfiable", False, "MinimumsExceedBudget", allocation.reason + notes)
    keys = sorted(plan.publish)
    behind = [k for k in keys if not plan.in_force(k)]
    moving = [k for k in keys if plan.publish[k] != _floor_tenth(allocation.caps_watts[k])]
    if write_problem is not None:
        enforced = make(
            "Enforced", False, "WriteFailed",
            f"{write_problem}; retrying (the last written allocations stay)",
        )  # fmt: skip
    elif allocation.cut_members:
        enforced = make(
            "Enforced", False, "MembersParked",
            f"parked at 0 W but still running on their lowest settings:"
            f" {', '.join(allocation.cut_members)}; raise spec.watts or scale them down",
        )  # fmt: skip
    elif behind or moving:
        waiting = ", ".join(behind) or "none"
        enforced = make(
            "Enforced", False, "InTransit",
            f"waiting for sidecars to confirm their new cap: {waiting};"
            f" {len(moving)} members still on the way to their target",
        )  # fmt: skip
    elif (measured := _measured_watts(membership)) > budget.watts * OVER_BUDGET_FACTOR:
        over = sorted(
            m.key for m in membership.members
            if (power := m.number("powerWatts")) is not None
            and power > plan.publish[m.key] * OVER_BUDGET_FACTOR
        )  # fmt: skip
        enforced = make(
            "Enforced", False, "OverBudget",
            f"every member holds its allocation, yet they draw {measured:.1f} W of"
            f" {budget.watts:g} W; over their caps: {', '.join(over) or 'none'} - a GPU cannot"
            " go below its floor: set minWattsPerGpu to it (the budget then parks members)",
        )  # fmt: skip
    else:
        gpus = {m.key: m.gpus for m in membership.members}
        counted = counted_watts(plan.publish, plan.held, gpus)
        enforced = make(
            "Enforced",
            True,
            "AllocationsInForce",
            f"every member holds its allocation: {counted:.1f} of {budget.watts:g} W",
        )
    return [satisfiable, enforced]
