"""The oracle: exhaustive search, checked by hand on a tiny profile and through the loop."""

from __future__ import annotations

import pytest
from sim_helpers import tiny_measured_profile

from capinfer_sidecar.sim.config import CapChange, ClockAccess, RunConfig
from capinfer_sidecar.sim.oracle import (
    best_static_pair,
    closed_form_throughput_ips,
)
from capinfer_sidecar.sim.profiles import load_profile_set
from capinfer_sidecar.simloop import run_oracle


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        # See the table in tiny_measured_profile: the best pair under each cap, by hand.
        (500.0, (4, 2000, 80.0)),
        (209.0, (4, 1000, 44.44)),  # 4@2000 draws 210 W
        (145.0, (4, 1000, 44.44)),
        (139.0, (1, 1000, 20.0)),  # 4@1000 draws 140 W and 1@2000 150 W: both too much
        (120.0, (1, 1000, 20.0)),
    ],
)
def test_the_best_pair_of_a_tiny_profile_by_hand(
    cap: float, expected: tuple[int, int, float]
) -> None:
    workload = tiny_measured_profile().workload("toy", "tensor")
    pair = best_static_pair(workload, cap, (1, 4), (1000, 2000))
    assert (pair.batch_size, pair.clock_mhz) == expected[:2]
    assert pair.throughput_ips == pytest.approx(expected[2], abs=0.01)
    assert pair.cap_reachable


def test_the_jitter_bound_counts_against_the_cap() -> None:
    workload = tiny_measured_profile(jitter_fraction=0.05).workload("toy", "tensor")
    # 4@1000 draws 140 W nominal, up to 147 W with jitter: not under a 145 W cap.
    pair = best_static_pair(workload, 145.0, (1, 4), (1000, 2000))
    assert (pair.batch_size, pair.clock_mhz) == (1, 1000)
    assert pair.peak_power_watts == pytest.approx(105.0)


def test_an_unreachable_cap_gives_the_coolest_pair_and_says_so() -> None:
    workload = tiny_measured_profile().workload("toy", "tensor")
    pair = best_static_pair(workload, 60.0, (1, 4), (1000, 2000))
    assert (pair.batch_size, pair.clock_mhz, pair.cap_reachable) == (1, 1000, False)


def test_without_clock_levels_only_the_default_clock_is_searched() -> None:
    workload = tiny_measured_profile().workload("toy", "tensor")
    pair = best_static_pair(workload, 145.0, (1, 4), ())
    # At the default (top) clock batch 1 draws 150 W and batch 4 210 W: none fits 145 W.
    assert (pair.batch_size, pair.clock_mhz, pair.cap_reachable) == (1, None, False)
    assert best_static_pair(workload, 160.0, (1, 4), ()).batch_size == 1


@pytest.mark.parametrize(
    ("dnn", "dataset", "cap"),
    [("Res50", "caltech", 198.0), ("MobV2", "imagenet", 84.0), ("Res152", "caltech", 188.0)],
)
def test_the_oracle_run_matches_its_closed_form_and_never_exceeds_the_cap(
    dnn: str, dataset: str, cap: float
) -> None:
    workload = load_profile_set("p40").workload(dnn, dataset)
    config = RunConfig(profile=workload, cap_watts=cap, duration_s=60.0, seed=11)
    result = run_oracle(config)
    closed = closed_form_throughput_ips(config)
    assert closed is not None
    assert result.throughput_ips == pytest.approx(closed, rel=0.01)
    assert max(result.trace.true_peak_watts) <= cap
    assert result.reloads == 0


def test_the_oracle_switches_pairs_at_cap_changes_without_reload_cost() -> None:
    workload = load_profile_set("p40").workload("Res50", "caltech")
    changes = (CapChange(20.0, 130.0), CapChange(40.0, 220.0))
    config = RunConfig(profile=workload, cap_watts=220.0, duration_s=60.0, cap_changes=changes,
                       seed=2, reload_s=5.0)  # fmt: skip
    result = run_oracle(config)
    closed = closed_form_throughput_ips(config)
    assert closed is not None
    assert result.throughput_ips == pytest.approx(closed, rel=0.02)
    assert result.reloads == 2
    # Under the cap in effect, except while the batch in flight at the drop finishes.
    over = [
        t for t, p, c in zip(result.trace.time_s, result.trace.true_peak_watts,
                             result.trace.cap_watts, strict=True) if p > c
    ]  # fmt: skip
    assert over
    assert all(20.0 < t < 20.0 + 2 * workload.batch_latency_s(256, 1531) for t in over)


def test_refused_clocks_restrict_the_oracle_to_the_default_clock() -> None:
    workload = load_profile_set("p40").workload("Res50", "caltech")
    free = RunConfig(profile=workload, cap_watts=120.0, duration_s=10.0)
    refused = RunConfig(profile=workload, cap_watts=120.0, duration_s=10.0,
                        clocks=ClockAccess.REFUSED)  # fmt: skip
    free_ips, refused_ips = closed_form_throughput_ips(free), closed_form_throughput_ips(refused)
    assert free_ips is not None and refused_ips is not None
    assert refused_ips < free_ips
