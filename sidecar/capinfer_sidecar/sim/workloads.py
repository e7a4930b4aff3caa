"""Benchmark workloads: YAML files listing jobs to simulate under each policy.

Format (every field of a job may also be set once under ``defaults``)::

    name: cap-changes                 # optional; defaults to the file name
    description: free text            # optional
    defaults:
      profile: p40                    # built-in profile set (p40, h100) or a path to one,
                                      # relative to this file
      duration_s: 180
      seed: 1
    jobs:
      - name: res50-drop              # unique; letters, digits, '-', '_' and '.'
        dnn: Res50                    # a DNN of the profile set
        dataset: caltech              # a dataset of the profile set for that DNN
        cap_watts: 200                # the cap at t = 0
        cap_changes:                  # optional: the cap moves during the run
          - {at_s: 60, cap_watts: 120}
          - {at_s: 120, cap_watts: 220}
        load: saturating              # or a mapping, see below
        duration_s: 180
        seed: 7                       # noise, jitter and arrivals; same seed, same run
        sample_interval_s: 0.1        # optional, default 0.1
        reload_s: 1.5                 # optional: Triton reload time; default from the profile
        band: 0.8                     # optional: alpha of the band [alpha * cap, cap]
        clocks: controlled            # controlled | refused (no permission) | none
        batch_sizes: [1, 2, 4, 8]     # optional: the ladder; default from the profile
        plot: true                    # optional: draw this job's power/batch timeline
        faults: {...}                 # optional: see below
        latency_slo_ms: 60            # optional: spec.latencySLO.p99Ms for the sidecar

Loads::

    load: saturating                                  # closed loop, every batch full
    load: {kind: saturating, concurrency: 24}         # closed loop with 24 clients
    load: {kind: poisson, rate_ips: 300}              # Poisson arrivals, 300/s
    load: {kind: poisson, rate_fraction: 0.3,         # 30% of the most the GPU can do
           changes: [{at_s: 60, rate_fraction: 0.9}]} # ... then 90% from t = 60 s
    load: {kind: bursty, low_fraction: 0.1, high_fraction: 0.9, period_s: 20, duty: 0.25}
                                                      # high for 25% of every 20 s, else low

``rate_fraction`` is relative to the highest saturating throughput of the (DNN, dataset) on
the GPU over every batch size and clock, ignoring the cap.

Faults (every part optional; see :mod:`capinfer_sidecar.sim.faults` for what each does)::

    faults:
      reloads: {fail_sizes: [256], probability: 0.05, hang_sizes: [128]}
      triton_outages: [{at_s: 60, duration_s: 8}]
      power_errors:                                   # kind: transient (default) or lost
        - {at_s: 30, duration_s: 1}                   # shorter than 2 s: retried
        - {at_s: 90, duration_s: 5}                   # stale readings: the failsafe
        - {at_s: 120, duration_s: 2, kind: lost}      # GPU_IS_LOST: the failsafe at once
      clock_errors: [{at_s: 100, duration_s: 3}]
      cap_storms:                                     # the cap flips between the caps
        - {at_s: 140, duration_s: 10, period_s: 1, caps_watts: [120, 200]}

Sizes must be on the job's ladder and windows inside the run. A cap storm becomes cap
changes (every ``period_s`` the next cap of the list, round and round, then back to the cap
in force before it, if the last flip did not land there); it must not overlap the job's own
``cap_changes``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capinfer_sidecar.sim.config import (
    DEFAULT_SAMPLE_INTERVAL_S,
    CapChange,
    ClockAccess,
    Load,
    PoissonLoad,
    RateStep,
    RunConfig,
    SaturatingLoad,
)
from capinfer_sidecar.sim.faults import (
    Faults,
    PowerErrorKind,
    PowerErrorWindow,
    ReloadFaults,
    Window,
)
from capinfer_sidecar.sim.profiles import ProfileSet, WorkloadProfile, load_profile_set
from capinfer_sidecar.sim.yamlread import Node, SpecError, load_yaml_file

JOB_FIELDS = (
    "name", "profile", "dnn", "dataset", "cap_watts", "cap_changes", "load", "duration_s",
    "seed", "sample_interval_s", "reload_s", "band", "clocks", "batch_sizes", "plot", "faults",
    "latency_slo_ms",
)  # fmt: skip
FAULT_FIELDS = ("reloads", "triton_outages", "power_errors", "clock_errors", "cap_storms")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Job:
    name: str
    profile_name: str
    dnn: str
    dataset: str
    config: RunConfig
    plot: bool

    @property
    def label(self) -> str:
        return f"{self.name} ({self.dnn}/{self.dataset}, {self.profile_name})"


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    source: str
    jobs: tuple[Job, ...]

    def select(self, names: list[str]) -> tuple[Job, ...]:
        """The jobs named (in the file's order); an unknown name is an error."""
        known = {job.name for job in self.jobs}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise SpecError(
                f"{self.source}: no job {unknown[0]!r} (jobs: {', '.join(sorted(known))})"
            )
        return tuple(job for job in self.jobs if job.name in names)


def load_workload(path: Path) -> Workload:
    return parse_workload(load_yaml_file(path), str(path), path.parent)


def parse_workload(document: object, source: str, base_dir: Path | None = None) -> Workload:
    root = Node(document, "", source)
    root.reject_unknown(["name", "description", "defaults", "jobs"])
    defaults: Mapping[str, Any] = {}
    if root.has("defaults"):
        defaults_node = root.child("defaults")
        defaults_node.reject_unknown([f for f in JOB_FIELDS if f != "name"])
        defaults = defaults_node.as_mapping()
    jobs_node = root.required("jobs")
    if not jobs_node.elements():
        raise jobs_node.error("expected at least one job")
    profiles: dict[str, ProfileSet] = {}
    jobs: list[Job] = []
    for node in jobs_node.elements():
        node.as_mapping()
        merged = Node({**defaults, **node.as_mapping()}, node.path, source)
        merged.reject_unknown(JOB_FIELDS)
        job = _parse_job(merged, profiles, base_dir)
        if any(existing.name == job.name for existing in jobs):
            raise merged.child("name").error(f"job name {job.name!r} is used twice")
        jobs.append(job)
    name = root.child("name").string() if root.has("name") else Path(source).stem
    description = root.child("description").string() if root.has("description") else ""
    return Workload(name=name, description=description, source=source, jobs=tuple(jobs))


def _parse_job(node: Node, profiles: dict[str, ProfileSet], base_dir: Path | None) -> Job:
    name_node = node.required("name")
    name = name_node.string()
    if not _NAME.match(name):
        raise name_node.error(f"{name!r}: use letters, digits, '-', '_' and '.' only")
    profile_node = node.required("profile")
    profile_name = profile_node.string()
    if profile_name not in profiles:
        try:
            profiles[profile_name] = load_profile_set(profile_name, base_dir)
        except SpecError as error:
            raise profile_node.error(str(error)) from None
    profile_set = profiles[profile_name]
    dnn = node.required("dnn").string()
    dataset = node.required("dataset").string()
    try:
        workload = profile_set.workload(dnn, dataset)
    except SpecError as error:
        raise node.child("dnn").error(str(error)) from None
    duration_s = node.required("duration_s").number(positive=True)
    cap_watts = node.required("cap_watts").number(positive=True)
    batch_sizes = (
        node.child("batch_sizes").ascending_integers() if node.has("batch_sizes") else None
    )
    cap_changes = _parse_cap_changes(node.child("cap_changes"), duration_s)
    faults = Faults()
    if node.has("faults"):
        faults_node = node.child("faults")
        ladder = batch_sizes or workload.gpu.batch_sizes
        faults = _parse_faults(faults_node, ladder, duration_s)
        if faults_node.has("cap_storms"):
            cap_changes = _with_storms(
                faults_node.child("cap_storms"), cap_watts, cap_changes, duration_s
            )
    config = RunConfig(
        profile=workload,
        cap_watts=cap_watts,
        duration_s=duration_s,
        cap_changes=cap_changes,
        load=_parse_load(node.child("load"), workload, duration_s),
        seed=node.child("seed").integer() if node.has("seed") else 0,
        sample_interval_s=_optional_number(node, "sample_interval_s", DEFAULT_SAMPLE_INTERVAL_S),
        reload_s=node.child("reload_s").number(minimum=0.0) if node.has("reload_s") else None,
        band=_parse_band(node),
        clocks=ClockAccess(node.child("clocks").choice([a.value for a in ClockAccess]))
        if node.has("clocks")
        else ClockAccess.CONTROLLED,
        batch_sizes=batch_sizes,
        faults=faults,
        latency_slo_ms=node.child("latency_slo_ms").number(positive=True)
        if node.has("latency_slo_ms")
        else None,
    )
    plot = node.child("plot").boolean() if node.has("plot") else False
    return Job(name, profile_name, dnn, dataset, config, plot)


def _optional_number(node: Node, key: str, default: float) -> float:
    return node.child(key).number(positive=True) if node.has(key) else default


def _parse_band(node: Node) -> float:
    if not node.has("band"):
        return 0.8
    band_node = node.child("band")
    band = band_node.number()
    if not 0.0 < band < 1.0:
        raise band_node.error(f"expected a fraction in (0, 1), got {band}")
    return band


def _parse_cap_changes(node: Node, duration_s: float) -> tuple[CapChange, ...]:
    if node.value is None:
        return ()
    changes: list[CapChange] = []
    for element in node.elements():
        element.reject_unknown(["at_s", "cap_watts"])
        at_node = element.required("at_s")
        at_s = at_node.number(positive=True)
        if at_s >= duration_s:
            raise at_node.error(f"{at_s:g} s is not before the end of the run ({duration_s:g} s)")
        if changes and at_s <= changes[-1].at_s:
            raise at_node.error("cap changes must be in ascending time order")
        changes.append(CapChange(at_s, element.required("cap_watts").number(positive=True)))
    return tuple(changes)


def _parse_faults(node: Node, ladder: tuple[int, ...], duration_s: float) -> Faults:
    node.reject_unknown(FAULT_FIELDS)
    reloads = ReloadFaults()
    if node.has("reloads"):
        reloads_node = node.child("reloads")
        reloads_node.reject_unknown(["fail_sizes", "probability", "hang_sizes"])
        failing = _sizes(reloads_node, "fail_sizes", ladder)
        hanging = _sizes(reloads_node, "hang_sizes", ladder)
        both = sorted(set(failing) & set(hanging))
        if both:
            raise reloads_node.error(f"batch size {both[0]} is in both fail_sizes and hang_sizes")
        probability = 0.0
        if reloads_node.has("probability"):
            probability_node = reloads_node.child("probability")
            probability = probability_node.number(minimum=0.0)
            if probability > 1.0:
                raise probability_node.error(f"expected a probability in [0, 1], got {probability}")
        reloads = ReloadFaults(failing, probability, hanging)
    power_errors = tuple(
        PowerErrorWindow(
            window.at_s,
            window.duration_s,
            PowerErrorKind(element.child("kind").choice([k.value for k in PowerErrorKind]))
            if element.has("kind")
            else PowerErrorKind.TRANSIENT,
        )
        for element, window in _windows(node, "power_errors", duration_s, extra=["kind"])
    )
    return Faults(
        reloads=reloads,
        triton_outages=tuple(w for _, w in _windows(node, "triton_outages", duration_s)),
        power_errors=power_errors,
        clock_errors=tuple(w for _, w in _windows(node, "clock_errors", duration_s)),
    )


def _sizes(node: Node, key: str, ladder: tuple[int, ...]) -> tuple[int, ...]:
    if not node.has(key):
        return ()
    sizes_node = node.child(key)
    sizes = sizes_node.ascending_integers()
    off_ladder = [size for size in sizes if size not in ladder]
    if off_ladder:
        raise sizes_node.error(
            f"batch size {off_ladder[0]} is not on the job's ladder {list(ladder)}"
        )
    return sizes


def _windows(
    node: Node, key: str, duration_s: float, extra: list[str] | None = None
) -> list[tuple[Node, Window]]:
    if not node.has(key):
        return []
    windows: list[tuple[Node, Window]] = []
    for element in node.child(key).elements():
        element.reject_unknown(["at_s", "duration_s", *(extra or [])])
        at_node = element.required("at_s")
        at_s = at_node.number(minimum=0.0)
        if at_s >= duration_s:
            raise at_node.error(f"{at_s:g} s is not before the end of the run ({duration_s:g} s)")
        window = Window(at_s, element.required("duration_s").number(positive=True))
        if windows and window.at_s < windows[-1][1].end_s:
            raise at_node.error(
                f"windows must be in time order without overlapping: this one starts at "
                f"{at_s:g} s, before the previous one ends ({windows[-1][1].end_s:g} s)"
            )
        windows.append((element, window))
    return windows


def _with_storms(
    node: Node, cap_watts: float, changes: tuple[CapChange, ...], duration_s: float
) -> tuple[CapChange, ...]:
    """The job's cap changes with each storm's flips merged in."""
    merged = list(changes)
    for element in node.elements():
        element.reject_unknown(["at_s", "duration_s", "period_s", "caps_watts"])
        at_node = element.required("at_s")
        at_s = at_node.number(positive=True)
        storm_s = element.required("duration_s").number(positive=True)
        period_node = element.required("period_s")
        period_s = period_node.number(positive=True)
        end_s = at_s + storm_s
        if end_s >= duration_s:
            raise at_node.error(
                f"the storm ends at {end_s:g} s, not before the end of the run ({duration_s:g} s)"
            )
        if period_s > storm_s:
            raise period_node.error(f"a period of {period_s:g} s is longer than the storm")
        caps_node = element.required("caps_watts")
        caps = [cap.number(positive=True) for cap in caps_node.elements()]
        if not caps:
            raise caps_node.error("expected at least one cap")
        clash = [c.at_s for c in merged if at_s <= c.at_s <= end_s]
        if clash:
            raise at_node.error(
                f"the storm from {at_s:g} s to {end_s:g} s overlaps a cap change at {clash[0]:g} s"
            )
        before = [c.cap_watts for c in merged if c.at_s < at_s]
        resume_watts = before[-1] if before else cap_watts
        flips = math.floor(storm_s / period_s + 1e-9)
        flipped = [CapChange(at_s + i * period_s, caps[i % len(caps)]) for i in range(flips)]
        merged.extend(flipped)
        if flipped[-1].cap_watts != resume_watts:
            merged.append(CapChange(end_s, resume_watts))
        merged.sort(key=lambda change: change.at_s)
    return tuple(merged)


def max_throughput_ips(workload: WorkloadProfile) -> float:
    """The most the GPU can do for this workload, over every batch size and clock, no cap."""
    gpu = workload.gpu
    clocks: tuple[int | None, ...] = (*gpu.clock_levels_mhz, None)
    return max(workload.throughput_ips(b, c) for b in gpu.batch_sizes for c in clocks)


def _parse_load(node: Node, workload: WorkloadProfile, duration_s: float) -> Load:
    if node.value is None or node.value == "saturating":
        return SaturatingLoad()
    if isinstance(node.value, str):
        raise node.error(f"expected 'saturating' or a mapping with a kind, got {node.value!r}")
    kind = node.required("kind").choice(["saturating", "poisson", "bursty"])
    if kind == "saturating":
        node.reject_unknown(["kind", "concurrency"])
        if not node.has("concurrency"):
            return SaturatingLoad()
        return SaturatingLoad(node.child("concurrency").integer(positive=True))
    peak_ips = max_throughput_ips(workload)
    if kind == "poisson":
        node.reject_unknown(["kind", "rate_ips", "rate_fraction", "changes"])
        steps = [RateStep(0.0, _rate(node, peak_ips))]
        if node.has("changes"):
            for element in node.child("changes").elements():
                element.reject_unknown(["at_s", "rate_ips", "rate_fraction"])
                at_node = element.required("at_s")
                at_s = at_node.number(positive=True)
                if at_s <= steps[-1].at_s:
                    raise at_node.error("load changes must be in ascending time order")
                steps.append(RateStep(at_s, _rate(element, peak_ips)))
        return PoissonLoad(tuple(steps))
    node.reject_unknown(["kind", "low_fraction", "high_fraction", "period_s", "duty"])
    low = node.required("low_fraction").number(minimum=0.0) * peak_ips
    high = node.required("high_fraction").number(minimum=0.0) * peak_ips
    period_s = node.required("period_s").number(positive=True)
    duty = node.required("duty").fraction()
    return PoissonLoad(tuple(_bursts(low, high, period_s, duty, duration_s)))


def _rate(node: Node, peak_ips: float) -> float:
    if node.has("rate_ips") == node.has("rate_fraction"):
        raise node.error("give exactly one of rate_ips and rate_fraction")
    if node.has("rate_ips"):
        return node.child("rate_ips").number(minimum=0.0)
    return node.child("rate_fraction").number(minimum=0.0) * peak_ips


def _bursts(
    low_ips: float, high_ips: float, period_s: float, duty: float, duration_s: float
) -> list[RateStep]:
    steps: list[RateStep] = []
    for cycle in range(math.ceil(duration_s / period_s)):
        start_s = cycle * period_s
        steps.append(RateStep(start_s, high_ips))
        if duty > 0:
            steps.append(RateStep(start_s + duty * period_s, low_ips))
    if duty > 0:
        return steps
    return [RateStep(0.0, low_ips)]
