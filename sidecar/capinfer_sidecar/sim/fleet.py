"""Fleet workloads: many simulated GPUs under one power budget, and their oracle split.

A fleet workload is a benchmark workload (:mod:`capinfer_sidecar.sim.workloads`) whose jobs
are the fleet's members, one GPU each, plus a ``fleet`` section::

    fleet:
      budget_watts: 3000              # the budget at t = 0, for the whole fleet
      budget_changes:                 # optional: a demand-response event and its end
        - {at_s: 80, watts: 1500}
        - {at_s: 160, watts: 3000}
      interval_s: 1                   # optional: how often the budget is split again
      reserve_fraction: 0.02          # optional: budget share kept back as headroom
      bounds:                         # per-GPU cap bounds, by profile set
        p40: {min_watts: 100, max_watts: 250}
        h100: {min_watts: 200, max_watts: 700}

The budget decides every member's cap, so a job of a fleet has no ``cap_watts`` or
``cap_changes``. The run itself is :func:`capinfer_sidecar.fleetsim.run_fleet`.

The oracle split (:func:`oracle_split`): for each stretch of constant budget and loads, the
best static (batch size, clock) pair of every member at once -- the one choice per member
whose peaks (with the jitter bound, as :mod:`capinfer_sidecar.sim.oracle`) sum within the
budget and whose summed throughput (the arrival rate at most, under Poisson load) is the
highest. Exact, by dynamic programming over whole watts. It switches instantly and never
reloads: an upper bound no controller reaches.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capinfer_sidecar.sim.config import PoissonLoad, RunConfig, SaturatingLoad
from capinfer_sidecar.sim.oracle import oracle_clock_levels
from capinfer_sidecar.sim.workloads import Workload, parse_workload
from capinfer_sidecar.sim.yamlread import Node, SpecError, load_yaml_file

FLEET_FIELDS = ("budget_watts", "budget_changes", "interval_s", "reserve_fraction", "bounds")
PLACEHOLDER_CAP_WATTS = 1.0e6
"""What a member's job config holds as its cap before the budget's first split."""


@dataclass(frozen=True)
class FleetMemberSpec:
    name: str
    config: RunConfig
    """The member's GPU, workload, load and seed; its cap comes from the budget's split."""
    min_watts: float
    max_watts: float
    priority: int = 0


@dataclass(frozen=True)
class BudgetChange:
    at_s: float
    watts: float


@dataclass(frozen=True)
class FleetConfig:
    members: tuple[FleetMemberSpec, ...]
    budget_watts: float
    duration_s: float
    budget_changes: tuple[BudgetChange, ...] = ()
    interval_s: float = 1.0
    """How often the controller splits the budget again."""
    confirm_samples: int = 5
    """Samples under a new cap before a member's sidecar confirms it."""
    reserve_fraction: float = 0.0
    """Share of the budget the controller keeps back: headroom for the members' own brief
    excursions over their caps, which a budget packed to the last watt cannot absorb."""

    def budget_at(self, at_s: float) -> float:
        budget = self.budget_watts
        for change in self.budget_changes:
            if change.at_s <= at_s:
                budget = change.watts
        return budget

    def budget_segments(self) -> list[tuple[float, float, float]]:
        """``(start, end, watts)`` of each stretch of constant budget."""
        starts = [(0.0, self.budget_watts)] + [(c.at_s, c.watts) for c in self.budget_changes]
        ends = [t for t, _ in starts[1:]] + [self.duration_s]
        return [(s, e, w) for (s, w), e in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class FleetWorkload:
    workload: Workload
    config: FleetConfig
    profiles: dict[str, str]
    """Member name -> profile set name."""


def is_fleet_workload(path: Path) -> bool:
    document = load_yaml_file(path)
    return isinstance(document, dict) and "fleet" in document


def load_fleet_workload(path: Path) -> FleetWorkload:
    return parse_fleet_workload(load_yaml_file(path), str(path), path.parent)


def parse_fleet_workload(
    document: object, source: str, base_dir: Path | None = None
) -> FleetWorkload:
    root = Node(document, "", source)
    fleet = root.required("fleet")
    fleet.reject_unknown(FLEET_FIELDS)
    for part in ("defaults", "jobs"):
        if not root.has(part):
            continue
        entries = root.child(part).elements() if part == "jobs" else [root.child(part)]
        for entry in entries:
            for field in ("cap_watts", "cap_changes"):
                if entry.has(field):
                    raise entry.child(field).error("the fleet's budget sets every member's cap")
    jobs = [{**job, "cap_watts": PLACEHOLDER_CAP_WATTS} for job in root.required("jobs").as_list()]
    rest: dict[str, Any] = {k: v for k, v in root.as_mapping().items() if k != "fleet"}
    workload = parse_workload({**rest, "jobs": jobs}, source, base_dir)
    durations = {job.config.duration_s for job in workload.jobs}
    if len(durations) != 1:
        raise root.child("jobs").error("every member of a fleet runs for the same duration_s")
    duration_s = durations.pop()
    bounds_node = fleet.required("bounds")
    bounds: dict[str, tuple[float, float]] = {}
    for name, node in bounds_node.items():
        node.reject_unknown(["min_watts", "max_watts"])
        low = node.required("min_watts").number(positive=True)
        high = node.required("max_watts").number(positive=True)
        if high < low:
            raise node.error(f"max_watts ({high:g}) is below min_watts ({low:g})")
        bounds[name] = (low, high)
    members = []
    for job in workload.jobs:
        if job.profile_name not in bounds:
            raise bounds_node.error(f"no bounds for profile {job.profile_name!r} (job {job.name})")
        low, high = bounds[job.profile_name]
        members.append(FleetMemberSpec(job.name, job.config, low, high))
    changes: list[BudgetChange] = []
    if fleet.has("budget_changes"):
        for element in fleet.child("budget_changes").elements():
            element.reject_unknown(["at_s", "watts"])
            at_node = element.required("at_s")
            at_s = at_node.number(positive=True)
            if at_s >= duration_s or (changes and at_s <= changes[-1].at_s):
                raise at_node.error("budget changes must be in ascending time order, in the run")
            changes.append(BudgetChange(at_s, element.required("watts").number(positive=True)))
    interval_s = fleet.child("interval_s").number(positive=True) if fleet.has("interval_s") else 1.0
    reserve = fleet.child("reserve_fraction").fraction() if fleet.has("reserve_fraction") else 0.0
    config = FleetConfig(
        members=tuple(members),
        budget_watts=fleet.required("budget_watts").number(positive=True),
        duration_s=duration_s,
        budget_changes=tuple(changes),
        interval_s=interval_s,
        reserve_fraction=reserve,
    )
    profiles = {job.name: job.profile_name for job in workload.jobs}
    return FleetWorkload(workload, config, profiles)


# -- the oracle split ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OracleStretch:
    start_s: float
    end_s: float
    budget_watts: float
    throughput_ips: float
    """The fleet's summed throughput over the stretch."""
    caps_watts: dict[str, float]
    """The peak of each member's chosen pair: the caps of the best static split."""
    member_ips: dict[str, float]


def _rate_at(config: RunConfig, at_s: float) -> float:
    load = config.load
    if isinstance(load, SaturatingLoad):
        return math.inf
    assert isinstance(load, PoissonLoad)
    rate = load.steps[0].rate_ips
    for step in load.steps:
        if step.at_s <= at_s:
            rate = step.rate_ips
    return rate


def _options(spec: FleetMemberSpec, rate: float) -> list[tuple[int, float]]:
    """(whole watts of budget, inferences/s) of the member's pairs worth anything: each one
    faster than every cooler one. A pair costs its peak, or the member's minimum cap if
    that is more (no cap goes below it)."""
    config = spec.config
    clocks: tuple[int | None, ...] = oracle_clock_levels(config) or (None,)
    floor = math.ceil(spec.min_watts)
    pairs = sorted(
        (
            max(floor, math.ceil(config.profile.peak_power_watts(b, c))),
            min(rate, config.profile.throughput_ips(b, c)),
        )
        for b in config.ladder
        for c in clocks
    )
    best: list[tuple[int, float]] = []
    for watts, ips in pairs:
        if watts <= spec.max_watts and (not best or ips > best[-1][1]):
            best.append((watts, ips))
    return best


def _best_split(
    members: tuple[FleetMemberSpec, ...], budget_watts: float, at_s: float
) -> tuple[float, dict[str, float], dict[str, float]]:
    budget = math.floor(budget_watts)
    # best[w]: the most throughput of the members so far within w watts; -inf: infeasible.
    best = [0.0] * (budget + 1)
    choices: list[list[int]] = []
    options_all = []
    for spec in members:
        options = _options(spec, _rate_at(spec.config, at_s))
        options_all.append(options)
        new = [-math.inf] * (budget + 1)
        pick = [-1] * (budget + 1)
        for index, (watts, ips) in enumerate(options):
            for w in range(watts, budget + 1):
                value = best[w - watts] + ips
                if value > new[w]:
                    new[w] = value
                    pick[w] = index
        best = new
        choices.append(pick)
    w = max(range(budget + 1), key=lambda i: best[i])
    total = best[w]
    caps: dict[str, float] = {}
    chosen_ips: dict[str, float] = {}
    for spec, pick, options in zip(
        reversed(members), reversed(choices), reversed(options_all), strict=True
    ):
        index = pick[w]
        if index < 0:
            return -math.inf, {}, {}
        caps[spec.name] = float(options[index][0])
        chosen_ips[spec.name] = options[index][1]
        w -= options[index][0]
    return total, caps, chosen_ips


def oracle_split(config: FleetConfig) -> list[OracleStretch]:
    """The best static split of each stretch of constant budget and loads."""
    times = {0.0, *(c.at_s for c in config.budget_changes)}
    for spec in config.members:
        load = spec.config.load
        if isinstance(load, PoissonLoad):
            times.update(step.at_s for step in load.steps)
    bounds = [*sorted(t for t in times if t < config.duration_s), config.duration_s]
    stretches = []
    for start_s, end_s in itertools.pairwise(bounds):
        budget = config.budget_at(start_s)
        total, caps, ips = _best_split(config.members, budget, start_s)
        if not caps:
            raise SpecError(f"no split of {budget:g} W runs every member from {start_s:g} s")
        stretches.append(OracleStretch(start_s, end_s, budget, total, caps, ips))
    return stretches


def oracle_throughput_ips(stretches: list[OracleStretch], duration_s: float) -> float:
    return sum(s.throughput_ips * (s.end_s - s.start_s) for s in stretches) / duration_s
