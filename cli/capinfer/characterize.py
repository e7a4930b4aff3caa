"""Characterization of a model on a GPU: the batch ladder swept, each point measured.

The sweep is pure logic over two small protocols, so it runs in tests without a GPU:

- a :class:`ModelRunner` runs one batch and returns when the device has finished it;
- a :class:`PowerMeter` gives power, utilization, clock, energy and memory readings.

For each batch size the runner warms up, then runs batches back to back for a timed window
while a background thread samples the meter every ~10 ms. A point records throughput,
latency percentiles, instant and averaged power (mean and peak), energy per inference (the
energy counter's delta over the window), SM utilization and memory used. The sweep stops at
the first batch size that does not fit in memory.

The results become a ``kind: measured`` profile (see :mod:`capinfer_sidecar.sim.profiles`)
that the simulator and ``capinfer bench`` load as they load the built-in ones, plus the raw
rows (CSV, JSON), two figures and a short markdown summary.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from capinfer.errors import UserError

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DATASET = "synthetic-224"
"""The input the runners feed: random 3x224x224 images already on the device."""
RELOAD_S_UNMEASURED = 1.4
"""Triton reload time written into profiles; the sweep does not measure reloads."""
CLOCK_CHANGE_S_UNMEASURED = 0.005
MAX_JITTER_FRACTION = 0.5


class OutOfMemoryError(Exception):
    """A batch size does not fit in device memory; the sweep ends there."""


class ModelRunner(Protocol):
    def run_batch(self, batch_size: int) -> None:
        """Run one batch of ``batch_size`` inputs; return once the device has finished it.

        Raises :class:`OutOfMemoryError` when the batch does not fit.
        """


@dataclass(frozen=True)
class Reading:
    """One sample of the meter."""

    instant_watts: float
    average_watts: float
    """The device's own average (1 s on H100-class GPUs)."""
    sm_utilization_percent: float
    sm_clock_mhz: float


class PowerMeter(Protocol):
    def read(self) -> Reading: ...

    def energy_joules(self) -> float:
        """A counter that only grows."""

    def memory_used_bytes(self) -> int: ...


class ClockControl(Protocol):
    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None: ...

    def reset_sm_clock(self) -> None: ...


@dataclass(frozen=True)
class SweepSettings:
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    seconds_per_point: float = 5.0
    warmup_batches: int = 10
    sample_interval_s: float = 0.01
    min_batches: int = 5
    """Even a slow batch size runs this many timed batches (percentiles need a few)."""


@dataclass(frozen=True)
class PointResult:
    """One batch size (at one clock) measured."""

    batch_size: int
    locked_clock_mhz: int | None
    batches: int
    inferences: int
    window_s: float
    throughput_ips: float
    cycle_s: float
    """Window per batch: the time a batch occupies back to back, overheads included."""
    latency_p50_ms: float
    latency_p99_ms: float
    instant_power_mean_watts: float
    instant_power_peak_watts: float
    average_power_mean_watts: float
    average_power_peak_watts: float
    energy_per_inference_joules: float
    sm_utilization_mean_percent: float
    sm_clock_mean_mhz: float
    memory_used_mib: float
    samples: int


@dataclass(frozen=True)
class SweepResult:
    points: tuple[PointResult, ...]
    out_of_memory_batch: int | None
    """The first batch size that did not fit, if the sweep stopped on one."""


@dataclass(frozen=True)
class IdleResult:
    mean_watts: float
    stdev_watts: float
    samples: int


@dataclass(frozen=True)
class GpuFacts:
    """What the profile says of the GPU beyond the sweep's points."""

    name: str
    power_limit_watts: float
    max_sm_clock_mhz: int


# -- measuring -------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Sampler:
    """Reads the meter every ``interval_s`` on a background thread, and once at each end.

    The readings at start and stop make sure a window shorter than the interval still has
    samples.
    """

    def __init__(self, meter: PowerMeter, interval_s: float) -> None:
        self._meter = meter
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="capinfer-sampler", daemon=True)
        self.readings: list[Reading] = []
        self._lock = threading.Lock()

    def _take(self) -> None:
        reading = self._meter.read()
        with self._lock:
            self.readings.append(reading)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._take()

    def __enter__(self) -> Sampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()


def measure_idle(meter: PowerMeter, duration_s: float, interval_s: float = 0.01) -> IdleResult:
    """Power with nothing running: the floor between batches."""
    with Sampler(meter, interval_s) as sampler:
        time.sleep(duration_s)
    watts = [r.instant_watts for r in sampler.readings]
    stdev = statistics.stdev(watts) if len(watts) > 1 else 0.0
    return IdleResult(mean_watts=statistics.fmean(watts), stdev_watts=stdev, samples=len(watts))


def measure_point(
    runner: ModelRunner,
    meter: PowerMeter,
    batch_size: int,
    settings: SweepSettings,
    *,
    locked_clock_mhz: int | None = None,
    now: Callable[[], float] = time.perf_counter,
) -> PointResult:
    """Warm up, then run batches back to back for the window; :class:`OutOfMemoryError` passes."""
    for _ in range(settings.warmup_batches):
        runner.run_batch(batch_size)
    latencies_s: list[float] = []
    energy_start_j = meter.energy_joules()
    with Sampler(meter, settings.sample_interval_s) as sampler:
        started = now()
        finished = started
        while finished - started < settings.seconds_per_point or (
            len(latencies_s) < settings.min_batches
        ):
            before = now()
            runner.run_batch(batch_size)
            finished = now()
            latencies_s.append(finished - before)
    energy_j = meter.energy_joules() - energy_start_j
    memory_bytes = meter.memory_used_bytes()
    window_s = finished - started
    batches = len(latencies_s)
    inferences = batches * batch_size
    readings = sampler.readings
    return PointResult(
        batch_size=batch_size,
        locked_clock_mhz=locked_clock_mhz,
        batches=batches,
        inferences=inferences,
        window_s=window_s,
        throughput_ips=inferences / window_s,
        cycle_s=window_s / batches,
        latency_p50_ms=1000.0 * percentile(latencies_s, 0.50),
        latency_p99_ms=1000.0 * percentile(latencies_s, 0.99),
        instant_power_mean_watts=statistics.fmean(r.instant_watts for r in readings),
        instant_power_peak_watts=max(r.instant_watts for r in readings),
        average_power_mean_watts=statistics.fmean(r.average_watts for r in readings),
        average_power_peak_watts=max(r.average_watts for r in readings),
        energy_per_inference_joules=energy_j / inferences,
        sm_utilization_mean_percent=statistics.fmean(r.sm_utilization_percent for r in readings),
        sm_clock_mean_mhz=statistics.fmean(r.sm_clock_mhz for r in readings),
        memory_used_mib=memory_bytes / 2**20,
        samples=len(readings),
    )


def sweep(
    runner: ModelRunner,
    meter: PowerMeter,
    settings: SweepSettings,
    *,
    locked_clock_mhz: int | None = None,
    progress: Callable[[PointResult], None] | None = None,
    now: Callable[[], float] = time.perf_counter,
) -> SweepResult:
    """Every batch size in order, up to the first one that does not fit."""
    points: list[PointResult] = []
    for batch_size in settings.batch_sizes:
        try:
            point = measure_point(
                runner, meter, batch_size, settings, locked_clock_mhz=locked_clock_mhz, now=now
            )
        except OutOfMemoryError:
            return SweepResult(tuple(points), out_of_memory_batch=batch_size)
        points.append(point)
        if progress is not None:
            progress(point)
    return SweepResult(tuple(points), out_of_memory_batch=None)


def clock_sweep(
    runner: ModelRunner,
    meter: PowerMeter,
    clocks: ClockControl,
    clocks_mhz: Sequence[int],
    settings: SweepSettings,
    *,
    progress: Callable[[PointResult], None] | None = None,
    now: Callable[[], float] = time.perf_counter,
) -> SweepResult:
    """The ladder at each locked clock; the clock is given back to the GPU whatever happens.

    The first clock fixes the ladder (memory does not depend on the clock), so every clock
    has the same batch sizes: a measured profile needs the full grid.
    """
    points: list[PointResult] = []
    ladder = settings
    out_of_memory: int | None = None
    try:
        for clock_mhz in clocks_mhz:
            clocks.set_locked_sm_clock_mhz(clock_mhz)
            result = sweep(
                runner, meter, ladder, locked_clock_mhz=clock_mhz, progress=progress, now=now
            )
            if out_of_memory is None and result.out_of_memory_batch is not None:
                out_of_memory = result.out_of_memory_batch
                fitted = tuple(p.batch_size for p in result.points)
                ladder = dataclasses.replace(settings, batch_sizes=fitted)
            points.extend(result.points)
    finally:
        clocks.reset_sm_clock()
    return SweepResult(tuple(points), out_of_memory_batch=out_of_memory)


# -- the profile -----------------------------------------------------------------------------


def jitter_fraction(points: Sequence[PointResult]) -> float:
    """How far above its mean instant power a batch size peaks: the median over points.

    The simulator draws each batch within ``busy * (1 +- jitter)``; writing
    ``busy = peak / (1 + jitter)`` keeps every measured peak exact and the mean close.
    """
    ratios = [
        p.instant_power_peak_watts / p.instant_power_mean_watts - 1.0
        for p in points
        if p.instant_power_mean_watts > 0
    ]
    if not ratios:
        return 0.0
    return min(max(statistics.median(ratios), 0.0), MAX_JITTER_FRACTION)


def profile_document(
    result: SweepResult, *, model: str, gpu: GpuFacts, idle: IdleResult, idle_floor_watts: float
) -> dict[str, Any]:
    """A ``kind: measured`` profile set with one workload: ``model`` on :data:`DATASET`.

    Without a clock sweep every point is labelled with the GPU's top clock, the one it
    boosts to when clocks are not locked, and the profile has that single clock level.
    """
    if not result.points:
        raise UserError("no batch size fitted in memory: nothing to write a profile from")
    jitter = jitter_fraction(result.points)
    clocks = sorted({p.locked_clock_mhz or gpu.max_sm_clock_mhz for p in result.points})
    batches = sorted({p.batch_size for p in result.points})
    points = [
        {
            "batch": p.batch_size,
            "clock_mhz": p.locked_clock_mhz or gpu.max_sm_clock_mhz,
            # The runner feeds inputs already on the device: no host time between batches,
            # so the whole cycle is the batch's latency and the profile's throughput is the
            # measured one.
            "latency_s": p.cycle_s,
            "prep_s": 0.0,
            "busy_watts": p.instant_power_peak_watts / (1.0 + jitter),
        }
        for p in result.points
    ]
    loaded_idle = min(idle.mean_watts, 0.95 * gpu.power_limit_watts)
    return {
        "kind": "measured",
        "description": f"{model} measured by capinfer characterize on {gpu.name}",
        "gpu": {
            "name": gpu.name,
            "power_limit_watts": gpu.power_limit_watts,
            "idle_floor_watts": min(idle_floor_watts, loaded_idle),
            "loaded_idle_watts": loaded_idle,
            "clock_levels_mhz": clocks,
            "default_clock_mhz": clocks[-1],
            "batch_sizes": batches,
            "clock_change_s": CLOCK_CHANGE_S_UNMEASURED,
            "reload_s": RELOAD_S_UNMEASURED,
            "power_noise_watts": idle.stdev_watts,
            "power_jitter_fraction": jitter,
        },
        "workloads": [{"dnn": model, "dataset": DATASET, "points": points}],
    }


PROFILE_HEADER = """\
# Written by `capinfer characterize`; load it with `--profile` / `profile:` like a built-in.
# latency_s is the measured time per batch back to back (prep_s 0: inputs already on the
# device). busy_watts * (1 + power_jitter_fraction) is the measured peak instant power.
# loaded_idle_watts and power_noise_watts: instant power with the model loaded and idle.
# clock_change_s and reload_s are not measured by the sweep (defaults).
"""


def write_profile(document: dict[str, Any], path: Path) -> None:
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100)
    path.write_text(PROFILE_HEADER + text, encoding="utf-8")


# -- the raw rows, figures and summary ----------------------------------------------------------

ROW_FIELDS = tuple(field.name for field in dataclasses.fields(PointResult))


def write_rows(result: SweepResult, csv_path: Path, json_path: Path, meta: dict[str, Any]) -> None:
    with csv_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for point in result.points:
            writer.writerow(dataclasses.asdict(point))
    document = {
        **meta,
        "out_of_memory_batch": result.out_of_memory_batch,
        "rows": [dataclasses.asdict(p) for p in result.points],
    }
    json_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


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


def _by_clock(result: SweepResult) -> dict[int | None, list[PointResult]]:
    series: dict[int | None, list[PointResult]] = {}
    for point in result.points:
        series.setdefault(point.locked_clock_mhz, []).append(point)
    return series


def _label(clock_mhz: int | None) -> str:
    return "clocks not locked" if clock_mhz is None else f"{clock_mhz} MHz"


def write_figures(
    result: SweepResult, out_dir: Path, *, title: str, power_limit_watts: float
) -> list[tuple[str, str]]:
    """Throughput and power against batch size; returns ``(title, file name)`` pairs."""
    plt = _pyplot()
    figures: list[tuple[str, str]] = []
    series = _by_clock(result)

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for clock, points in series.items():
        axes.plot(
            [p.batch_size for p in points],
            [p.throughput_ips for p in points],
            marker="o",
            label=_label(clock),
        )
    axes.set(xscale="log", xlabel="batch size", ylabel="inferences / s", title=title)
    axes.set_xscale("log", base=2)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    name = "throughput_vs_batch.png"
    figure.savefig(out_dir / name, dpi=100)
    plt.close(figure)
    figures.append(("Throughput against batch size", name))

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for clock, points in series.items():
        sizes = [p.batch_size for p in points]
        line = axes.plot(
            sizes,
            [p.instant_power_peak_watts for p in points],
            marker="o",
            label=f"peak instant, {_label(clock)}",
        )[0]
        axes.plot(
            sizes,
            [p.instant_power_mean_watts for p in points],
            linestyle="--",
            color=line.get_color(),
            label=f"mean instant, {_label(clock)}",
        )
        axes.plot(
            sizes,
            [p.average_power_peak_watts for p in points],
            linestyle=":",
            color=line.get_color(),
            label=f"peak 1 s average, {_label(clock)}",
        )
    axes.axhline(power_limit_watts, color="grey", linewidth=1, label="power limit")
    axes.set(xlabel="batch size", ylabel="watts", title=title)
    axes.set_xscale("log", base=2)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    name = "peak_power_vs_batch.png"
    figure.savefig(out_dir / name, dpi=100)
    plt.close(figure)
    figures.append(("Power against batch size", name))
    return figures


def render_summary(
    result: SweepResult,
    *,
    model: str,
    gpu: GpuFacts,
    idle: IdleResult,
    settings: SweepSettings,
    files: Sequence[tuple[str, str]],
    command: str,
) -> str:
    lines = [
        f"# {model} on {gpu.name}",
        "",
        f"`{command}`",
        "",
        f"Power limit {gpu.power_limit_watts:.0f} W; loaded idle {idle.mean_watts:.1f} W "
        f"(sd {idle.stdev_watts:.1f} W, {idle.samples} samples). "
        f"{settings.seconds_per_point:g} s per point after {settings.warmup_batches} warm-up "
        f"batches; power sampled every {1000 * settings.sample_interval_s:g} ms.",
        "",
    ]
    if result.out_of_memory_batch is not None:
        lines += [f"Batch size {result.out_of_memory_batch} did not fit in memory.", ""]
    lines += [
        "| batch | clock | inf/s | p50 ms | p99 ms | inst. mean W | inst. peak W "
        "| 1 s avg peak W | J/inf | SM util % | SM MHz | mem MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result.points:
        clock = "auto" if p.locked_clock_mhz is None else str(p.locked_clock_mhz)
        lines.append(
            f"| {p.batch_size} | {clock} | {p.throughput_ips:.1f} | {p.latency_p50_ms:.2f} "
            f"| {p.latency_p99_ms:.2f} | {p.instant_power_mean_watts:.1f} "
            f"| {p.instant_power_peak_watts:.1f} | {p.average_power_peak_watts:.1f} "
            f"| {p.energy_per_inference_joules:.4f} | {p.sm_utilization_mean_percent:.0f} "
            f"| {p.sm_clock_mean_mhz:.0f} | {p.memory_used_mib:.0f} |"
        )
    lines += ["", "Files:", ""]
    lines += [f"- {what}: `{name}`" for what, name in files]
    return "\n".join(lines) + "\n"
