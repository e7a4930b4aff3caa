"""The clock trimmer alone: cuts by estimated power, on dense and sparse ladders alike."""

from __future__ import annotations

from capinfer_sidecar.policies.clocktrim import (
    highest_level_under,
    highest_level_within,
    level_under_limit,
    rescaled_peak_watts,
)

H100_NVML_MHZ = tuple(range(345, 1981, 15))  # 110 levels, as NVML lists them
SPARSE_MHZ = (795, 930, 1065, 1200, 1335, 1470, 1605, 1740, 1875, 1980)


def nothing_known(level: int) -> float | None:
    del level
    return None


def test_rescaling_follows_the_clock_curve() -> None:
    assert rescaled_peak_watts(300.0, 1980, 1980, 100.0, 2.0) == 300.0
    assert rescaled_peak_watts(300.0, 1980, 990, 100.0, 2.0) == 150.0  # 100 + 200 / 4


def test_a_dense_ladder_is_cut_by_power_in_one_step() -> None:
    # 20 W over at 1980 MHz on a 400 W pair: with gamma 2 the clock must lose ~3%: several
    # 15 MHz levels at once, not one per sample.
    kwargs = {"idle_watts": 100.0, "gamma": 2.0, "known_peak": nothing_known}
    target = level_under_limit(H100_NVML_MHZ, 1980, 420.0, 400.0, **kwargs)  # type: ignore[arg-type]
    assert rescaled_peak_watts(420.0, 1980, target, 100.0, 2.0) <= 400.0
    above = H100_NVML_MHZ[H100_NVML_MHZ.index(target) + 1]
    assert rescaled_peak_watts(420.0, 1980, above, 100.0, 2.0) > 400.0  # the highest that fits
    assert H100_NVML_MHZ.index(1980) - H100_NVML_MHZ.index(target) >= 3
    # The sparse ladder lands on its own highest level under the limit.
    sparse = level_under_limit(SPARSE_MHZ, 1980, 420.0, 400.0, **kwargs)  # type: ignore[arg-type]
    assert sparse == 1875 and target > sparse


def test_what_is_known_of_a_level_counts_when_it_is_hotter() -> None:
    def known(level: int) -> float | None:
        return 410.0 if level >= 1900 else None

    target = level_under_limit(
        H100_NVML_MHZ, 1980, 405.0, 400.0, idle_watts=100.0, gamma=2.0, known_peak=known
    )
    assert target < 1900


def test_nothing_fits_gives_the_lowest_level() -> None:
    target = level_under_limit(
        H100_NVML_MHZ, 1980, 900.0, 50.0, idle_watts=100.0, gamma=2.0, known_peak=nothing_known
    )
    assert target == H100_NVML_MHZ[0]
    assert highest_level_under(H100_NVML_MHZ, 1980, 50.0, lambda level: 100.0) == 345


def test_a_cap_drop_goes_to_the_highest_level_with_an_estimate_under_the_limit() -> None:
    def estimate(level: int) -> float | None:
        return None if level > 1500 else 100.0 + 200.0 * (level / 1980) ** 2

    target = highest_level_under(H100_NVML_MHZ, 1980, 200.0, estimate)
    assert estimate(target) is not None
    assert estimate(target) <= 200.0 < estimate(target + 15)  # type: ignore[operator]


def _scan_from_top(
    clocks: tuple[int, ...], limit: float, curve: dict[int, float], own: dict[int, float | None]
) -> int | None:
    for clock in reversed(clocks):
        peak = own[clock] if clock in own else curve[clock]
        if peak is not None and peak <= limit:
            return clock
    return None


def test_bisection_gives_what_a_scan_from_the_top_gives() -> None:
    # A rising curve, with levels of their own off it: hotter than the curve (found too
    # hot), cooler (measured), and one with no estimate.
    curve = {c: 100.0 + 300.0 * (c / 1980) ** 2.0 for c in H100_NVML_MHZ}
    own: dict[int, float | None] = {1200: 500.0, 1965: 250.0, 600: None, 345: 90.0}
    for limit in (80.0, 95.0, 150.0, 240.0, 260.0, 300.0, 350.0, 399.0, 400.0, 450.0):
        for levels in (H100_NVML_MHZ, SPARSE_MHZ):
            present = {c: p for c, p in own.items() if c in levels}
            found = highest_level_within(levels, limit, curve.__getitem__, present)
            assert found == _scan_from_top(levels, limit, curve, present), (limit, levels)


def test_bisection_asks_the_curve_a_handful_of_times() -> None:
    asked: list[int] = []

    def curve(level: int) -> float:
        asked.append(level)
        return 100.0 + 300.0 * (level / 1980) ** 2.0

    found = highest_level_within(H100_NVML_MHZ, 300.0, curve, {})
    assert found is not None and curve(found) <= 300.0
    assert len(asked) <= 9  # log2(110) + 1 + the check above, where a scan asks ~40
