"""The benchmark: every job of a workload under every policy, against DVFS and the oracle.

Pure logic (no printing, no plotting): :func:`run_bench` returns a :class:`BenchResult`,
:func:`render_markdown` turns it into the report. ``capinfer bench`` adds the progress
display and the figures.

Policies are named as ``spec.power.policy`` spells them (``Adaptive``, ``BatchSizer``,
``DVFS``, ``BatchDVFS``, ``Static``); ``Static:64@1303`` fixes batch 64 at 1303 MHz and
``Static:64`` batch 64 at the top clock. BatchSizer gets its max-beneficial batch size from
the profile, as the paper's offline profiling gives it (section 4.2); so does Adaptive,
which takes the same option.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capinfer_sidecar.policies import POLICY_NAMES, Policy, make_policy
from capinfer_sidecar.sim.config import PoissonLoad, SaturatingLoad
from capinfer_sidecar.sim.faults import Faults, Window
from capinfer_sidecar.sim.metrics import RunMetrics, compute_metrics
from capinfer_sidecar.sim.oracle import OraclePair, closed_form_throughput_ips, pair_for
from capinfer_sidecar.sim.workloads import Job, Workload
from capinfer_sidecar.sim.world import RunResult
from capinfer_sidecar.sim.yamlread import SpecError
from capinfer_sidecar.simloop import run, run_oracle

DEFAULT_POLICIES = ("DVFS", "BatchSizer", "BatchDVFS", "Adaptive")
BASELINE = "DVFS"
OFFLINE_CUTOFF_POLICIES = ("BatchSizer", "Adaptive")
"""Policies given the profile's max-beneficial batch size (BatchSizer's offline profiling)."""

# The targets for capinfer's own policy, checked in the report.
TARGET_VS_ORACLE = 0.97
TARGET_OVER_CAP_PERCENT = 0.5
TARGET_SETTLING_S = 5.0
TARGET_P5_VS_ORACLE = 0.90
JOB_OVER_CAP_LIMIT = 0.02
"""No job whose caps the oracle can hold should be over the cap more than this share of it."""
# What the BatchSizer paper reports against DVFS (Fig. 5), for the reproduction check.
PAPER_BEST_GAIN = 0.29
PAPER_WORST_LOSS = 0.08


# -- policies by name ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """A policy as named on the command line, with its fixed options."""

    text: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, job: Job) -> Policy:
        options = dict(self.options)
        if self.name in OFFLINE_CUTOFF_POLICIES:
            options["max_beneficial_batch"] = job.config.profile.max_beneficial_batch()
        return make_policy(self.name, **options)


def parse_policy_spec(text: str) -> PolicySpec:
    """``Adaptive``, ``Static``, ``Static:64`` or ``Static:64@1303``; errors name the problem."""
    name, _, arguments = text.strip().partition(":")
    if name not in POLICY_NAMES:
        raise SpecError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
    if not arguments:
        return PolicySpec(text, name)
    if name != "Static":
        raise SpecError(f"policy {text!r}: only Static takes arguments (Static:BATCH[@MHZ])")
    batch_text, _, clock_text = arguments.partition("@")
    try:
        options: list[tuple[str, Any]] = [("batch_size", int(batch_text))]
        if clock_text:
            options.append(("clock_mhz", int(clock_text)))
    except ValueError:
        raise SpecError(f"policy {text!r}: expected Static:BATCH or Static:BATCH@MHZ") from None
    return PolicySpec(text, name, tuple(options))


def parse_policy_list(text: str) -> tuple[PolicySpec, ...]:
    specs = tuple(parse_policy_spec(part) for part in text.split(",") if part.strip())
    if not specs:
        raise SpecError("no policy given")
    names = [spec.text for spec in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise SpecError(f"policy {duplicate!r} is listed twice")
    return specs


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyRun:
    policy: str
    result: RunResult | None
    metrics: RunMetrics | None
    error: str | None = None
    """Why the run failed (the policy raised); the bench carries on with the others."""


@dataclass(frozen=True)
class OracleOutcome:
    pairs: tuple[tuple[float, OraclePair], ...]
    """``(segment start, pair)`` for each stretch of constant cap."""
    closed_form_ips: float | None
    result: RunResult
    metrics: RunMetrics

    @property
    def throughput_ips(self) -> float:
        return self.metrics.throughput_ips


@dataclass(frozen=True)
class JobOutcome:
    job: Job
    oracle: OracleOutcome
    runs: Mapping[str, PolicyRun]

    def metrics(self, policy: str) -> RunMetrics | None:
        found = self.runs.get(policy)
        return found.metrics if found is not None else None

    def versus(self, policy: str, baseline: str) -> float | None:
        mine, theirs = self.metrics(policy), self.metrics(baseline)
        if mine is None or theirs is None or theirs.throughput_ips <= 0:
            return None
        return mine.throughput_ips / theirs.throughput_ips

    def oracle_versus(self, baseline: str) -> float | None:
        theirs = self.metrics(baseline)
        if theirs is None or theirs.throughput_ips <= 0:
            return None
        return self.oracle.throughput_ips / theirs.throughput_ips

    @property
    def infeasible(self) -> bool:
        """Some cap of the job is below what the least-power setting draws: no policy can
        hold it, so the job stays out of the throughput and time-over-cap figures."""
        return any(not pair.cap_reachable for _, pair in self.oracle.pairs)

    def versus_oracle(self, policy: str) -> float | None:
        mine = self.metrics(policy)
        if mine is None or self.oracle.throughput_ips <= 0:
            return None
        return mine.throughput_ips / self.oracle.throughput_ips


@dataclass(frozen=True)
class PolicySummary:
    policy: str
    jobs: int
    failed: int
    geomean_vs_dvfs: float | None
    geomean_vs_oracle: float | None
    """Over the feasible jobs (see :attr:`JobOutcome.infeasible`)."""
    p5_vs_oracle: float | None
    worst_vs_oracle: float | None
    over_cap_percent: float
    """Share of the feasible jobs' simulated time over the cap."""
    jobs_over_limit: int
    """Feasible jobs over the cap more than ``JOB_OVER_CAP_LIMIT`` of their time."""
    infeasible_jobs: int
    worst_overshoot_watts: float
    cap_changes: int
    unsettled: int
    median_settling_s: float | None
    worst_settling_s: float | None
    reloads: int
    failed_loads_per_minute: float
    """Failed loads over all jobs, per minute of simulated time."""
    failsafe_percent: float
    """Share of all simulated time the control loop spent on its safe settings."""
    speedup: float
    """Simulated seconds per CPU second, this policy's own decisions included."""


@dataclass(frozen=True)
class BenchResult:
    workload: Workload
    policies: tuple[str, ...]
    jobs: tuple[JobOutcome, ...]
    simulated_s: float
    sim_cpu_s: float
    """CPU time spent inside the simulator (policies included), for the speed factor."""
    slowest_speedup: float
    slowest_run: str = ""
    """``job / policy`` of the slowest run."""

    @property
    def speedup(self) -> float:
        return self.simulated_s / self.sim_cpu_s if self.sim_cpu_s > 0 else math.inf

    @property
    def simulator_speedup(self) -> float:
        """The control loop and the simulator alone: the oracle's runs, whose policy costs
        nothing."""
        simulated = sum(job.oracle.result.config.duration_s for job in self.jobs)
        cpu_s = sum(job.oracle.result.cpu_s for job in self.jobs)
        return simulated / cpu_s if cpu_s > 0 else math.inf

    def summaries(self) -> list[PolicySummary]:
        return [summarize_policy(self, policy) for policy in self.policies]


Progress = Callable[[int, int, str, str], None]
"""``(runs done, runs in all, job name, what runs next)``."""


def run_bench(
    workload: Workload,
    policies: Sequence[PolicySpec],
    jobs: Sequence[Job] | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Run every job under the oracle and every policy; a failing policy is recorded, not
    raised."""
    selected = tuple(jobs if jobs is not None else workload.jobs)
    total = len(selected) * (len(policies) + 1)
    done = 0
    simulated_s = 0.0
    cpu_s = 0.0
    slowest = math.inf
    slowest_run = ""
    outcomes: list[JobOutcome] = []
    for job in selected:
        if progress is not None:
            progress(done, total, job.name, "oracle")
        oracle = _run_oracle(job)
        done += 1
        runs: dict[str, PolicyRun] = {}
        for spec in policies:
            if progress is not None:
                progress(done, total, job.name, spec.text)
            policy_run = _run_policy(job, spec)
            runs[spec.text] = policy_run
            if policy_run.result is not None:
                simulated_s += job.config.duration_s
                cpu_s += policy_run.result.cpu_s
                if policy_run.result.speedup < slowest:
                    slowest = policy_run.result.speedup
                    slowest_run = f"{job.name} / {spec.text}"
            done += 1
        outcomes.append(JobOutcome(job, oracle, runs))
    if progress is not None:
        progress(done, total, "", "")
    return BenchResult(
        workload=workload,
        policies=tuple(spec.text for spec in policies),
        jobs=tuple(outcomes),
        simulated_s=simulated_s,
        sim_cpu_s=cpu_s,
        slowest_speedup=slowest,
        slowest_run=slowest_run,
    )


def _run_oracle(job: Job) -> OracleOutcome:
    config = job.config
    pairs = tuple((start, pair_for(config, cap)) for start, _, cap in config.cap_segments())
    result = run_oracle(config)
    return OracleOutcome(pairs, closed_form_throughput_ips(config), result, compute_metrics(result))


def _run_policy(job: Job, spec: PolicySpec) -> PolicyRun:
    started = time.perf_counter()
    try:
        result = run(job.config, spec.build(job))
    except Exception as error:  # a policy bug must not sink the whole benchmark
        elapsed = time.perf_counter() - started
        message = f"{type(error).__name__}: {error} (after {elapsed:.1f} s)"
        return PolicyRun(spec.text, None, None, message)
    if result.loop_error is not None:
        # The supervisor kept the run going, as in a pod; but a loop that raises is a bug.
        message = (
            f"the control loop raised {result.loop_failures} time(s) and was started again"
            f" by its supervisor; first error: {result.loop_error}"
        )
        return PolicyRun(spec.text, result, None, message)
    return PolicyRun(spec.text, result, compute_metrics(result))


# -- summaries -----------------------------------------------------------------------------------


def geometric_mean(values: Sequence[float]) -> float | None:
    positive = [v for v in values if v > 0]
    if not positive or len(positive) != len(values):
        return None
    return math.exp(sum(math.log(v) for v in positive) / len(positive))


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (the value below which ``fraction`` of them lie)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def summarize_policy(bench: BenchResult, policy: str) -> PolicySummary:
    metrics = [m for job in bench.jobs if (m := job.metrics(policy)) is not None]
    failed = len(bench.jobs) - len(metrics)
    feasible = [job for job in bench.jobs if not job.infeasible]
    feasible_metrics = [m for job in feasible if (m := job.metrics(policy)) is not None]
    vs_dvfs = [r for job in bench.jobs if (r := job.versus(policy, BASELINE)) is not None]
    vs_oracle = [r for job in feasible if (r := job.versus_oracle(policy)) is not None]
    seconds = sum(job.job.config.duration_s for job in bench.jobs if job.metrics(policy))
    feasible_s = sum(job.job.config.duration_s for job in feasible if job.metrics(policy))
    over_s = sum(m.seconds_over_cap for m in feasible_metrics)
    settlings = [s.settling_s for m in metrics for s in m.settling]
    settled = [s for s in settlings if s is not None]
    cpu_s = sum(m.cpu_s for m in metrics)
    return PolicySummary(
        policy=policy,
        jobs=len(metrics),
        failed=failed,
        geomean_vs_dvfs=geometric_mean(vs_dvfs) if len(vs_dvfs) == len(metrics) else None,
        geomean_vs_oracle=geometric_mean(vs_oracle)
        if len(vs_oracle) == len(feasible_metrics)
        else None,
        p5_vs_oracle=percentile(vs_oracle, 0.05),
        worst_vs_oracle=min(vs_oracle, default=None),
        over_cap_percent=100.0 * over_s / feasible_s if feasible_s > 0 else 0.0,
        jobs_over_limit=sum(
            1 for m in feasible_metrics if m.over_cap_fraction > JOB_OVER_CAP_LIMIT
        ),
        infeasible_jobs=len(bench.jobs) - len(feasible),
        worst_overshoot_watts=max((m.worst_overshoot_watts for m in metrics), default=0.0),
        cap_changes=len(settlings),
        unsettled=len(settlings) - len(settled),
        median_settling_s=statistics.median(settled) if settled else None,
        worst_settling_s=max(settled) if settled and len(settled) == len(settlings) else None,
        reloads=sum(m.reloads for m in metrics),
        failed_loads_per_minute=60.0 * sum(m.reload_failures for m in metrics) / seconds
        if seconds > 0
        else 0.0,
        failsafe_percent=100.0 * sum(m.failsafe_s for m in metrics) / seconds
        if seconds > 0
        else 0.0,
        speedup=seconds / cpu_s if cpu_s > 0 else math.inf,
    )


# -- the markdown report -------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _load_text(job: Job) -> str:
    load = job.config.load
    if isinstance(load, SaturatingLoad):
        return "saturating" if load.concurrency is None else f"closed loop, {load.concurrency}"
    return _poisson_text(load)


def _poisson_text(load: PoissonLoad) -> str:
    if len(load.steps) == 1:
        return f"Poisson {load.steps[0].rate_ips:.0f}/s"
    rates = sorted({step.rate_ips for step in load.steps})
    return f"Poisson {rates[0]:.0f}–{rates[-1]:.0f}/s, {len(load.steps)} steps"


def _caps_text(job: Job) -> str:
    changes = job.config.cap_changes
    caps = [f"{job.config.cap_watts:g}"] + [f"{c.cap_watts:g}@{c.at_s:g}s" for c in changes]
    if len(caps) > 7:
        caps = [*caps[:3], f"… ({len(changes)} changes)", caps[-1]]
    return " → ".join(caps)


def _pair_text(pair: OraclePair) -> str:
    clock = "default" if pair.clock_mhz is None else f"{pair.clock_mhz}"
    mark = "" if pair.cap_reachable else " (cap unreachable)"
    return f"{pair.batch_size}@{clock}{mark}"


def render_markdown(
    bench: BenchResult, figures: Sequence[tuple[str, str]] = (), command: str = ""
) -> str:
    """The report: summary, targets, reproduction check, per-job table, cap changes, figures.

    ``figures`` are ``(title, relative path)`` pairs.
    """
    out: list[str] = [f"# capinfer benchmark: {bench.workload.name}", ""]
    if bench.workload.description:
        out += [bench.workload.description, ""]
    if command:
        out += ["Produced by:", "", "```", command, "```", ""]
    out += [
        f"{len(bench.jobs)} jobs × {len(bench.policies)} policies, plus the oracle. "
        "Every run is the production control loop (`capinfer_sidecar.loop.ControlLoop`, its "
        "reload governor and supervisor) on virtual time against the simulated GPU and "
        f"Triton. The loop and the simulator alone run **{bench.simulator_speedup:.0f}× "
        f"faster than real time** (the oracle's runs, whose policy costs nothing); with the "
        f"policies' own decisions, {bench.simulated_s:.0f} s of GPU time took "
        f"{bench.sim_cpu_s:.1f} s of CPU ({bench.speedup:.0f}×). The slowest run, "
        f"{bench.slowest_run}, ran at **{bench.slowest_speedup:.0f}×** real time (per policy "
        "in the summary). Speeds are simulated seconds per CPU second of the benchmark "
        "process, which is single-threaded: on a busy machine the wall clock adds the waits "
        "for a core.",
        "",
        *_summary_section(bench),
        *_distribution_section(bench),
        *_targets_section(bench),
        *_reproduction_section(bench),
        *_jobs_section(bench),
        *_cap_changes_section(bench),
        *_latency_section(bench),
        *_faults_section(bench),
        *_failures_section(bench),
    ]
    if figures:
        out += ["## Figures", ""]
        for title, path in figures:
            out += [f"### {title}", "", f"![{title}]({path})", ""]
    out += _definitions()
    return "\n".join(out).rstrip() + "\n"


def _summary_section(bench: BenchResult) -> list[str]:
    rows = [
        "## Summary",
        "",
        "| policy | jobs | throughput / DVFS (geomean) | throughput / oracle (geomean) "
        "| time over cap | worst overshoot | median / worst settling | reloads "
        "| failed loads / min | time in failsafe | speed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in bench.summaries():
        failed = f" ({s.failed} failed)" if s.failed else ""
        settling = "—"
        if s.cap_changes:
            worst = (
                _num(s.worst_settling_s, 1, " s") if not s.unsettled else (f"{s.unsettled} never")
            )
            settling = f"{_num(s.median_settling_s, 1, ' s')} / {worst}"
        rows.append(
            f"| {s.policy} | {s.jobs}{failed} | {_ratio(s.geomean_vs_dvfs)} "
            f"| {_ratio(s.geomean_vs_oracle)} | {s.over_cap_percent:.2f}% "
            f"| {s.worst_overshoot_watts:.1f} W | {settling} | {s.reloads} "
            f"| {s.failed_loads_per_minute:.2f} | {s.failsafe_percent:.2f}% | {s.speedup:.0f}× |"
        )
    return [*rows, ""]


def _distribution_section(bench: BenchResult) -> list[str]:
    """Throughput over the oracle job by job, and the jobs no policy can hold."""
    infeasible = [job.job.name for job in bench.jobs if job.infeasible]
    rows = [
        "## Distribution over the jobs",
        "",
        f"Infeasible jobs (a cap below the least power any setting draws; left out of the "
        f"throughput and time-over-cap figures, and listed in the per-job table with "
        f"*(cap unreachable)*): {len(infeasible)} of {len(bench.jobs)}"
        + (f" ({', '.join(infeasible)})" if 0 < len(infeasible) <= 12 else "")
        + ".",
        "",
        "| policy | feasible jobs | / oracle: geomean | p5 | worst | worst job "
        f"| jobs over the cap > {JOB_OVER_CAP_LIMIT:.0%} of their time |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for s in bench.summaries():
        worst_job = min(
            (
                (r, job.job.name)
                for job in bench.jobs
                if not job.infeasible and (r := job.versus_oracle(s.policy)) is not None
            ),
            default=(None, "—"),
        )[1]
        rows.append(
            f"| {s.policy} | {len(bench.jobs) - s.infeasible_jobs} "
            f"| {_ratio(s.geomean_vs_oracle)} | {_ratio(s.p5_vs_oracle)} "
            f"| {_ratio(s.worst_vs_oracle)} | {worst_job} | {s.jobs_over_limit} |"
        )
    return [*rows, ""]


def _targets_section(bench: BenchResult) -> list[str]:
    summaries = {s.policy: s for s in bench.summaries()}
    mine = summaries.get("Adaptive")
    if mine is None or mine.jobs == 0:
        return []
    rows = ["## Targets for Adaptive", "", "| target | measured | met |", "|---|---|:---:|"]

    def row(target: str, measured: str, met: bool | None) -> None:
        mark = "—" if met is None else ("yes" if met else "**no**")
        rows.append(f"| {target} | {measured} | {mark} |")

    vs_oracle = mine.geomean_vs_oracle
    row(
        f"throughput ≥ {TARGET_VS_ORACLE} × oracle (geomean)",
        _ratio(vs_oracle),
        None if vs_oracle is None else vs_oracle >= TARGET_VS_ORACLE,
    )
    p5 = mine.p5_vs_oracle
    row(
        f"throughput ≥ {TARGET_P5_VS_ORACLE} × oracle (5th percentile of the jobs)",
        _ratio(p5),
        None if p5 is None else p5 >= TARGET_P5_VS_ORACLE,
    )
    row(
        f"time over the cap ≤ {TARGET_OVER_CAP_PERCENT}%",
        f"{mine.over_cap_percent:.2f}%",
        mine.over_cap_percent <= TARGET_OVER_CAP_PERCENT,
    )
    row(
        f"no feasible job over the cap > {JOB_OVER_CAP_LIMIT:.0%} of its time",
        f"{mine.jobs_over_limit} job(s)",
        mine.jobs_over_limit == 0,
    )
    if mine.cap_changes:
        worst = mine.worst_settling_s
        row(
            f"settling after a cap change ≤ {TARGET_SETTLING_S:g} s (worst)",
            f"{mine.unsettled} never settled" if mine.unsettled else _num(worst, 1, " s"),
            worst is not None and worst <= TARGET_SETTLING_S,
        )
    sizer = summaries.get("BatchSizer")
    if sizer is not None and sizer.jobs:
        row(
            "fewer reloads than BatchSizer",
            f"{mine.reloads} vs {sizer.reloads}",
            mine.reloads < sizer.reloads,
        )
    return [*rows, ""]


def _reproduction_section(bench: BenchResult) -> list[str]:
    if "BatchSizer" not in bench.policies or BASELINE not in bench.policies:
        return []
    ratios = [(r, job.job.name) for job in bench.jobs if (r := job.versus("BatchSizer", BASELINE))]
    if not ratios:
        return []
    best, best_job = max(ratios)
    worst, worst_job = min(ratios)
    wins = sum(1 for r, _ in ratios if r > 1.0)
    return [
        "## BatchSizer against DVFS (the paper's Fig. 5)",
        "",
        f"BatchSizer beats DVFS on {wins} of {len(ratios)} jobs; best {best - 1:+.1%} "
        f"({best_job}), worst {worst - 1:+.1%} ({worst_job}). The paper reports up to "
        f"{PAPER_BEST_GAIN:+.0%} (job 19) and at worst {-PAPER_WORST_LOSS:+.0%} (job 5).",
        "",
    ]


def _jobs_section(bench: BenchResult) -> list[str]:
    rows = [
        "## Per job",
        "",
        "| job | workload | cap (W) | load | oracle pair | policy | throughput (/s) | / DVFS "
        "| / oracle | over cap | worst over | settling | reloads | failed loads / min "
        "| failsafe | avg max batch |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for outcome in bench.jobs:
        job = outcome.job
        pairs = ", ".join(_pair_text(pair) for _, pair in outcome.oracle.pairs)
        head = (
            f"| {job.name} | {job.dnn}/{job.dataset} ({job.profile_name}) | {_caps_text(job)} "
            f"| {_load_text(job)} | {pairs} "
        )
        rows.append(
            f"{head}| *oracle* | {outcome.oracle.throughput_ips:.1f} "
            f"| {_ratio(outcome.oracle_versus(BASELINE))} "
            f"| 1.000 | {100 * outcome.oracle.metrics.over_cap_fraction:.2f}% | | | | | | "
            f"{outcome.oracle.metrics.mean_batch_setting:.1f} |"
        )
        blank = "| | | | | "
        for policy in bench.policies:
            m = outcome.metrics(policy)
            if m is None:
                rows.append(f"{blank}| {policy} | failed | | | | | | | | | |")
                continue
            worst = m.worst_settling_s if m.settling else None
            settling = "—" if not m.settling else ("never" if worst is None else f"{worst:.1f} s")
            rows.append(
                f"{blank}| {policy} | {m.throughput_ips:.1f} "
                f"| {_ratio(outcome.versus(policy, BASELINE))} "
                f"| {_ratio(outcome.versus_oracle(policy))} | {100 * m.over_cap_fraction:.2f}% "
                f"| {m.worst_overshoot_watts:.1f} W | {settling} | {m.reloads} "
                f"| {m.failed_loads_per_minute:.2f} | {m.failsafe_s:.1f} s "
                f"| {m.mean_batch_setting:.1f} |"
            )
    return [*rows, ""]


def _latency_section(bench: BenchResult) -> list[str]:
    """p99 against the SLO, when a job sets one (``latency_slo_ms``); every job's p99 then,
    so that a job without an SLO shows what the policies do without one."""
    if all(o.job.config.latency_slo_ms is None for o in bench.jobs):
        return []
    jobs = bench.jobs
    rows = [
        "## Latency SLO",
        "",
        "p99 of every request of the run (queue + preparation + execution, as Triton measures"
        " it in the server; see `capinfer_sidecar.sim.latency` for the model and its"
        " assumptions). *Over SLO*: time Triton's p99 (its 60 s window, which the sidecar"
        " holds the SLO against) was over the SLO; *misses*: the times it went over, as the"
        " sidecar counts them. The oracle holds no SLO.",
        "",
        "| job | SLO (ms) | policy | p99 (ms) | met | over SLO | misses | throughput (/s) "
        "| over cap |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for outcome in jobs:
        slo = outcome.job.config.latency_slo_ms
        oracle = outcome.oracle.metrics
        rows.append(
            f"| {outcome.job.name} | {_num(slo, 0)} | *oracle* | {_num(oracle.p99_latency_ms)} "
            f"| {_met(oracle.p99_latency_ms, slo)} | | | {oracle.throughput_ips:.1f} "
            f"| {100 * oracle.over_cap_fraction:.2f}% |"
        )
        for policy in bench.policies:
            m = outcome.metrics(policy)
            if m is None:
                rows.append(f"| | | {policy} | failed | | | | | |")
                continue
            rows.append(
                f"| | | {policy} | {_num(m.p99_latency_ms)} | {_met(m.p99_latency_ms, slo)} "
                f"| {m.seconds_over_slo:.1f} s | {m.slo_misses} | {m.throughput_ips:.1f} "
                f"| {100 * m.over_cap_fraction:.2f}% |"
            )
    return [*rows, ""]


def _met(p99_ms: float | None, slo_ms: float | None) -> str:
    if p99_ms is None or slo_ms is None:
        return "—"
    return "yes" if p99_ms <= slo_ms else "no"


def _cap_changes_section(bench: BenchResult) -> list[str]:
    changing = [o for o in bench.jobs if o.job.config.cap_changes]
    if not changing:
        return []
    rows = [
        "## Settling after each cap change",
        "",
        "Seconds until the true peak holds under the new cap and the throughput reaches 95% "
        "of what the policy settles at (see the definitions below).",
        "",
        "| job | change | " + " | ".join(bench.policies) + " |",
        "|---|---|" + "---:|" * len(bench.policies),
    ]
    for outcome in changing:
        for index, change in enumerate(outcome.job.config.cap_changes):
            if change.at_s >= outcome.job.config.duration_s:
                continue
            cells = []
            for policy in bench.policies:
                m = outcome.metrics(policy)
                if m is None or index >= len(m.settling):
                    cells.append("—")
                    continue
                s = m.settling[index]
                cells.append("never" if s.settling_s is None else f"{s.settling_s:.1f}")
            config = outcome.job.config
            before = config.cap_watts if index == 0 else config.cap_changes[index - 1].cap_watts
            rows.append(
                f"| {outcome.job.name} | {before:g} → {change.cap_watts:g} W at "
                f"{change.at_s:g} s | " + " | ".join(cells) + " |"
            )
    return [*rows, ""]


def _faults_text(faults: Faults) -> list[str]:
    parts: list[str] = []
    reloads = faults.reloads
    if reloads.failing_sizes:
        parts.append(f"loads of {', '.join(map(str, reloads.failing_sizes))} fail")
    if reloads.probability:
        parts.append(f"any load fails with p = {reloads.probability:g}")
    if reloads.hanging_sizes:
        parts.append(f"loads of {', '.join(map(str, reloads.hanging_sizes))} never answer")
    windows: list[tuple[str, Window]] = [
        *(("Triton down", w) for w in faults.triton_outages),
        *((f"power reads fail ({w.kind.value})", w) for w in faults.power_errors),
        *(("clock sets fail", w) for w in faults.clock_errors),
    ]
    for what, window in windows:
        parts.append(f"{what} {window.at_s:g}–{window.end_s:g} s")
    return parts


def _faults_section(bench: BenchResult) -> list[str]:
    faulty = [o for o in bench.jobs if o.job.config.faults.any]
    if not faulty:
        return []
    rows = [
        "## Faults",
        "",
        "What each job injects, and what production's safety did about it: loads that "
        "failed (refused, lost to an outage, or abandoned), time on the failsafe's settings, "
        "batch sizes the reload governor had quarantined at the end.",
        "",
        "| job | faults | policy | / oracle | over cap | worst over | failed loads "
        "| failsafe | quarantined |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for outcome in faulty:
        head = f"| {outcome.job.name} | {'; '.join(_faults_text(outcome.job.config.faults))} "
        for policy in bench.policies:
            m = outcome.metrics(policy)
            if m is None:
                rows.append(f"{head}| {policy} | failed | | | | | |")
            else:
                quarantined = ", ".join(map(str, m.quarantined_batch_sizes)) or "—"
                rows.append(
                    f"{head}| {policy} | {_ratio(outcome.versus_oracle(policy))} "
                    f"| {100 * m.over_cap_fraction:.2f}% | {m.worst_overshoot_watts:.1f} W "
                    f"| {m.reload_failures} | {m.failsafe_s:.1f} s | {quarantined} |"
                )
            head = "| | "
    return [*rows, ""]


def _failures_section(bench: BenchResult) -> list[str]:
    failures = [
        (o.job.name, run.policy, run.error)
        for o in bench.jobs
        for run in o.runs.values()
        if run.error is not None
    ]
    if not failures:
        return []
    rows = ["## Runs that failed", ""]
    rows += [f"- {job} / {policy}: `{error}`" for job, policy, error in failures]
    return [*rows, ""]


def _definitions() -> list[str]:
    return [
        "## How to read this",
        "",
        "- Simulated on the GPU model of `capinfer_sidecar/sim` (profiles in "
        "`sim/profile_data/`); deterministic for each job's seed.",
        "- *Throughput*: inferences completed over the run, per second. *Oracle*: the best "
        "static (batch size, clock) pair whose peak power (with the jitter bound) stays under "
        "each cap, switched instantly at cap changes.",
        "- *Infeasible job*: one with a cap below the least peak power of any setting it may "
        "use (the oracle's pair is marked *(cap unreachable)*); no policy can hold it. Such "
        "jobs are left out of the geomean, p5 and worst throughput and of the summary's time "
        "over the cap (they are over it by construction), and counted apart.",
        "- *Over cap*: share of 0.1 s sample intervals whose *true* peak power exceeds the "
        "cap (policies see noisy readings); a new cap binds from its change plus the "
        "clock-change latency. *Worst over*: the largest such excess.",
        "- *Settling*: after a cap change, the later of (a) the time from which the true peak "
        "stays under the new cap for 5 s (or until the next change) and (b) the time the 1 s "
        "throughput first reaches 95% of the policy's average over the last third of the "
        "segment (saturating load only: otherwise throughput follows the arrivals); *never* "
        "if it does not hold under the cap that long. Later excursions count in the time "
        "over the cap.",
        "- *Reloads*: loads asked of Triton to change the batch size (each a model reload of "
        "seconds), failed ones included. *Failed loads / min*: loads that failed (refused, "
        "lost to a Triton outage, or abandoned by the reload governor's timeout), per minute "
        "of run. *Avg max batch*: time-weighted max batch size in effect (the paper's Fig. 6).",
        "- *Time in failsafe*: time the control loop ran on its safe settings (lowest clock, "
        "smallest batch) because power readings had failed for 2 s, the GPU was lost, a clock "
        "could not be set for 2 s, or Triton did not answer. The oracle meets no fault.",
        "",
    ]
