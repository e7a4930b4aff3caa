"""The production control loop on the simulator: deterministic, faithful to the profile and
to the knobs' costs."""

from __future__ import annotations

import dataclasses

import pytest
from sim_helpers import Scripted

from capinfer_sidecar.policies import make_policy
from capinfer_sidecar.policies.base import Knobs
from capinfer_sidecar.sim.config import (
    CapChange,
    ClockAccess,
    PoissonLoad,
    RateStep,
    RunConfig,
    SaturatingLoad,
)
from capinfer_sidecar.sim.metrics import compute_metrics
from capinfer_sidecar.sim.profiles import WorkloadProfile, load_profile_set
from capinfer_sidecar.simloop import run


@pytest.fixture(scope="module")
def res50() -> WorkloadProfile:
    return load_profile_set("p40").workload("Res50", "caltech")


def config(profile: WorkloadProfile, **overrides: object) -> RunConfig:
    base = RunConfig(profile=profile, cap_watts=250.0, duration_s=20.0, seed=3)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_a_run_is_deterministic_for_a_seed(res50: WorkloadProfile) -> None:
    first = run(config(res50, cap_watts=180.0), make_policy("BatchSizer"))
    again = run(config(res50, cap_watts=180.0), make_policy("BatchSizer"))
    other = run(config(res50, cap_watts=180.0, seed=4), make_policy("BatchSizer"))
    assert first.trace.power_watts == again.trace.power_watts
    assert first.trace.batch_size == again.trace.batch_size
    assert first.inferences == again.inferences
    assert first.trace.power_watts != other.trace.power_watts


@pytest.mark.parametrize(("batch", "clock"), [(1, 544), (16, 1531), (64, 1063), (256, 835)])
def test_a_static_pair_gives_the_throughput_and_power_the_profile_predicts(
    res50: WorkloadProfile, batch: int, clock: int
) -> None:
    result = run(config(res50, duration_s=60.0), make_policy("Static", batch_size=batch,
                                                             clock_mhz=clock))  # fmt: skip
    # One batch in flight at the end is not counted: allow for it.
    slack = batch / result.config.duration_s
    assert result.throughput_ips == pytest.approx(res50.throughput_ips(batch, clock), abs=slack)
    mean_watts = result.energy_joules / result.config.duration_s
    assert mean_watts == pytest.approx(res50.mean_power_watts(batch, clock), rel=0.01)
    assert max(result.trace.true_peak_watts) <= res50.peak_power_watts(batch, clock) + 1e-9
    assert result.inferences == result.batches * batch  # saturating: every batch is full


def test_observations_carry_cumulative_counts_and_noisy_peaks(res50: WorkloadProfile) -> None:
    policy = Scripted(Knobs(64, 1303))
    result = run(config(res50), policy)
    counts = [o.inferences_completed for o in policy.observations]
    assert counts == sorted(counts)
    assert counts[-1] == result.inferences
    assert [o.now_s for o in policy.observations] == pytest.approx(
        [0.1 * (i + 1) for i in range(200)]
    )
    errors = [p - t for p, t in zip(result.trace.power_watts, result.trace.true_peak_watts,
                                    strict=True)]  # fmt: skip
    assert 0 < max(abs(e) for e in errors) < 6 * res50.gpu.power_noise_watts
    assert all(o.queue_depth == 2 * 256 - 64 for o in policy.observations)


def test_a_batch_size_change_is_a_reload_during_which_the_old_size_serves(
    res50: WorkloadProfile,
) -> None:
    policy = Scripted(Knobs(16, 1531), schedule=[(2.0, Knobs(64, 1531))])
    result = run(config(res50, reload_s=1.5), policy)
    by_time = {round(o.now_s, 1): o for o in policy.observations}
    # Asked for in answer to the 2.0 s sample: in flight from then on, done 1.5 s later.
    assert not by_time[2.0].reload_in_flight
    assert by_time[2.1].reload_in_flight
    assert by_time[3.4].applied.batch_size == 16
    assert by_time[3.4].reload_in_flight
    assert by_time[3.5].applied.batch_size == 64
    assert not by_time[3.5].reload_in_flight
    assert result.reloads == 1
    # The old size kept serving: batches of 16 until 3.5 s, of 64 after.
    served = [
        (later.inferences_completed - earlier.inferences_completed)
        / (later.batches_completed - earlier.batches_completed)
        for earlier, later in ((by_time[2.2], by_time[3.4]), (by_time[5.0], by_time[8.0]))
    ]
    assert served == [16, 64]


def test_a_clock_change_applies_within_milliseconds_even_mid_batch(
    res50: WorkloadProfile,
) -> None:
    # Batch 256 at 1531 MHz takes ~0.6 s: the clock drop lands in the middle of a batch. The
    # loop asks at its first sample from 4.95 s on: the one at 5.0 s (its sample times are
    # sums of five 0.02 s sleeps, so "5.0" may be a hair below 5.0).
    policy = Scripted(Knobs(256, 1531), schedule=[(4.95, Knobs(256, 544))])
    result = run(config(res50, duration_s=12.0), policy)
    trace = result.trace
    after = trace.time_s.index(pytest.approx(5.2))
    high = res50.peak_power_watts(256, 1531)
    low = res50.peak_power_watts(256, 544)
    assert trace.true_peak_watts[after] <= low + 1e-9
    assert trace.true_peak_watts[after] < high - 50
    # Energy keeps up with the change: the mean power falls within the next samples.
    assert trace.mean_power_watts[after] < trace.mean_power_watts[after - 5] - 30


def test_a_cap_change_calls_update_settings_at_its_time(res50: WorkloadProfile) -> None:
    policy = Scripted(Knobs(16, 1531))
    changes = (CapChange(5.0, 150.0), CapChange(12.5, 220.0))
    result = run(config(res50, cap_watts=200.0, cap_changes=changes), policy)
    assert [(t, s.cap_watts) for t, s in policy.settings_seen] == [
        (0.0, 200.0), (5.0, 150.0), (12.5, 220.0)
    ]  # fmt: skip
    trace = result.trace
    assert trace.cap_watts[trace.time_s.index(pytest.approx(5.0))] == 200.0
    assert trace.cap_watts[trace.time_s.index(pytest.approx(5.1))] == 150.0


def test_under_light_load_batches_stay_small_whatever_the_max(res50: WorkloadProfile) -> None:
    load = PoissonLoad((RateStep(0.0, 40.0),))
    result = run(config(res50, duration_s=60.0, load=load), Scripted(Knobs(256, 1531)))
    metrics = compute_metrics(result)
    assert metrics.mean_formed_batch < 4
    assert metrics.mean_batch_setting == 256
    assert result.throughput_ips == pytest.approx(40.0, rel=0.15)
    # Small batches draw far less than the max batch size would.
    assert max(result.trace.true_peak_watts) < res50.peak_power_watts(32, 1531)


def test_a_load_step_raises_the_formed_batch_size(res50: WorkloadProfile) -> None:
    load = PoissonLoad((RateStep(0.0, 30.0), RateStep(30.0, 2000.0)))
    result = run(config(res50, duration_s=60.0, load=load), Scripted(Knobs(64, 1531)))
    trace = result.trace
    assert max(trace.queue_depth[:250]) < 10
    assert max(trace.queue_depth[350:]) > 64  # more arrive than the GPU serves
    assert sum(trace.throughput_ips[400:]) / 200 == pytest.approx(
        res50.throughput_ips(64, 1531), rel=0.05
    )


def test_a_closed_loop_smaller_than_the_max_forms_smaller_batches(
    res50: WorkloadProfile,
) -> None:
    load = SaturatingLoad(concurrency=24)
    result = run(config(res50, load=load), Scripted(Knobs(64, 1531)))
    assert result.inferences == 24 * result.batches


def test_refused_clocks_leave_the_policy_with_the_batch_size_alone(
    res50: WorkloadProfile,
) -> None:
    policy = Scripted(Knobs(16, 1063))
    result = run(config(res50, clocks=ClockAccess.REFUSED), policy)
    assert result.clock_control_refused
    assert policy.clock_disabled and "NO_PERMISSION" in policy.clock_disabled[0]
    assert policy.settings_seen[-1][1].clock_levels_mhz == ()
    assert set(result.trace.clock_mhz) == {res50.gpu.default_clock_mhz}
    assert all(o.applied.sm_clock_mhz is None for o in policy.observations)


def test_without_clock_control_the_policy_gets_no_levels(res50: WorkloadProfile) -> None:
    policy = Scripted(Knobs(16, None))
    run(config(res50, clocks=ClockAccess.NONE), policy)
    assert policy.settings_seen[0][1].clock_levels_mhz == ()


def test_metrics_count_time_over_the_cap_on_true_power(res50: WorkloadProfile) -> None:
    peak = res50.peak_power_watts(64, 1531)
    result = run(config(res50, cap_watts=peak - 10), Scripted(Knobs(64, 1531)))
    metrics = compute_metrics(result)
    assert metrics.over_cap_fraction > 0.9
    assert 0 < metrics.worst_overshoot_watts <= 10 + 1e-9
    assert metrics.seconds_over_cap == pytest.approx(metrics.over_cap_fraction * 20.0)


def test_settling_after_a_cap_drop_is_the_time_to_get_under_it(res50: WorkloadProfile) -> None:
    # The scripted policy reacts 2 s late to a drop at 5 s: the run settles at about 2 s.
    policy = Scripted(Knobs(64, 1531), schedule=[(7.0, Knobs(64, 544))])
    result = run(config(res50, cap_watts=250.0, cap_changes=(CapChange(5.0, 150.0),)), policy)
    (settling,) = compute_metrics(result).settling
    assert (settling.from_watts, settling.to_watts) == (250.0, 150.0)
    assert settling.under_cap_s == pytest.approx(2.0, abs=0.15)
    assert settling.settling_s is not None and settling.settling_s >= settling.under_cap_s


def test_a_later_excursion_counts_over_the_cap_but_not_against_settling(
    res50: WorkloadProfile,
) -> None:
    schedule = [(7.0, Knobs(64, 544)), (15.0, Knobs(64, 1531)), (15.3, Knobs(64, 544))]
    policy = Scripted(Knobs(64, 1531), schedule=schedule)
    result = run(config(res50, cap_watts=250.0, cap_changes=(CapChange(5.0, 150.0),)), policy)
    metrics = compute_metrics(result)
    (settling,) = metrics.settling
    assert settling.under_cap_s == pytest.approx(2.0, abs=0.15)
    over_after_settling = [
        t for t, p, c in zip(result.trace.time_s, result.trace.true_peak_watts,
                             result.trace.cap_watts, strict=True) if p > c and t > 10
    ]  # fmt: skip
    assert over_after_settling and all(15.0 < t < 15.6 for t in over_after_settling)


def test_a_cap_binds_from_the_moment_a_clock_change_could_meet_it(
    res50: WorkloadProfile,
) -> None:
    # A policy answering update_settings at once with a clock low enough is never over,
    # although the interval the drop lands in saw the old, higher power.
    policy = Scripted(Knobs(64, 1531), schedule=[(5.05, Knobs(64, 544))])
    cap = res50.peak_power_watts(64, 544) + 5
    result = run(config(res50, cap_watts=250.0, cap_changes=(CapChange(5.05, cap),)), policy)
    metrics = compute_metrics(result)
    assert metrics.over_cap_fraction == 0.0
    assert metrics.settling[0].under_cap_s == 0.0
    trace = result.trace
    reading = trace.power_watts[trace.time_s.index(pytest.approx(5.1))]
    assert reading > cap + 50  # the policy still saw the old spike


def test_under_open_loop_arrivals_settling_ignores_the_throughput(
    res50: WorkloadProfile,
) -> None:
    # The load jumps 3 s after the cap rises: throughput follows the load, not the policy.
    load = PoissonLoad((RateStep(0.0, 20.0), RateStep(8.0, 300.0)))
    policy = Scripted(Knobs(64, 1531))
    changes = (CapChange(5.0, 240.0),)
    result = run(config(res50, cap_watts=230.0, cap_changes=changes, load=load), policy)
    (settling,) = compute_metrics(result).settling
    assert (settling.settling_s, settling.throughput_s) == (0.0, 0.0)


def test_a_run_still_over_the_cap_never_settles(res50: WorkloadProfile) -> None:
    policy = Scripted(Knobs(64, 1531))
    result = run(config(res50, cap_watts=250.0, cap_changes=(CapChange(5.0, 150.0),)), policy)
    (settling,) = compute_metrics(result).settling
    assert settling.settling_s is None
    assert compute_metrics(result).worst_settling_s is None


def test_bad_run_configs_are_refused(res50: WorkloadProfile) -> None:
    with pytest.raises(ValueError, match="duration_s must be positive"):
        config(res50, duration_s=0.0)
    with pytest.raises(ValueError, match="ascending and after t = 0"):
        config(res50, cap_changes=(CapChange(5.0, 100.0), CapChange(2.0, 120.0)))
    with pytest.raises(ValueError, match="rate from t = 0"):
        PoissonLoad((RateStep(1.0, 10.0),))
