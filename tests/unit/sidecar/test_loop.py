"""The control loop's plumbing, on fake time with a scripted policy (pure logic)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest
from loop_fakes import SETTINGS, FakeGpu, FakeServer, FakeTime, ScriptedPolicy, make_loop

from capinfer_sidecar.gpu.errors import GpuError, GpuLostError
from capinfer_sidecar.loop import LoopSnapshot, ServerCounters
from capinfer_sidecar.policies.base import Decision, Knobs, Observation, PowerSettings
from capinfer_sidecar.reloads import ReloadGovernor
from capinfer_sidecar.supervisor import Supervisor


async def test_peak_power_and_counters_reach_the_policy() -> None:
    time = FakeTime()
    gpu = FakeGpu([150, 210, 170, 160, 155, 150])
    policy = ScriptedPolicy(Knobs(1, 900))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    snapshot = await loop.sample_once()
    observation = policy.observations[-1]
    assert observation.power_watts == 210
    assert observation.batches_completed == 10 and observation.inferences_completed == 40
    assert observation.queue_depth == 3
    assert snapshot.seconds_over_cap == pytest.approx(0.1)
    assert snapshot.violations == 1
    assert gpu.locked_mhz == 900


async def test_batch_change_is_a_background_reload_and_old_size_serves_meanwhile() -> None:
    time = FakeTime()
    server = FakeServer()
    policy = ScriptedPolicy(Knobs(16, None))
    loop, _ = make_loop(policy, FakeGpu([120.0]), server, time)
    first = await loop.sample_once()
    assert first.batch_size == 1 and first.requested_batch_size == 16
    await loop.sample_once()
    assert policy.observations[-1].reload_in_flight
    assert policy.observations[-1].applied.batch_size == 1
    server.release_reload.set()
    await asyncio.sleep(0)
    later = await loop.sample_once()
    assert server.applied == [16]
    assert later.batch_size == 16 and later.reloads == 1
    assert not policy.observations[-1].reload_in_flight


async def test_failed_reload_keeps_the_old_batch_size() -> None:
    time = FakeTime()
    server = FakeServer(fail_reload=True)
    server.release_reload.set()
    loop, _ = make_loop(ScriptedPolicy(Knobs(4, None)), FakeGpu([120.0]), server, time)
    await loop.sample_once()
    await asyncio.sleep(0)
    snapshot = await loop.sample_once()
    assert snapshot.batch_size == 1
    assert snapshot.reload_failures >= 1 and snapshot.reloads == 0


async def test_refused_clock_control_falls_back_to_batch_only() -> None:
    time = FakeTime()
    gpu = FakeGpu([120.0], clock_refused=True)
    policy = ScriptedPolicy(Knobs(4, 900))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    snapshot = await loop.sample_once()
    assert "NO_PERMISSION" in policy.clock_disabled
    assert policy.settings_seen[-1].clock_levels_mhz == ()
    assert not snapshot.clock_control
    assert snapshot.sm_clock_mhz is None and gpu.locked_mhz is None


async def test_stale_power_moves_to_the_safest_settings() -> None:
    time = FakeTime()
    gpu = FakeGpu([None])
    policy = ScriptedPolicy(Knobs(16, 1200))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    snapshots = [await loop.sample_once() for _ in range(30)]
    assert snapshots[0].degraded is None  # one missed reading is not yet an outage
    assert snapshots[-1].degraded == "power readings stopped"
    assert snapshots[-1].requested_batch_size == 1
    assert gpu.locked_mhz == 600


async def test_unreachable_triton_keeps_the_clock_knob() -> None:
    time = FakeTime()
    gpu = FakeGpu([250.0])
    loop, _ = make_loop(ScriptedPolicy(Knobs(16, 1200)), gpu, FakeServer(reachable=False), time)
    snapshot = await loop.sample_once()
    assert snapshot.degraded == "Triton is unreachable"
    assert gpu.locked_mhz == 600
    assert snapshot.batch_size == 1


async def test_a_restarted_triton_serves_its_own_batch_size_and_the_loop_reloads() -> None:
    time = FakeTime()
    server = FakeServer()
    server.release_reload.set()
    loop, _ = make_loop(ScriptedPolicy(Knobs(16, None)), FakeGpu([120.0]), server, time)
    await loop.sample_once()
    await asyncio.sleep(0)
    assert (await loop.sample_once()).batch_size == 16
    server.reachable = False
    assert (await loop.sample_once()).degraded == "Triton is unreachable"
    server.reachable, server.serving = True, 8  # restarted from the model's own config
    back = await loop.sample_once()
    assert back.degraded is None and back.batch_size == 8
    await asyncio.sleep(0)
    assert (await loop.sample_once()).batch_size == 16
    assert server.applied == [16, 16]


async def test_new_settings_reach_the_policy_and_shutdown_resets_clocks() -> None:
    time = FakeTime()
    gpu = FakeGpu([120.0])
    policy = ScriptedPolicy(Knobs(4, 900))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    await loop.sample_once()
    lower = PowerSettings(150, SETTINGS.batch_sizes, SETTINGS.clock_levels_mhz, SETTINGS.band)
    loop.update_settings(lower)
    assert policy.settings_seen[-1].cap_watts == 150
    snapshot = await loop.sample_once()
    assert snapshot.cap_watts == 150
    await loop.shutdown()
    assert gpu.resets == 1 and gpu.locked_mhz is None


async def test_a_new_cap_moves_the_clock_at_once_not_at_the_next_sample() -> None:
    time = FakeTime()
    gpu = FakeGpu([120.0])
    policy = ScriptedPolicy(Knobs(1, 1200))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    await loop.sample_once()
    assert gpu.locked_mhz == 1200
    policy.knobs = Knobs(1, 600)
    lower = PowerSettings(120, SETTINGS.batch_sizes, SETTINGS.clock_levels_mhz, SETTINGS.band)
    loop.update_settings(lower)
    assert gpu.locked_mhz == 600


def unknown_error() -> GpuError:
    return GpuError("nvmlDeviceGetFieldValues", "Unknown Error", 999)


def nvml_timeout() -> GpuError:
    return GpuError("nvmlDeviceSetGpuLockedClocks", "Timeout", 10)


async def test_transient_power_errors_are_retried_without_a_failsafe() -> None:
    time = FakeTime()
    gpu = FakeGpu([150.0], power_errors=[unknown_error() for _ in range(12)])
    policy = ScriptedPolicy(Knobs(4, 1200))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    snapshots = [await loop.sample_once() for _ in range(5)]
    # 12 failed reads = 2.4 samples without a reading: below stale_after_s (2 s).
    assert [s.degraded for s in snapshots] == [None] * 5
    assert all(s.policy_state != "failsafe" for s in snapshots)
    assert gpu.locked_mhz == 1200
    assert policy.observations[-1].power_watts == 150.0


async def test_a_transient_clock_error_is_retried_and_the_loop_carries_on() -> None:
    time = FakeTime()
    gpu = FakeGpu([150.0], clock_errors=[unknown_error(), nvml_timeout()])
    policy = ScriptedPolicy(Knobs(1, 900))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    first = await loop.sample_once()
    assert first.sm_clock_mhz is None and gpu.locked_mhz is None  # not applied yet
    await loop.sample_once()
    third = await loop.sample_once()
    assert third.sm_clock_mhz == 900 and gpu.locked_mhz == 900
    assert third.clock_control  # a transient error is not a refusal


async def test_a_clock_that_keeps_failing_is_not_called_control() -> None:
    time = FakeTime()
    gpu = FakeGpu([150.0], clock_errors=[nvml_timeout() for _ in range(40)])
    loop, _ = make_loop(ScriptedPolicy(Knobs(4, 1200)), gpu, FakeServer(), time)
    snapshots = [await loop.sample_once() for _ in range(50)]
    assert snapshots[10].degraded is None  # 1 s of failed sets: retried quietly
    failing = snapshots[30]
    assert failing.degraded is not None and "SM clock cannot be set" in failing.degraded
    assert failing.policy_state == "failsafe"
    assert snapshots[-1].degraded is None and gpu.locked_mhz == 1200  # it works again


async def test_a_lost_gpu_means_the_failsafe_at_once() -> None:
    time = FakeTime()
    lost = [GpuLostError("nvmlDeviceGetFieldValues", "GPU is lost", 15) for _ in range(5)]
    gpu = FakeGpu([150.0], power_errors=lost)
    policy = ScriptedPolicy(Knobs(16, 1200))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    first = await loop.sample_once()
    assert first.degraded is not None and first.degraded.startswith("GPU lost")
    assert first.policy_state == "failsafe" and first.requested_batch_size == 1
    assert gpu.locked_mhz == 600
    recovered = await loop.sample_once()
    assert recovered.degraded is None


async def test_a_refused_batch_size_is_quarantined_not_reloaded_600_times() -> None:
    time = FakeTime()
    server = FakeServer(fail_reload=True)
    server.release_reload.set()
    policy = ScriptedPolicy(Knobs(16, None))
    loop, _ = make_loop(policy, FakeGpu([120.0]), server, time)
    for _ in range(600):  # 60 s of samples, the policy asking for 16 throughout
        snapshot = await loop.sample_once()
        await asyncio.sleep(0)
    assert 1 <= len(server.attempts) <= 3
    assert snapshot.reload_failures == len(server.attempts)
    assert snapshot.quarantined_batch_sizes == (16,)
    assert snapshot.batch_size == 1
    assert snapshot.reload_blocked is not None and "quarantined" in snapshot.reload_blocked


async def test_a_hanging_load_times_out_and_the_old_batch_keeps_serving() -> None:
    time = FakeTime()
    server = FakeServer()  # release_reload never set: the load hangs
    reloads = ReloadGovernor(first_timeout_s=5, base_backoff_s=30)
    loop, _ = make_loop(ScriptedPolicy(Knobs(16, 900)), FakeGpu([120.0]), server, time, reloads)
    snapshots = [await loop.sample_once() for _ in range(60)]  # 6 s
    assert server.attempts == [16]
    assert snapshots[40].reload_failures == 0
    assert snapshots[-1].reload_failures == 1
    assert snapshots[-1].batch_size == 1
    assert snapshots[-1].reload_blocked is not None


async def test_a_failed_run_holds_the_lowest_clock_and_can_run_again() -> None:
    time = FakeTime()
    gpu = FakeGpu([120.0])

    class Breaks(ScriptedPolicy):
        def step(self, observation: Observation) -> Decision:
            if len(self.observations) == 2:
                self.observations.append(observation)
                raise ZeroDivisionError("a policy bug")
            return super().step(observation)

    policy = Breaks(Knobs(1, 1200))
    loop, snapshots = make_loop(policy, gpu, FakeServer(), time)
    with pytest.raises(ZeroDivisionError):
        await loop.run()
    assert gpu.locked_mhz == 600 and gpu.resets == 0  # locked low, not handed back
    policy.knobs = Knobs(1, 900)

    def stop_after_two(snapshot: LoopSnapshot) -> None:
        snapshots.append(snapshot)
        if len(snapshots) >= 4:
            loop.stop()

    loop.on_snapshot = stop_after_two
    await loop.run()
    assert gpu.resets == 1 and gpu.locked_mhz is None  # a clean stop gives clocks back


async def test_under_its_supervisor_a_failing_loop_is_reported_then_recovers() -> None:
    time = FakeTime()
    gpu = FakeGpu([120.0])
    failures_left = 3

    class BreaksThrice(ScriptedPolicy):
        def step(self, observation: Observation) -> Decision:
            nonlocal failures_left
            if failures_left:
                failures_left -= 1
                raise RuntimeError("NVML_ERROR_UNKNOWN from a helper the policy called")
            return super().step(observation)

    loop, snapshots = make_loop(BreaksThrice(Knobs(1, 1200)), gpu, FakeServer(), time)
    clocks_in_backoff: list[int | None] = []

    async def backoff(seconds: float) -> None:
        clocks_in_backoff.append(gpu.locked_mhz)
        await time.sleep(seconds)

    supervisor = Supervisor(monotonic=time.monotonic, sleep=backoff, healthy_after_s=5)
    seen_failing: list[bool] = []

    def on_snapshot(snapshot: LoopSnapshot) -> None:
        snapshots.append(snapshot)
        seen_failing.append(supervisor.failing("control-loop"))
        if len(snapshots) == 100:  # 10 s of samples
            loop.stop()

    loop.on_snapshot = on_snapshot
    await supervisor.supervise("control-loop", loop.run)
    (state,) = supervisor.tasks
    assert state.restarts == 3 and state.finished
    assert clocks_in_backoff == [600, 600, 600]  # the lowest clock while it waits
    assert seen_failing[0] and not seen_failing[-1]  # reported, then healthy again
    assert gpu.locked_mhz is None and gpu.resets == 1  # a clean stop at the end


class TimeWithAnEvent(FakeTime):
    """Runs ``event()`` during the ``at``-th sleep, as a task would while the loop waits."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.sleeps = 0
        self.event: Callable[[], None] = lambda: None

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps == self.at:
            self.event()
        await super().sleep(seconds)


async def test_readings_from_before_a_new_cap_are_not_judged_by_it() -> None:
    # Three reads under the old cap (300 W, fine under 400 W), two under the new one.
    time = TimeWithAnEvent(at=4)
    gpu = FakeGpu([300.0, 300.0, 300.0, 120.0, 100.0, 100.0, 110.0, 100.0, 100.0, 100.0])
    policy = ScriptedPolicy(Knobs(1, 900))
    loop, _ = make_loop(policy, gpu, FakeServer(), time)
    loop.update_settings(replace(SETTINGS, cap_watts=400))
    time.event = lambda: loop.update_settings(replace(SETTINGS, cap_watts=150))
    snapshot = await loop.sample_once()
    assert policy.observations == []  # the interval began under 400 W: not judged at 150
    assert snapshot.cap_watts == 150
    await loop.sample_once()
    assert policy.observations[-1].power_watts == 110.0  # a whole interval under 150 W


async def test_a_cap_that_arrives_after_the_reads_waits_for_fresh_ones() -> None:
    time = FakeTime()
    server = FakeServer()
    policy = ScriptedPolicy(Knobs(1, 900))
    loop, _ = make_loop(policy, FakeGpu([300.0]), server, time)
    loop.update_settings(replace(SETTINGS, cap_watts=400))
    original = server.counters

    async def counters_then_new_cap() -> ServerCounters:
        loop.update_settings(replace(SETTINGS, cap_watts=150))  # while Triton answers
        return await original()

    server.counters = counters_then_new_cap  # type: ignore[method-assign]
    await loop.sample_once()
    assert policy.observations == []  # 300 W read under 400 W: not judged against 150 W
    server.counters = original  # type: ignore[method-assign]
    await loop.sample_once()
    assert policy.observations[-1].power_watts == 300.0


async def test_a_p99_over_the_slo_shortens_the_ladder_the_policy_sees() -> None:
    time = FakeTime()
    server = FakeServer(p99_latency_ms=80.0)
    server.release_reload.set()
    policy = ScriptedPolicy(Knobs(16, 1200))
    loop, _ = make_loop(policy, FakeGpu([150.0]), server, time)
    await loop.sample_once()
    await asyncio.sleep(0)  # the reload to 16 completes
    assert policy.settings_seen[-1].batch_sizes == SETTINGS.batch_sizes, "no SLO: whole ladder"
    loop.set_latency_slo_ms(50.0)
    snapshot = await loop.sample_once()
    assert snapshot.slo_misses == 1 and snapshot.slo_batch_ceiling is None, (
        "Triton's window still holds the time before the SLO: no move yet"
    )
    time.now_s += 60.0
    snapshot = await loop.sample_once()
    assert policy.settings_seen[-1].batch_sizes == (1, 4), "one rung below the batch in effect"
    assert policy.settings_seen[-1].clock_levels_mhz == SETTINGS.clock_levels_mhz
    assert snapshot.p99_latency_ms == 80.0 and snapshot.latency_slo_ms == 50.0
    assert snapshot.slo_misses == 1 and snapshot.slo_batch_ceiling == 4
    assert snapshot.slo_unmet is None, "a smaller batch may still bring p99 down"
    # The SLO's removal gives the whole ladder back at once.
    loop.set_latency_slo_ms(None)
    assert policy.settings_seen[-1].batch_sizes == SETTINGS.batch_sizes
    assert (await loop.sample_once()).slo_misses == 0


async def test_the_cap_wins_over_the_slo_and_the_snapshot_says_so() -> None:
    time = FakeTime()
    server = FakeServer(p99_latency_ms=80.0)
    policy = ScriptedPolicy(Knobs(1, 600))  # the smallest batch, the clock held low
    loop, _ = make_loop(policy, FakeGpu([195.0]), server, time)
    loop.set_latency_slo_ms(50.0)
    await loop.sample_once()  # the clock is locked after the first reading
    snapshot = await loop.sample_once()
    assert snapshot.sm_clock_mhz == 600, "the guard never raises the clock"
    assert snapshot.slo_unmet is not None and "the cap wins" in snapshot.slo_unmet
