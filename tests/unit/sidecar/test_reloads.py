"""The reload governor on virtual time: backoff, quarantine, global rate, timeout."""

from __future__ import annotations

import pytest

from capinfer_sidecar.reloads import ReloadGovernor


def governor() -> ReloadGovernor:
    return ReloadGovernor(
        base_backoff_s=5,
        max_backoff_s=40,
        quarantine_after=3,
        quarantine_s=1800,
        max_failures_per_window=5,
        window_s=60,
        first_timeout_s=300,
        min_timeout_s=30,
        timeout_factor=4,
    )


def test_a_failed_size_backs_off_exponentially() -> None:
    g = governor()
    assert g.blocked(32, 0) is None
    assert g.failed(32, 0, "refused").retry_at_s == 5
    assert g.blocked(32, 4.9) is not None and g.blocked(32, 5) is None
    assert g.failed(32, 5, "refused").retry_at_s == 15
    assert "2 times in a row" in (g.blocked(32, 10) or "")
    assert g.blocked(16, 10) is None  # other sizes are not held back


def test_a_size_refused_repeatedly_is_quarantined_for_long() -> None:
    g = governor()
    for now in (0, 5, 15):
        outcome = g.failed(32, now, "Triton: max_batch_size 32 exceeds the engine's 16")
    assert outcome.quarantined and outcome.retry_at_s == 15 + 1800
    assert g.quarantined(16) == (32,)
    why = g.blocked(32, 1000)
    assert why is not None and "quarantined" in why and "exceeds the engine" in why
    assert g.blocked(32, 1815) is None and g.quarantined(1815) == ()
    # One more failure after the quarantine: straight back in.
    assert g.failed(32, 1815, "refused").quarantined


def test_success_forgets_a_size_s_failures() -> None:
    g = governor()
    g.failed(32, 0, "refused")
    g.failed(32, 5, "refused")
    g.succeeded(32, 2.0)
    assert g.blocked(32, 6) is None
    assert g.failed(32, 6, "refused").retry_at_s == 11  # the backoff starts over


def test_failed_loads_are_rate_limited_over_all_sizes() -> None:
    g = governor()
    for i, size in enumerate((1, 2, 4, 8, 16)):
        g.failed(size, float(i), "refused")
    why = g.blocked(64, 10)
    assert why is not None and "5 failed loads in the last 60 s" in why
    assert g.blocked(64, 59.9) is not None
    assert g.blocked(64, 60) is None  # the first failure left the window


@pytest.mark.parametrize("policy_asks_every_s", [0.1, 1.0])
def test_no_policy_gets_more_than_a_handful_of_failed_loads_a_minute(
    policy_asks_every_s: float,
) -> None:
    g = governor()
    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    loads: list[float] = []
    now = 0.0
    step = 0
    while now < 3600:
        size = sizes[step % len(sizes)]
        step += 1
        if g.blocked(size, now) is None:
            loads.append(now)
            g.failed(size, now, "refused")
        now += policy_asks_every_s
    worst_minute = max(sum(1 for t in loads if start <= t < start + 60) for start in loads)
    assert worst_minute <= 5
    assert len(loads) < 100  # an hour, not 36 000 attempts


def test_the_timeout_follows_measured_loads_with_a_floor() -> None:
    g = governor()
    assert g.timeout_s() == 300  # nothing measured yet: generous
    g.succeeded(8, 1.5)
    assert g.timeout_s() == 30  # 4 x 1.5 s is below the floor
    g.succeeded(16, 20.0)
    assert g.timeout_s() == 80
