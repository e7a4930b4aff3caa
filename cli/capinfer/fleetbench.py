"""The fleet benchmark: one power budget over many simulated GPUs, under each split policy.

Pure logic (no printing): :func:`run_fleet_bench` runs the fleet of a fleet workload
(:mod:`capinfer_sidecar.sim.fleet`) under each :class:`~capinfer_core.budget.SplitPolicy`
-- every member an ``Adaptive`` sidecar in its own production control loop, a simulated
budget controller splitting the budget from what the members measured
(:mod:`capinfer_sidecar.fleetsim`) -- and computes the oracle split;
:func:`render_fleet_markdown` writes the report.

Metrics are on the simulator's true power, summed over the fleet per 0.1 s sample interval:

- *over budget*: intervals whose summed true peak exceeds the budget in force (a budget
  binds from the interval after its change: what the GPUs drew before anyone could act is
  not held against the controller, as a cap in the single-GPU benchmark);
- *settling* after a budget change: the later of (a) the time from which the summed true
  peak stays within the new budget for 5 s (or to the next change) and (b) the time the
  fleet's 1 s throughput first reaches 95% of its average over the last third of the
  stretch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from capinfer_core.budget import SplitPolicy
from capinfer_sidecar.fleetsim import FleetResult, run_fleet
from capinfer_sidecar.policies import Policy, make_policy
from capinfer_sidecar.sim.fleet import (
    FleetMemberSpec,
    FleetWorkload,
    OracleStretch,
    oracle_split,
    oracle_throughput_ips,
)

MEMBER_POLICY = "Adaptive"
TARGET_VS_ORACLE = 0.95
TARGET_VS_EQUAL = 1.15
TARGET_OVER_BUDGET_PERCENT = 0.5
SETTLE_HOLD_S = 5.0
SETTLE_FRACTION = 0.95


def member_policy(spec: FleetMemberSpec) -> Policy:
    return make_policy(
        MEMBER_POLICY, max_beneficial_batch=spec.config.profile.max_beneficial_batch()
    )


@dataclass(frozen=True)
class FleetMetrics:
    throughput_ips: float
    over_budget_fraction: float
    worst_overshoot_watts: float
    over_budget_mean_fraction: float
    """Intervals whose summed true *mean* power exceeds the budget."""
    over_budget_after_changes_fraction: float
    """Intervals over the budget (on the peaks) within ``SETTLE_HOLD_S`` after a budget
    change, as a share of all intervals: the part of ``over_budget_fraction`` that the
    members' reaction to a change accounts for."""
    settling_s: tuple[float | None, ...]
    """Per budget change; None when the fleet never held within the budget for 5 s."""
    cap_changes: int
    """Caps published to members, over the run."""
    member_ips: dict[str, float]


@dataclass(frozen=True)
class FleetBench:
    fleet: FleetWorkload
    oracle: list[OracleStretch]
    oracle_ips: float
    runs: dict[SplitPolicy, FleetResult]
    metrics: dict[SplitPolicy, FleetMetrics]

    def versus_oracle(self, split: SplitPolicy) -> float:
        return self.metrics[split].throughput_ips / self.oracle_ips

    def versus(self, split: SplitPolicy, other: SplitPolicy) -> float | None:
        if other not in self.metrics:
            return None
        return self.metrics[split].throughput_ips / self.metrics[other].throughput_ips


def fleet_metrics(result: FleetResult) -> FleetMetrics:
    config = result.config
    traces = list(result.traces.values())
    ticks = min(len(t.time_s) for t in traces)
    dt = traces[0].sample_interval_s
    times = traces[0].time_s[:ticks]
    peaks = [sum(t.true_peak_watts[i] for t in traces) for i in range(ticks)]
    means = [sum(t.mean_power_watts[i] for t in traces) for i in range(ticks)]
    ips = [sum(t.throughput_ips[i] for t in traces) for i in range(ticks)]
    # The interval ending at t binds the budget in force from its start.
    budgets = [config.budget_at(t - dt + 1e-9) for t in times]
    over = [p - b for p, b in zip(peaks, budgets, strict=True)]
    over_count = sum(1 for o in over if o > 0)
    change_times = [c.at_s for c in config.budget_changes]
    after_change = sum(
        1
        for t, o in zip(times, over, strict=True)
        if o > 0 and any(0 < t - at_s <= SETTLE_HOLD_S for at_s in change_times)
    )
    settling = []
    for change in config.budget_changes:
        later = [c.at_s for c in config.budget_changes if c.at_s > change.at_s]
        end_s = later[0] if later else config.duration_s
        settling.append(_settling(change.at_s, end_s, times, over, ips))
    return FleetMetrics(
        throughput_ips=sum(result.inferences.values()) / config.duration_s,
        over_budget_fraction=over_count / ticks,
        worst_overshoot_watts=max([0.0, *over]),
        over_budget_after_changes_fraction=after_change / ticks,
        over_budget_mean_fraction=sum(1 for m, b in zip(means, budgets, strict=True) if m > b)
        / ticks,
        settling_s=tuple(settling),
        cap_changes=sum(len(c) - 1 for c in result.caps.values()),
        member_ips={k: v / config.duration_s for k, v in result.inferences.items()},
    )


def _settling(
    at_s: float, end_s: float, times: Sequence[float], over: Sequence[float], ips: Sequence[float]
) -> float | None:
    inside = [i for i, t in enumerate(times) if at_s < t <= end_s]
    if not inside:
        return None
    hold = min(SETTLE_HOLD_S, end_s - at_s)
    held_from: float | None = None
    for i in inside:
        if over[i] > 0:
            held_from = None
        elif held_from is None:
            held_from = times[i] - (times[1] - times[0])
        if held_from is not None and times[i] - held_from >= hold - 1e-9:
            break
    else:
        if held_from is None or end_s - held_from < hold - 1e-9:
            return None
    if held_from is None:
        return None
    third = [ips[i] for i in inside if times[i] >= end_s - (end_s - at_s) / 3]
    goal = SETTLE_FRACTION * sum(third) / max(len(third), 1)
    window = 10
    reached_s = end_s
    for position in range(len(inside)):
        chunk = [ips[i] for i in inside[max(0, position - window + 1) : position + 1]]
        if sum(chunk) / len(chunk) >= goal:
            reached_s = times[inside[position]]
            break
    return max(held_from, reached_s) - at_s


Progress = Callable[[str, float, float], None]
"""``(split policy, simulated seconds done, of the run)``."""


def run_fleet_bench(
    fleet: FleetWorkload, splits: Sequence[SplitPolicy], progress: Progress | None = None
) -> FleetBench:
    oracle = oracle_split(fleet.config)
    runs: dict[SplitPolicy, FleetResult] = {}
    for split in splits:

        def report(now_s: float, name: SplitPolicy = split) -> None:
            if progress is not None:
                progress(name.value, now_s, fleet.config.duration_s)

        runs[split] = run_fleet(fleet.config, split, member_policy, report)
    return FleetBench(
        fleet=fleet,
        oracle=oracle,
        oracle_ips=oracle_throughput_ips(oracle, fleet.config.duration_s),
        runs=runs,
        metrics={split: fleet_metrics(result) for split, result in runs.items()},
    )


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render_fleet_markdown(bench: FleetBench, command: str = "") -> str:
    config = bench.fleet.config
    workload = bench.fleet.workload
    out = [f"# capinfer fleet benchmark: {workload.name}", ""]
    if workload.description:
        out += [workload.description, ""]
    if command:
        out += ["Produced by:", "", "```", command, "```", ""]
    budgets = " → ".join(
        [f"{config.budget_watts:g} W"]
        + [f"{c.watts:g} W at {c.at_s:g} s" for c in config.budget_changes]
    )
    equal = bench.metrics.get(SplitPolicy.EQUAL)
    oracle_vs_equal = bench.oracle_ips / equal.throughput_ips if equal is not None else None
    out += [
        f"{len(config.members)} simulated GPUs, one member each, for {config.duration_s:g} s; "
        f"budget {budgets}; the budget is split again every {config.interval_s:g} s and at "
        f"once when it changes. Every member runs `{MEMBER_POLICY}` in the sidecar's own "
        "control loop on virtual time; the split uses only what each member's policy has "
        "measured.",
        "",
        "## Summary",
        "",
        "| split | throughput (/s) | / oracle split | / Equal | over budget "
        "| of which ≤ 5 s after a change | worst over | over budget (mean power) "
        "| settling after each change | caps published | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| *oracle split* | {bench.oracle_ips:.1f} | 1.000 | {_ratio(oracle_vs_equal)} "
        "| | | | | | | |",
    ]
    for split, m in bench.metrics.items():
        settle = ", ".join("never" if s is None else f"{s:.1f} s" for s in m.settling_s) or "—"
        out.append(
            f"| {split.value} | {m.throughput_ips:.1f} | {bench.versus_oracle(split):.3f} "
            f"| {_ratio(bench.versus(split, SplitPolicy.EQUAL))} "
            f"| {100 * m.over_budget_fraction:.2f}% "
            f"| {100 * m.over_budget_after_changes_fraction:.2f}% "
            f"| {m.worst_overshoot_watts:.1f} W "
            f"| {100 * m.over_budget_mean_fraction:.2f}% | {settle} | {m.cap_changes} "
            f"| {bench.runs[split].cpu_s:.1f} |"
        )
    out += ["", "## Targets (MaxThroughput)", ""]
    if SplitPolicy.MAX_THROUGHPUT in bench.metrics:
        m = bench.metrics[SplitPolicy.MAX_THROUGHPUT]
        vs_oracle = bench.versus_oracle(SplitPolicy.MAX_THROUGHPUT)
        vs_equal = bench.versus(SplitPolicy.MAX_THROUGHPUT, SplitPolicy.EQUAL)
        out += [
            "| target | measured | |",
            "|---|---:|---|",
            f"| ≥ {TARGET_VS_ORACLE:.2f} × the oracle split | {vs_oracle:.3f} "
            f"| {_met(vs_oracle >= TARGET_VS_ORACLE)} |",
            f"| ≥ {TARGET_VS_EQUAL:.2f} × Equal | {_ratio(vs_equal)} "
            f"| {_met(vs_equal is not None and vs_equal >= TARGET_VS_EQUAL)} |",
            f"| over budget ≤ {TARGET_OVER_BUDGET_PERCENT}% of the time "
            f"| {100 * m.over_budget_fraction:.2f}% "
            f"| {_met(100 * m.over_budget_fraction <= TARGET_OVER_BUDGET_PERCENT)} |",
            "",
        ]
    out += _members_section(bench)
    out += _oracle_section(bench)
    out += [
        "## How to read this",
        "",
        "- *Oracle split*: for each stretch of constant budget and loads, the best static "
        "(batch size, clock) pair of every member at once, whose peaks (with the jitter "
        "bound) sum within the budget; exact (dynamic programming over whole watts), "
        "throughput in closed form (the arrival rate at most), switching instantly: an upper "
        "bound.",
        "- *Over budget*: share of 0.1 s intervals whose summed *true* peak power (every "
        "GPU's highest power in the interval, added up: more than the fleet ever draws at "
        "one instant) exceeds the budget; a budget binds from the interval after its change. "
        "*Over budget (mean power)*: the same on the summed mean power of each interval.",
        "- *Settling*: after a budget change, the later of the time from which the summed "
        "true peak stays within the budget for 5 s and the time the fleet's 1 s throughput "
        "first reaches 95% of its average over the last third of the stretch.",
        "- *Caps published*: cap changes sent to members (each may move a member's "
        "settings; a batch-size move is a Triton reload of seconds).",
        "",
    ]
    return "\n".join(out)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _members_section(bench: FleetBench) -> list[str]:
    splits = list(bench.metrics)
    rows = [
        "## Per member (inferences/s over the run)",
        "",
        "| member | workload | load | *oracle split* | "
        + " | ".join(s.value for s in splits)
        + " |",
        "|---|---|---|---:|" + "---:|" * len(splits),
    ]
    duration_s = bench.fleet.config.duration_s
    for spec in bench.fleet.config.members:
        job = next(j for j in bench.fleet.workload.jobs if j.name == spec.name)
        load = type(spec.config.load).__name__.replace("Load", "").lower()
        cells = " | ".join(f"{bench.metrics[s].member_ips[spec.name]:.1f}" for s in splits)
        oracle = (
            sum(o.member_ips[spec.name] * (o.end_s - o.start_s) for o in bench.oracle) / duration_s
        )
        rows.append(
            f"| {spec.name} | {job.dnn}/{job.dataset} ({job.profile_name}) | {load} "
            f"| {oracle:.1f} | {cells} |"
        )
    return [*rows, ""]


def _oracle_section(bench: FleetBench) -> list[str]:
    rows = [
        "## The oracle split",
        "",
        "| from | to | budget | throughput (/s) | caps (W) |",
        "|---:|---:|---:|---:|---|",
    ]
    for stretch in bench.oracle:
        caps = ", ".join(f"{k} {v:.0f}" for k, v in sorted(stretch.caps_watts.items()))
        rows.append(
            f"| {stretch.start_s:g} s | {stretch.end_s:g} s | {stretch.budget_watts:g} W "
            f"| {stretch.throughput_ips:.1f} | {caps} |"
        )
    return [*rows, ""]


def fleet_results(bench: FleetBench) -> dict[str, object]:
    """Every figure of the report, for scripts."""
    return {
        "workload": bench.fleet.workload.name,
        "oracle_ips": bench.oracle_ips,
        "oracle": [
            {
                "from_s": s.start_s,
                "to_s": s.end_s,
                "budget_watts": s.budget_watts,
                "throughput_ips": s.throughput_ips,
                "caps_watts": s.caps_watts,
            }
            for s in bench.oracle
        ],
        "splits": {
            split.value: {
                "throughput_ips": m.throughput_ips,
                "vs_oracle": bench.versus_oracle(split),
                "vs_equal": bench.versus(split, SplitPolicy.EQUAL),
                "over_budget_fraction": m.over_budget_fraction,
                "over_budget_mean_fraction": m.over_budget_mean_fraction,
                "over_budget_after_changes_fraction": m.over_budget_after_changes_fraction,
                "worst_overshoot_watts": m.worst_overshoot_watts,
                "settling_s": list(m.settling_s),
                "cap_changes": m.cap_changes,
                "member_ips": m.member_ips,
                "cpu_s": bench.runs[split].cpu_s,
            }
            for split, m in bench.metrics.items()
        },
    }


def parse_split_list(text: str) -> tuple[SplitPolicy, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = [s.value for s in SplitPolicy]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"unknown split policy {unknown[0] if unknown else ''!r} (known: {', '.join(known)})"
        )
    return tuple(SplitPolicy(n) for n in dict.fromkeys(names))
