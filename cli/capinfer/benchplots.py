"""Figures of ``capinfer bench`` (matplotlib, Agg backend, small PNGs).

In the spirit of the BatchSizer paper: throughput against DVFS per job (Fig. 5), the average
batch size per job (Fig. 6), and power and batch size over time for a few jobs (Fig. 7, 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capinfer.bench import BASELINE, BenchResult, JobOutcome
from capinfer.errors import UserError

DPI = 100
MAX_TIMELINES = 6


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 (optional dependency, only for figures)
    except ImportError:
        raise UserError(
            "figures need matplotlib: pip install 'capinfer[bench]', or pass --no-plots"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def write_figures(bench: BenchResult, out_dir: Path) -> list[tuple[str, str]]:
    """Draw every figure into ``out_dir``; returns ``(title, file name)`` pairs."""
    plt = _pyplot()
    figures: list[tuple[str, str]] = []
    others = [p for p in bench.policies if p != BASELINE]
    if BASELINE in bench.policies and others:
        name = "throughput_vs_dvfs.png"
        _bars(
            plt,
            bench,
            out_dir / name,
            series=[(p, [o.versus(p, BASELINE) for o in bench.jobs]) for p in others]
            + [("oracle", [o.oracle_versus(BASELINE) for o in bench.jobs])],
            ylabel="throughput / DVFS",
            reference=1.0,
        )
        figures.append(("Throughput against DVFS (paper Fig. 5)", name))
    name = "throughput_vs_oracle.png"
    _bars(
        plt,
        bench,
        out_dir / name,
        series=[(p, [o.versus_oracle(p) for o in bench.jobs]) for p in bench.policies],
        ylabel="throughput / oracle",
        reference=1.0,
    )
    figures.append(("Throughput against the oracle", name))
    name = "batch_size.png"
    _bars(
        plt,
        bench,
        out_dir / name,
        series=[(p, [_mean_batch(o, p) for o in bench.jobs]) for p in bench.policies]
        + [("oracle", [o.oracle.metrics.mean_batch_setting for o in bench.jobs])],
        ylabel="average max batch size",
        log2=True,
    )
    figures.append(("Average batch size (paper Fig. 6)", name))
    for outcome in timeline_jobs(bench):
        name = f"timeline_{outcome.job.name}.png"
        _timeline(plt, bench, outcome, out_dir / name)
        figures.append((f"Power, batch size and clock over time: {outcome.job.label}", name))
    return figures


def timeline_jobs(bench: BenchResult) -> list[JobOutcome]:
    """The jobs marked ``plot: true``, else the first few (as the paper shows five)."""
    marked = [o for o in bench.jobs if o.job.plot]
    return (marked or list(bench.jobs))[:MAX_TIMELINES]


def _mean_batch(outcome: JobOutcome, policy: str) -> float | None:
    metrics = outcome.metrics(policy)
    return None if metrics is None else metrics.mean_batch_setting


def _bars(
    plt: Any,
    bench: BenchResult,
    path: Path,
    *,
    series: Sequence[tuple[str, Sequence[float | None]]],
    ylabel: str,
    reference: float | None = None,
    log2: bool = False,
) -> None:
    jobs = [o.job.name for o in bench.jobs]
    width = 0.8 / max(len(series), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * len(jobs) + 2), 3.6))
    for index, (label, values) in enumerate(series):
        xs = [j + (index - (len(series) - 1) / 2) * width for j in range(len(jobs))]
        heights = [math.nan if v is None else v for v in values]
        axes.bar(xs, heights, width=width, label=label)
    if reference is not None:
        axes.axhline(reference, color="black", linewidth=0.8)
    if log2:
        axes.set_yscale("log", base=2)
    else:
        finite = [v for _, values in series for v in values if v is not None]
        if finite:
            axes.set_ylim(max(0.0, min(finite) - 0.1), max(finite) + 0.05)
    axes.set_xticks(range(len(jobs)))
    axes.set_xticklabels(jobs, rotation=60, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", linewidth=0.3)
    axes.legend(fontsize=7, ncol=min(len(series), 5), loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _timeline(plt: Any, bench: BenchResult, outcome: JobOutcome, path: Path) -> None:
    figure, (power, batch, clock) = plt.subplots(3, 1, figsize=(9, 6.5), sharex=True)
    first = True
    for policy in bench.policies:
        run = outcome.runs[policy]
        if run.result is None:
            continue
        trace = run.result.trace
        if first:
            power.step(trace.time_s, trace.cap_watts, where="pre", color="black", label="cap")
            first = False
        power.plot(trace.time_s, trace.true_peak_watts, linewidth=0.6, alpha=0.8, label=policy)
        batch.step(trace.time_s, trace.batch_size, where="pre", linewidth=1.0, label=policy)
        clock.step(trace.time_s, trace.clock_mhz, where="pre", linewidth=1.0, label=policy)
    _shade_faults(outcome, (power, batch, clock))
    power.set_ylabel("peak power (W)")
    power.legend(fontsize=7, ncol=len(bench.policies) + 4, loc="lower left")
    batch.set_yscale("log", base=2)
    batch.set_ylabel("max batch size")
    clock.set_ylabel("SM clock (MHz)")
    clock.set_xlabel("time (s)")
    for axes in (power, batch, clock):
        axes.grid(linewidth=0.3)
    power.set_title(outcome.job.label, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _shade_faults(outcome: JobOutcome, panels: Sequence[Any]) -> None:
    """The job's fault windows, shaded on every panel (labelled once, on the first)."""
    faults = outcome.job.config.faults
    kinds = [
        ("Triton down", "tab:purple", faults.triton_outages),
        ("power reads fail", "tab:red", faults.power_errors),
        ("clock sets fail", "tab:orange", faults.clock_errors),
    ]
    for label, color, windows in kinds:
        for index, window in enumerate(windows):
            for number, axes in enumerate(panels):
                named = index == 0 and number == 0
                axes.axvspan(
                    window.at_s,
                    window.end_s,
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                    label=label if named else None,
                )
