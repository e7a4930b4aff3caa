"""The sidecar's Prometheus metrics, exported from the control loop's latest snapshot.

The loop already keeps every total (energy, seconds over the cap, violations, reloads),
so the metrics are a collector that renders the last :class:`LoopSnapshot` at scrape time
instead of a second set of counters kept in step with it; :class:`SupervisionCollector`
does the same for the supervisor's tasks and the spec in force. Names follow Prometheus
conventions: base units, ``_total`` on counters, ``_info`` for the label-only series.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from capinfer_sidecar.follower import SpecStatus
from capinfer_sidecar.loop import LoopSnapshot
from capinfer_sidecar.supervisor import Supervisor

PREFIX = "capinfer"


class SnapshotCollector:
    """Renders the latest loop snapshot; register it once, :meth:`update` every sample.

    ``const_labels`` go on every series (e.g. ``{"gpu_uuid": …}`` or the model name).
    """

    def __init__(self, const_labels: Mapping[str, str] | None = None) -> None:
        self._labels = dict(const_labels or {})
        self._snapshot: LoopSnapshot | None = None

    def update(self, snapshot: LoopSnapshot) -> None:
        self._snapshot = snapshot

    def register(self, registry: CollectorRegistry) -> SnapshotCollector:
        registry.register(self)
        return self

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        if snapshot is None:
            return
        yield from self._gauges(snapshot)
        yield from self._counters(snapshot)
        yield self._family(
            GaugeMetricFamily,
            "policy_info",
            "The power policy in control and its phase (value always 1).",
            1.0,
            {"policy": snapshot.policy, "state": snapshot.policy_state or "none"},
        )

    def _gauges(self, snapshot: LoopSnapshot) -> Iterator[Metric]:
        gauges: list[tuple[str, str, float | None]] = [
            (
                "gpu_power_watts",
                "Peak instantaneous GPU power over the last sample interval.",
                snapshot.power_watts,
            ),
            (
                "gpu_mean_power_watts",
                "Mean GPU power over the last sample interval, from the energy counter.",
                snapshot.mean_power_watts,
            ),
            ("power_cap_watts", "The power cap in force, per GPU.", snapshot.cap_watts),
            (
                "batch_size",
                "Triton's max batch size in effect for the controlled model.",
                float(snapshot.batch_size),
            ),
            (
                "requested_batch_size",
                "The max batch size the policy asks for (differs while a reload runs).",
                float(snapshot.requested_batch_size),
            ),
            (
                "sm_clock_mhz",
                "The locked SM clock; absent while the GPU manages its own clocks.",
                None if snapshot.sm_clock_mhz is None else float(snapshot.sm_clock_mhz),
            ),
            (
                "inferences_per_second",
                "Inferences Triton completed per second over the last sample interval.",
                snapshot.inferences_per_second,
            ),
            (
                "cap_infeasible",
                "1 while the cap is below what the least-power setting draws: the sidecar holds "
                "that setting, over the cap, and no setting can do better.",
                1.0 if snapshot.cap_infeasible else 0.0,
            ),
            (
                "clock_control",
                "1 while the sidecar may set SM clocks, 0 when it runs on the batch size alone.",
                1.0 if snapshot.clock_control else 0.0,
            ),
            (
                "request_p99_latency_seconds",
                "The model's p99 request latency in Triton (queue + compute) over Triton's"
                " summary window; absent while Triton does not measure it.",
                None if snapshot.p99_latency_ms is None else snapshot.p99_latency_ms / 1000,
            ),
            (
                "latency_slo_p99_seconds",
                "spec.latencySLO.p99Ms in force; absent without an SLO.",
                None if snapshot.latency_slo_ms is None else snapshot.latency_slo_ms / 1000,
            ),
            (
                "latency_slo_batch_ceiling",
                "The largest batch size the latency SLO leaves the policy; absent when it"
                " leaves the whole ladder.",
                None if snapshot.slo_batch_ceiling is None else float(snapshot.slo_batch_ceiling),
            ),
        ]
        for name, documentation, value in gauges:
            if value is not None and not math.isnan(value):
                yield self._family(GaugeMetricFamily, name, documentation, value)
        yield self._family(
            GaugeMetricFamily,
            "degraded",
            "1 while the loop runs on safe settings (stale power, Triton down), with why.",
            0.0 if snapshot.degraded is None else 1.0,
            {"reason": snapshot.degraded or ""},
        )
        quarantined = GaugeMetricFamily(
            f"{PREFIX}_reload_quarantined",
            "1 for each batch size Triton refused to load repeatedly (not tried for a while).",
            labels=[*self._labels, "batch_size"],
        )
        for size in snapshot.quarantined_batch_sizes:
            quarantined.add_metric([*self._labels.values(), str(size)], 1.0)
        yield quarantined

    def _counters(self, snapshot: LoopSnapshot) -> Iterator[Metric]:
        if not math.isnan(snapshot.energy_joules):
            yield self._family(
                CounterMetricFamily,
                "gpu_energy_joules",
                "Energy the GPU used since its driver loaded.",
                snapshot.energy_joules,
            )
        if snapshot.latency_slo_ms is not None:
            yield self._family(
                CounterMetricFamily,
                "latency_slo_misses",
                "Times the p99 latency went over spec.latencySLO.p99Ms (a run counts once).",
                float(snapshot.slo_misses),
            )
            yield self._family(
                CounterMetricFamily,
                "over_latency_slo_seconds",
                "Time the p99 latency spent over spec.latencySLO.p99Ms.",
                snapshot.seconds_over_slo,
            )
            yield self._family(
                GaugeMetricFamily,
                "latency_slo_unmet",
                "1 while p99 stays over the SLO and only the cap could give way (the cap"
                " wins), with why.",
                0.0 if snapshot.slo_unmet is None else 1.0,
                {"reason": snapshot.slo_unmet or ""},
            )
        yield self._family(
            CounterMetricFamily,
            "over_cap_seconds",
            "Time the GPU's power spent above the cap.",
            snapshot.seconds_over_cap,
        )
        yield self._family(
            CounterMetricFamily,
            "cap_violations",
            "Times the GPU's power went above the cap (each excursion counts once).",
            float(snapshot.violations),
        )
        reloads = CounterMetricFamily(
            f"{PREFIX}_reloads",
            "Triton model reloads to change the max batch size, by result.",
            labels=[*self._labels, "result"],
        )
        reloads.add_metric([*self._labels.values(), "ok"], float(snapshot.reloads))
        reloads.add_metric([*self._labels.values(), "failed"], float(snapshot.reload_failures))
        yield reloads

    def _family(
        self,
        kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
        name: str,
        documentation: str,
        value: float,
        labels: Mapping[str, str] | None = None,
    ) -> Metric:
        all_labels = {**self._labels, **(labels or {})}
        family = kind(f"{PREFIX}_{name}", documentation, labels=list(all_labels))
        family.add_metric(list(all_labels.values()), value)
        return family


class SupervisionCollector:
    """The supervisor's tasks and the spec in force, rendered at scrape time."""

    def __init__(
        self,
        supervisor: Supervisor,
        spec_status: SpecStatus,
        const_labels: Mapping[str, str] | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._spec = spec_status
        self._labels = dict(const_labels or {})

    def register(self, registry: CollectorRegistry) -> SupervisionCollector:
        registry.register(self)
        return self

    def collect(self) -> Iterator[Metric]:
        names, values = list(self._labels), list(self._labels.values())
        restarts = CounterMetricFamily(
            f"{PREFIX}_task_restarts",
            "Times a sidecar task was started again after an unexpected error.",
            labels=[*names, "task"],
        )
        failing = GaugeMetricFamily(
            f"{PREFIX}_task_failing",
            "1 while a sidecar task keeps failing (the pod is not ready meanwhile).",
            labels=[*names, "task"],
        )
        for task in self._supervisor.tasks:
            restarts.add_metric([*values, task.name], float(task.restarts))
            failing.add_metric(
                [*values, task.name], 1.0 if self._supervisor.failing(task.name) else 0.0
            )
        yield restarts
        yield failing
        rejected = CounterMetricFamily(
            f"{PREFIX}_spec_rejected",
            "Versions of spec.power the sidecar could not apply (it kept the last good one).",
            labels=names,
        )
        rejected.add_metric(values, float(self._spec.rejected_total))
        yield rejected
        invalid = GaugeMetricFamily(
            f"{PREFIX}_spec_invalid",
            "1 while the latest spec.power is not in force because it could not be applied.",
            labels=names,
        )
        invalid.add_metric(values, 0.0 if self._spec.problem is None else 1.0)
        yield invalid
