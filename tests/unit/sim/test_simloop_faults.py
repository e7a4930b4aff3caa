"""The benchmark runs production's control loop: its failure paths show up in a run."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
from typing import Any

import pytest
from sim_helpers import Scripted

from capinfer_sidecar.loop import LoopSnapshot
from capinfer_sidecar.policies import make_policy
from capinfer_sidecar.policies.base import Decision, Knobs, Observation
from capinfer_sidecar.sim.config import CapChange, RunConfig
from capinfer_sidecar.sim.faults import (
    Faults,
    PowerErrorKind,
    PowerErrorWindow,
    ReloadFaults,
    Window,
)
from capinfer_sidecar.sim.metrics import compute_metrics
from capinfer_sidecar.sim.profiles import load_profile_set
from capinfer_sidecar.simloop import VirtualTimeLoop, run

RES50 = load_profile_set("p40").workload("Res50", "caltech")
LOWEST_MHZ = RES50.gpu.clock_levels_mhz[0]


def config(**overrides: Any) -> RunConfig:
    base = RunConfig(profile=RES50, cap_watts=250.0, duration_s=60.0, seed=11)
    return dataclasses.replace(base, **overrides)


def test_a_size_triton_refuses_is_backed_off_then_quarantined_by_the_governor() -> None:
    snapshots: list[LoopSnapshot] = []
    faults = Faults(reloads=ReloadFaults(failing_sizes=(64,)))
    result = run(
        config(faults=faults, initial_batch_size=16),
        Scripted(Knobs(64, 1303)),
        on_snapshot=snapshots.append,
    )
    # Production's ReloadGovernor: a try at once, again 5 s after it failed, then 10 s
    # after; the third failure in a row quarantines 64 for 30 min: no fourth load.
    assert result.reloads == 3
    assert result.reload_failures == 3
    assert result.quarantined_batch_sizes == (64,)
    assert set(result.trace.batch_size) == {16}  # the old size served throughout
    assert compute_metrics(result).failed_loads_per_minute == pytest.approx(3.0)
    failures = [
        later.now_s
        for earlier, later in itertools.pairwise(snapshots)
        if later.reload_failures > earlier.reload_failures
    ]
    reload_s = RES50.reload_s
    assert failures[0] == pytest.approx(reload_s, abs=0.11)
    assert failures[1] - failures[0] == pytest.approx(5.0 + reload_s, abs=0.11)
    assert failures[2] - failures[1] == pytest.approx(10.0 + reload_s, abs=0.11)
    blocked = [s.reload_blocked for s in snapshots if s.reload_blocked]
    assert any("failed to load 1 times in a row; next try in" in b for b in blocked)
    assert any("batch size 64 is quarantined" in b for b in blocked)


def test_a_short_burst_of_nvml_errors_is_retried_a_long_one_is_the_failsafe() -> None:
    faults = Faults(
        power_errors=(
            PowerErrorWindow(10.0, 1.0, PowerErrorKind.TRANSIENT),
            PowerErrorWindow(20.0, 6.0, PowerErrorKind.TRANSIENT),
            PowerErrorWindow(40.0, 3.0, PowerErrorKind.LOST),
        )
    )
    snapshots: list[LoopSnapshot] = []
    result = run(config(faults=faults), Scripted(Knobs(64, 1303)), on_snapshot=snapshots.append)
    degraded = {round(s.now_s, 1): s.degraded for s in snapshots}
    assert all(degraded[round(10.0 + 0.1 * i, 1)] is None for i in range(12))
    # Stale after 2 s of failed reads, until readings return at 26 s.
    assert degraded[21.9] is None
    assert degraded[22.5] == "power readings stopped"
    assert degraded[26.5] is None
    # A lost GPU: the failsafe at once.
    assert degraded[40.2] is not None and degraded[40.2].startswith("GPU lost")
    assert result.failsafe_s == pytest.approx((26.0 - 22.0) + 3.0, abs=0.5)
    # The failsafe locks the lowest clock: the trace (true clocks) shows it. A lost GPU
    # cannot be set either: its clock stays what it was until it answers.
    trace = result.trace
    at = {round(t, 1): c for t, c in zip(trace.time_s, trace.clock_mhz, strict=True)}
    assert at[24.0] == LOWEST_MHZ
    assert at[15.0] == 1303 and at[35.0] == 1303 and at[41.0] == 1303
    assert math.isnan(trace.power_watts[trace.time_s.index(pytest.approx(24.0))])


def test_a_triton_outage_is_the_failsafe_on_the_clock_knob() -> None:
    faults = Faults(triton_outages=(Window(20.0, 8.0),))
    snapshots: list[LoopSnapshot] = []
    result = run(config(faults=faults), Scripted(Knobs(64, 1303)), on_snapshot=snapshots.append)
    reasons = {s.degraded for s in snapshots if 20.2 < s.now_s < 27.9}
    assert reasons == {"Triton is unreachable"}
    assert result.failsafe_s == pytest.approx(8.0, abs=0.3)
    assert result.trace.clock_mhz[result.trace.time_s.index(pytest.approx(25.0))] == LOWEST_MHZ


class FailsAfter(Scripted):
    """Raises from its step from ``fail_from_s`` to ``fail_until_s``."""

    def __init__(self, fail_from_s: float, fail_until_s: float) -> None:
        super().__init__(Knobs(64, 1303))
        self.fail_from_s = fail_from_s
        self.fail_until_s = fail_until_s

    def step(self, observation: Observation) -> Decision:
        if self.fail_from_s <= observation.now_s < self.fail_until_s:
            raise RuntimeError("policy bug")
        return super().step(observation)


def test_a_loop_that_raises_is_restarted_by_its_supervisor_on_the_lowest_clock() -> None:
    result = run(config(), FailsAfter(10.0, 14.0))
    assert result.loop_error == "RuntimeError: policy bug"
    assert result.loop_failures >= 3  # restarted with a doubling backoff from 0.5 s
    trace = result.trace
    clock_at = {round(t, 1): c for t, c in zip(trace.time_s, trace.clock_mhz, strict=True)}
    assert clock_at[10.5] == LOWEST_MHZ  # held through the backoff
    assert clock_at[30.0] == 1303  # and control resumed once the policy stopped raising


def test_the_oracle_meets_no_fault() -> None:
    faults = Faults(reloads=ReloadFaults(probability=1.0), triton_outages=(Window(5.0, 10.0),))
    from capinfer_sidecar.simloop import run_oracle  # noqa: PLC0415

    result = run_oracle(config(faults=faults, cap_watts=150.0))
    assert result.reload_failures == 0 and result.failsafe_s == 0.0


def test_adaptive_holds_the_cap_through_failed_reloads() -> None:
    faults = Faults(reloads=ReloadFaults(probability=0.5))
    changes = tuple(CapChange(at_s, cap) for at_s, cap in ((20, 120), (40, 200), (60, 140)))
    job = config(faults=faults, cap_watts=180.0, duration_s=90.0, cap_changes=changes)
    result = run(job, make_policy("Adaptive"))
    metrics = compute_metrics(result)
    assert metrics.reload_failures > 0
    print(
        f"Adaptive with half its loads failing: {metrics.throughput_ips:.1f}/s, "
        f"{metrics.reload_failures} failed, {100 * metrics.over_cap_fraction:.2f}% over"
    )
    assert metrics.over_cap_fraction < 0.02
    assert result.loop_error is None


def test_the_sleep_shortcut_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    faults = Faults(reloads=ReloadFaults(probability=0.2), triton_outages=(Window(8.0, 3.0),))
    job = config(faults=faults, duration_s=20.0, cap_watts=160.0)
    fast = run(job, make_policy("Adaptive"))

    async def plain_sleep(self: VirtualTimeLoop, delay_s: float) -> None:
        del self
        await asyncio.sleep(delay_s)

    monkeypatch.setattr(VirtualTimeLoop, "sleep", plain_sleep)
    plain = run(job, make_policy("Adaptive"))
    assert fast.trace.true_peak_watts == plain.trace.true_peak_watts
    assert fast.trace.batch_size == plain.trace.batch_size
    assert (fast.inferences, fast.reloads, fast.reload_failures) == (
        plain.inferences, plain.reloads, plain.reload_failures
    )  # fmt: skip
