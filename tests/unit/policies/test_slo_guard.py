"""The latency SLO guard: the batch-size ladder shrinks while p99 is over the SLO, grows back
with slack, and never touches the clock (pure logic, on made-up readings)."""

from __future__ import annotations

import pytest

from capinfer_sidecar.policies.base import Knobs
from capinfer_sidecar.policies.slo import LatencyGuard

LADDER = (1, 2, 4, 8, 16)
CLOCKS = (600, 900, 1200)


def feed(
    guard: LatencyGuard, p99_ms: float | None, knobs: Knobs, now_s: float, queued: int = 0
) -> bool:
    return guard.observe(
        p99_ms, applied=knobs, queue_depth=queued, batch_sizes=LADDER, clock_levels_mhz=CLOCKS,
        now_s=now_s, interval_s=1.0,
    )  # fmt: skip


def test_over_the_slo_takes_one_rung_below_the_batch_in_effect() -> None:
    guard = LatencyGuard(slo_ms=50.0, tighten_every_s=10.0)
    assert feed(guard, 80.0, Knobs(16, 1200), now_s=0.0)
    assert guard.ceiling == 8 and guard.ladder(LADDER) == (1, 2, 4, 8)
    # Still over a moment later: the smaller batch has not had time to show in p99.
    assert not feed(guard, 80.0, Knobs(8, 1200), now_s=5.0)
    assert feed(guard, 80.0, Knobs(8, 1200), now_s=10.0)
    assert guard.ceiling == 4
    assert guard.misses == 1, "one run of samples over the SLO is one miss"
    assert guard.seconds_over_slo == pytest.approx(3.0)


def test_slack_for_a_whole_window_gives_rungs_back_up_to_no_limit() -> None:
    guard = LatencyGuard(slo_ms=50.0, tighten_every_s=0.0, relax_after_s=60.0)
    feed(guard, 80.0, Knobs(16, 1200), now_s=0.0)
    feed(guard, 80.0, Knobs(8, 1200), now_s=1.0)
    assert guard.ceiling == 4
    assert not feed(guard, 20.0, Knobs(4, 1200), now_s=2.0)
    assert not feed(guard, 20.0, Knobs(4, 1200), now_s=61.0)
    assert feed(guard, 20.0, Knobs(4, 1200), now_s=62.0)
    assert guard.ceiling == 8
    assert feed(guard, 20.0, Knobs(8, 1200), now_s=122.0)
    assert guard.ceiling is None and guard.ladder(LADDER) == LADDER


def test_p99_between_slack_and_slo_holds_the_ladder() -> None:
    guard = LatencyGuard(slo_ms=50.0, tighten_every_s=0.0, relax_after_s=1.0)
    feed(guard, 80.0, Knobs(16, 1200), now_s=0.0)
    for second in range(1, 100):
        assert not feed(guard, 45.0, Knobs(8, 1200), now_s=float(second))
    assert guard.ceiling == 8 and guard.misses == 1


def test_the_cap_wins_when_the_clock_is_held_low_and_nothing_is_left() -> None:
    guard = LatencyGuard(slo_ms=50.0, tighten_every_s=0.0)
    feed(guard, 80.0, Knobs(16, 1200), now_s=0.0)
    assert guard.unmet is None, "a smaller batch can still help"
    feed(guard, 80.0, Knobs(8, 600), now_s=1.0)
    assert guard.unmet is not None and "the cap wins" in guard.unmet and "600 MHz" in guard.unmet
    feed(guard, 80.0, Knobs(1, 1200), now_s=2.0)
    assert guard.unmet is not None and "smallest batch size 1" in guard.unmet
    assert guard.ceiling == 4, "nothing under the smallest batch: the ceiling stays"
    feed(guard, 30.0, Knobs(1, 1200), now_s=3.0)
    assert guard.unmet is None


def test_no_reading_changes_nothing_and_counts_no_miss() -> None:
    guard = LatencyGuard(slo_ms=50.0)
    assert not feed(guard, None, Knobs(16, 1200), now_s=0.0)
    assert guard.ceiling is None and guard.misses == 0 and guard.p99_ms is None


def test_the_slo_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slo_ms"):
        LatencyGuard(slo_ms=0.0)


def test_under_a_backlog_a_rung_comes_back_and_is_not_taken_again_until_slack() -> None:
    guard = LatencyGuard(slo_ms=50.0, tighten_every_s=10.0, relax_after_s=30.0)
    feed(guard, 80.0, Knobs(16, 1200), now_s=0.0)
    assert guard.ceiling == 8
    # At batch 8 the requests pile up: smaller batches serve fewer, the queue is the latency.
    # A reload's time after the last move, not the tightening pace: a growing queue is worse.
    assert not feed(guard, 90.0, Knobs(8, 1200), now_s=2.0, queued=40)
    assert feed(guard, 90.0, Knobs(8, 1200), now_s=5.0, queued=40)
    assert guard.ceiling is None, "the rung taken is given back"
    assert guard.unmet is not None and "40 requests queued" in guard.unmet
    # Over the SLO without a backlog again: 16 stays, as 8 was seen to pile requests up.
    assert not feed(guard, 80.0, Knobs(16, 1200), now_s=20.0)
    assert guard.ceiling is None or guard.ceiling >= 16
    # Slack for long enough: the load eased, every rung may be tried again.
    for second in range(21, 60):
        feed(guard, 20.0, Knobs(16, 1200), now_s=float(second))
    assert feed(guard, 80.0, Knobs(16, 1200), now_s=70.0)
    assert guard.ceiling == 8
