"""``capinfer bench``: simulate policies on a workload, print a summary, write a report.

The logic lives in :mod:`capinfer.bench`; this module parses arguments, shows
progress on stderr, prints the summary and writes ``report.md``, ``results.json`` and the
figures into the output folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from capinfer.bench import (
    BASELINE,
    DEFAULT_POLICIES,
    BenchResult,
    parse_policy_list,
    render_markdown,
    run_bench,
)
from capinfer.benchplots import write_figures
from capinfer.errors import UserError
from capinfer.fleetbench import (
    fleet_results,
    parse_split_list,
    render_fleet_markdown,
    run_fleet_bench,
)
from capinfer_core.budget import SplitPolicy
from capinfer_sidecar.sim.fleet import is_fleet_workload, load_fleet_workload
from capinfer_sidecar.sim.workloads import load_workload
from capinfer_sidecar.sim.yamlread import SpecError


class ProgressBar:
    """One line redrawn in place on a terminal; one line per job otherwise."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()
        self._last_job = ""
        self._started = time.monotonic()

    def __call__(self, done: int, total: int, job: str, running: str) -> None:
        elapsed = time.monotonic() - self._started
        if not self._tty:
            if job and job != self._last_job:
                print(f"[bench] {done}/{total} runs, {elapsed:.0f} s: {job}", file=self._stream)
            elif not job:
                print(f"[bench] {done}/{total} runs in {elapsed:.1f} s", file=self._stream)
            self._last_job = job
            self._stream.flush()
            return
        filled = self._width * done // max(total, 1)
        bar = "#" * filled + "-" * (self._width - filled)
        what = f"{job} {running}".strip()
        end = "\n" if not job else ""
        self._stream.write(f"\r[bench] [{bar}] {done}/{total} {elapsed:5.1f} s {what:<40}{end}")
        self._stream.flush()


def _bench(args: argparse.Namespace) -> int:
    try:
        fleet = is_fleet_workload(args.workload)
    except SpecError as error:
        raise UserError(str(error)) from None
    if fleet:
        return _fleet_bench(args)
    if args.policies is None:
        args.policies = ",".join(DEFAULT_POLICIES)
    try:
        workload = load_workload(args.workload)
        policies = parse_policy_list(args.policies)
        names = [n.strip() for n in args.jobs.split(",") if n.strip()] if args.jobs else []
        jobs = workload.select(names) if names else workload.jobs
    except SpecError as error:
        raise UserError(str(error)) from None
    out_dir: Path = args.out
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out_dir}: cannot create the folder: {error.strerror}") from None
    progress = None if args.quiet else ProgressBar(sys.stderr)
    bench = run_bench(workload, policies, jobs, progress)
    figures = [] if args.no_plots else write_figures(bench, out_dir)
    command = _command_line(args)
    (out_dir / "report.md").write_text(render_markdown(bench, figures, command), encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(_results(bench), indent=1) + "\n")
    _print_summary(bench)
    print(f"report: {out_dir / 'report.md'}")
    failed = sum(1 for o in bench.jobs for run in o.runs.values() if run.error is not None)
    if failed:
        print(f"capinfer: {failed} run(s) failed; see the report", file=sys.stderr)
        return 1
    return 0


def _fleet_bench(args: argparse.Namespace) -> int:
    if args.jobs:
        raise UserError("--jobs: a fleet runs all its members together")
    if args.policies is None:
        args.policies = ",".join(s.value for s in SplitPolicy)
    try:
        fleet = load_fleet_workload(args.workload)
        splits = parse_split_list(args.policies)
    except (SpecError, ValueError) as error:
        raise UserError(str(error)) from None
    out_dir: Path = args.out
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out_dir}: cannot create the folder: {error.strerror}") from None
    started = time.monotonic()

    def progress(split: str, now_s: float, duration_s: float) -> None:
        if not args.quiet:
            elapsed = time.monotonic() - started
            print(
                f"[bench] {split}: {now_s:.0f}/{duration_s:.0f} s simulated, {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    bench = run_fleet_bench(fleet, splits, progress)
    command = _command_line(args)
    (out_dir / "report.md").write_text(render_fleet_markdown(bench, command), encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(fleet_results(bench), indent=1) + "\n")
    print(f"{fleet.workload.name}: oracle split {bench.oracle_ips:.1f}/s")
    print(f"{'split':<14} {'/s':>9} {'/oracle':>8} {'/Equal':>7} {'over':>7} {'worst W':>8}")
    for split, m in bench.metrics.items():
        vs_equal = bench.versus(split, SplitPolicy.EQUAL)
        print(
            f"{split.value:<14} {m.throughput_ips:>9.1f} {bench.versus_oracle(split):>8.3f} "
            f"{'-' if vs_equal is None else f'{vs_equal:.3f}':>7} "
            f"{100 * m.over_budget_fraction:>6.2f}% {m.worst_overshoot_watts:>8.1f}"
        )
    print(f"report: {out_dir / 'report.md'}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces the report, for its header."""
    words = ["capinfer", "bench", "--workload", str(args.workload), "--out", str(args.out)]
    words += ["--policies", args.policies]
    if args.jobs:
        words += ["--jobs", args.jobs]
    return " ".join(shlex.quote(word) for word in words)


def _print_summary(bench: BenchResult) -> None:
    print(
        f"{bench.workload.name}: {len(bench.jobs)} jobs; the control loop on the simulator ran "
        f"{bench.simulator_speedup:.0f}x faster than real time "
        f"({bench.speedup:.0f}x with the policies' decisions; slowest run "
        f"{bench.slowest_speedup:.0f}x, {bench.slowest_run})"
    )
    header = f"{'policy':<16} {'/DVFS':>7} {'/oracle':>8} {'over cap':>9} {'worst W':>8}"
    print(header + f" {'settle s':>9} {'reloads':>8} {'fail/min':>9} {'failsafe':>9}")
    for s in bench.summaries():
        vs_dvfs = "-" if s.geomean_vs_dvfs is None else f"{s.geomean_vs_dvfs:.3f}"
        vs_oracle = "-" if s.geomean_vs_oracle is None else f"{s.geomean_vs_oracle:.3f}"
        settle = "-"
        if s.cap_changes:
            settle = "never" if s.unsettled else f"{s.worst_settling_s:.1f}"
        print(
            f"{s.policy:<16} {vs_dvfs:>7} {vs_oracle:>8} {s.over_cap_percent:>8.2f}% "
            f"{s.worst_overshoot_watts:>8.1f} {settle:>9} {s.reloads:>8} "
            f"{s.failed_loads_per_minute:>9.2f} {s.failsafe_percent:>8.2f}%"
        )


def _results(bench: BenchResult) -> dict[str, Any]:
    """Every figure of the report, for scripts."""
    jobs = []
    for outcome in bench.jobs:
        runs: dict[str, Any] = {}
        for policy, run in outcome.runs.items():
            m = run.metrics
            runs[policy] = {"error": run.error} if m is None else {
                "throughput_ips": m.throughput_ips,
                "vs_dvfs": outcome.versus(policy, BASELINE),
                "vs_oracle": outcome.versus_oracle(policy),
                "over_cap_fraction": m.over_cap_fraction,
                "worst_overshoot_watts": m.worst_overshoot_watts,
                "settling_s": [s.settling_s for s in m.settling],
                "reloads": m.reloads,
                "reload_failures": m.reload_failures,
                "failed_loads_per_minute": m.failed_loads_per_minute,
                "failsafe_s": m.failsafe_s,
                "quarantined_batch_sizes": list(m.quarantined_batch_sizes),
                "clock_changes": m.clock_changes,
                "mean_batch_setting": m.mean_batch_setting,
                "mean_formed_batch": m.mean_formed_batch,
                "mean_power_watts": m.mean_power_watts,
                "speedup": m.speedup,
            }  # fmt: skip
        jobs.append(
            {
                "job": outcome.job.name,
                "dnn": outcome.job.dnn,
                "dataset": outcome.job.dataset,
                "profile": outcome.job.profile_name,
                "oracle_ips": outcome.oracle.throughput_ips,
                "oracle_closed_form_ips": outcome.oracle.closed_form_ips,
                "oracle_pairs": [
                    {"from_s": start, "batch_size": p.batch_size, "clock_mhz": p.clock_mhz}
                    for start, p in outcome.oracle.pairs
                ],
                "policies": runs,
            }
        )
    summaries = {s.policy: vars(s) for s in bench.summaries()}
    return {
        "workload": bench.workload.name,
        "speedup": bench.speedup,
        "slowest_speedup": bench.slowest_speedup,
        "slowest_run": bench.slowest_run,
        "summary": summaries,
        "jobs": jobs,
    }


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="simulate power policies on a workload and write a report",
        description=(
            "Run every job of a workload (YAML; format in capinfer_sidecar/sim/workloads.py"
            " and bench/workloads/README.md) on the simulated GPU and Triton, each policy in the"
            " sidecar's own control loop on virtual time, and the oracle; print a summary and"
            " write report.md, results.json and PNG figures. A fleet workload (one with a"
            " 'fleet' section: many GPUs under one power budget) runs every split policy"
            " instead, against the oracle split."
        ),
    )
    parser.add_argument("--workload", required=True, type=Path, help="the workload YAML file")
    parser.add_argument("--out", required=True, type=Path, help="folder for the report")
    parser.add_argument(
        "--policies",
        default=None,
        help=f"comma-separated policies (default {','.join(DEFAULT_POLICIES)}); "
        "Static:BATCH@MHZ fixes a pair. For a fleet workload: split policies "
        f"(default {','.join(s.value for s in SplitPolicy)})",
    )
    parser.add_argument("--jobs", default="", help="comma-separated job names (default: all)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(handler=_bench)
