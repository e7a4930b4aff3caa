"""What this pod buys with each watt: its throughput-versus-cap curve, from its own samples.

The budget controller splits a PowerBudget where a watt buys the most throughput, so each
sidecar publishes, in its status entry, the curve of its own GPUs
(:class:`capinfer_core.ThroughputCurve`). It is built from what the control loop observed:
for each setting the policy ran (batch size, SM clock), the peak power it drew and the
throughput it served: the policy's own measurements when it keeps them
(``Policy.measured_settings()``, Adaptive's plant table), else the loop's samples once the
setting had settled (the throughput figure spans two seconds, so the first samples after a
change still mix in the previous setting).
:func:`capinfer_core.curve_from_measurements` keeps the upper envelope: under a cap, the
best setting whose peak fits.

Whether the cap binds: the peak of the highest setting (largest batch, fastest clock) is
the pod's uncapped draw. Until the loop has run that setting, the pod may want anything up
to its declared cap, and says so.

Throughput follows the load as well as the setting: a pod with little traffic serves
little at any setting, and its curve is flat - which is what a budget should know.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from statistics import fmean

from capinfer_core import ThroughputCurve, curve_from_measurements
from capinfer_sidecar.loop import LoopSnapshot

SETTLE_S = 2.5
"""Samples of a setting count only this long after the loop moved to it."""
SAMPLES_PER_SETTING = 50
"""The most recent samples kept per setting (5 s at the default 100 ms)."""
MIN_SAMPLES = 5
"""A setting needs this many settled samples to be a point of the curve."""

Setting = tuple[int, int | None]


class CurveRecorder:
    """Fed every loop snapshot; answers the curve measured so far.

    ``is_top(batch_size, sm_clock_mhz)``: whether that is the highest setting the policy
    may use (the settings can change with spec.power, so it is asked each time).
    """

    def __init__(self, is_top: Callable[[int, int | None], bool]) -> None:
        self._is_top = is_top
        self._samples: dict[Setting, deque[tuple[float, float]]] = {}
        self._current: Setting | None = None
        self._since_s = 0.0

    def observe(self, snapshot: LoopSnapshot) -> None:
        setting = (snapshot.batch_size, snapshot.sm_clock_mhz)
        power, ips = snapshot.power_watts, snapshot.inferences_per_second
        if snapshot.degraded is not None or not (math.isfinite(power) and math.isfinite(ips)):
            self._current = None  # safe settings are no measurement; start over after
            return
        if setting != self._current:
            self._current, self._since_s = setting, snapshot.now_s
            return
        if snapshot.now_s - self._since_s < SETTLE_S:
            return
        samples = self._samples.setdefault(setting, deque(maxlen=SAMPLES_PER_SETTING))
        samples.append((power, ips))

    def points(self) -> list[tuple[float, float]]:
        """(peak watts, inferences/s) per setting with enough settled samples."""
        return [
            (max(p for p, _ in samples), fmean(i for _, i in samples))
            for samples in self._samples.values()
            if len(samples) >= MIN_SAMPLES
        ]

    def uncapped_watts(self, declared_cap_watts: float) -> float:
        """The peak of the highest setting, once measured; else the declared cap."""
        for (batch, clock), samples in self._samples.items():
            if len(samples) >= MIN_SAMPLES and self._is_top(batch, clock):
                return max(p for p, _ in samples)
        return declared_cap_watts

    def curve(
        self, declared_cap_watts: float, measured: Sequence[tuple[float, float]] = ()
    ) -> ThroughputCurve | None:
        """The curve so far; None before any setting has been measured.

        ``measured``: the policy's own ``(peak watts, inferences/s)`` per setting
        (``Policy.measured_settings()``), used when it has any: it tracks each setting's
        peak and throughput itself; these samples stand in for policies that keep none.
        """
        points = list(measured) or self.points()
        return curve_from_measurements(points, self.uncapped_watts(declared_cap_watts))
