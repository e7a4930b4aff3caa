"""BatchSizer on synthetic traces: the paper's walk, the window, the restarts."""

from __future__ import annotations

from toy_plant import PAPER_LADDER, ToyGpu, drive

from capinfer_sidecar.policies.base import Knobs, Observation, PowerSettings
from capinfer_sidecar.policies.batchsizer import BatchSizer, usable_batch_sizes

# Peak power per batch size: 32 is the only rung inside the band [160, 200] W of a 200 W cap.
FIG4_PEAKS_WATTS = {1: 60, 2: 70, 4: 85, 8: 100, 16: 120, 32: 170, 64: 230, 128: 260, 256: 280}


def settings(cap_watts: float = 200.0) -> PowerSettings:
    return PowerSettings(cap_watts=cap_watts, batch_sizes=PAPER_LADDER)


def observation(
    now_s: float, power_watts: float, batches: int, batch_size: int, *, reloading: bool = False
) -> Observation:
    return Observation(
        now_s=now_s,
        power_watts=power_watts,
        mean_power_watts=power_watts,
        batches_completed=batches,
        inferences_completed=batches * batch_size,
        applied=Knobs(batch_size, None),
        reload_in_flight=reloading,
    )


def test_fig4_walk_binary_searches_to_the_rung_inside_the_band() -> None:
    run = drive(BatchSizer(), ToyGpu(FIG4_PEAKS_WATTS), settings(), duration_s=60)
    # 1 (60 W, under) -> 16 (120 W, under) -> 64 (230 W, over) -> 32 (170 W, in band).
    assert run.batches_asked() == [1, 16, 64, 32]
    assert run.decisions[-1].state == "settled"
    assert run.decisions[-1].knobs == Knobs(32, None)


def test_no_rung_inside_the_band_oscillates_as_the_algorithm_does() -> None:
    # 32 is under the band and 64 over the cap: Algorithm 1 alternates between them.
    peaks = {**FIG4_PEAKS_WATTS, 32: 150}
    run = drive(BatchSizer(), ToyGpu(peaks), settings(), duration_s=120)
    walk = run.batches_asked()
    assert walk[:4] == [1, 16, 64, 32]
    assert set(walk[3:]) == {32, 64}
    assert len(walk) > 8


def test_ten_batches_are_counted_from_when_the_new_batch_size_serves() -> None:
    policy = BatchSizer()
    policy.start(settings(), 0.0)
    # The first sample at which batch 1 serves opens the window; its reading is left out.
    assert policy.step(observation(0.1, 500.0, 0, 1)).knobs.batch_size == 1
    for i in range(1, 10):
        decision = policy.step(observation(0.1 + i * 0.1, 60.0, i, 1))
        assert decision.knobs.batch_size == 1, f"decided after {i} batches"
    decision = policy.step(observation(1.1, 60.0, 10, 1))
    assert decision.knobs.batch_size == 16
    assert "minBS=1, maxBS=256" in decision.reason
    # While the reload is in flight (old batch size serving) nothing is counted.
    for i in range(30):
        decision = policy.step(observation(1.2 + i * 0.1, 300.0, 11 + i, 1, reloading=True))
        assert decision.knobs.batch_size == 16
    assert decision.state == "searching"


def test_over_the_cap_at_batch_one_is_reported_and_nothing_moves() -> None:
    run = drive(BatchSizer(), ToyGpu(dict.fromkeys(PAPER_LADDER, 210.0)), settings(), 20)
    assert run.batches_asked() == [1]
    assert run.decisions[-1].state == "at-bottom"
    assert "cap cannot be met" in run.decisions[-1].reason


def test_under_the_band_at_the_top_rung_stays_there() -> None:
    run = drive(BatchSizer(), ToyGpu(dict.fromkeys(PAPER_LADDER, 100.0)), settings(), 60)
    assert run.batches_asked() == [1, 16, 64, 128, 256]
    assert run.decisions[-1].state == "at-top"


def test_max_beneficial_batch_cuts_the_ladder() -> None:
    assert usable_batch_sizes(PAPER_LADDER, 64) == (1, 2, 4, 8, 16, 32, 64)
    assert usable_batch_sizes(PAPER_LADDER, None) == PAPER_LADDER
    assert usable_batch_sizes(PAPER_LADDER, 0) == (1,)
    gpu = ToyGpu(dict.fromkeys(PAPER_LADDER, 100.0))
    run = drive(BatchSizer(max_beneficial_batch=64), gpu, settings(), 60)
    assert max(run.batches_asked()) == 64
    assert run.decisions[-1].state == "at-top"


def test_a_cap_change_restarts_the_search_over_the_whole_ladder() -> None:
    policy = BatchSizer()
    gpu = ToyGpu(FIG4_PEAKS_WATTS)
    run = drive(policy, gpu, settings(), duration_s=60)
    assert run.decisions[-1].knobs.batch_size == 32
    decision = policy.update_settings(settings(cap_watts=150.0), 60.0)
    assert "search restarts" in decision.reason
    assert decision.state == "searching"
    assert (policy.search.low, policy.search.high) == (0, len(PAPER_LADDER) - 1)


def test_after_a_cap_drop_it_walks_down_under_the_new_cap() -> None:
    gpu = ToyGpu(FIG4_PEAKS_WATTS)
    run = drive(BatchSizer(), gpu, settings(), duration_s=120, cap_changes={60.0: 130.0})
    # New band [104, 130] W: batch 16 (120 W) is the rung inside it.
    assert run.decisions[-1].knobs.batch_size == 16
    assert run.decisions[-1].state == "settled"


def test_the_same_settings_again_change_nothing() -> None:
    policy = BatchSizer()
    first = policy.start(settings(), 0.0)
    assert policy.update_settings(settings(), 1.0) == first


def test_new_clock_levels_alone_do_not_restart_it() -> None:
    policy = BatchSizer()
    policy.start(settings(), 0.0)
    before = policy.search
    with_clocks = PowerSettings(200.0, PAPER_LADDER, clock_levels_mhz=(500, 1000))
    decision = policy.update_settings(with_clocks, 1.0)
    assert policy.search == before
    assert decision.knobs.sm_clock_mhz is None
