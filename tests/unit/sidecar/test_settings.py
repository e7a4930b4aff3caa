from __future__ import annotations

from dataclasses import replace

import pytest

from capinfer_sidecar.settings import (
    DEFAULT_BATCH_SIZES,
    InvalidPowerSpecError,
    clock_ladder_mhz,
    parse_power_spec,
    policy_options,
    to_power_settings,
)


def test_defaults_follow_the_crd() -> None:
    spec = parse_power_spec({"capWatts": 180})
    assert spec.cap_watts == 180
    assert spec.policy == "Adaptive"
    assert spec.band == 0.8
    assert spec.batch_sizes == DEFAULT_BATCH_SIZES
    assert spec.clock_control is True
    assert spec.sample_interval_s == pytest.approx(0.1)


def test_full_spec_is_parsed() -> None:
    spec = parse_power_spec(
        {
            "capWatts": 150.5,
            "policy": "BatchSizer",
            "band": 0.9,
            "batchSizes": [1, 8, 64],
            "clockControl": {"enabled": False, "minMHz": 600, "maxMHz": 1400},
            "sampleIntervalMs": 50,
        }
    )
    assert (spec.cap_watts, spec.policy, spec.band) == (150.5, "BatchSizer", 0.9)
    assert spec.batch_sizes == (1, 8, 64)
    assert (spec.clock_control, spec.min_clock_mhz, spec.max_clock_mhz) == (False, 600, 1400)
    assert spec.sample_interval_s == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("power", "field"),
    [
        ({}, "capWatts"),
        ({"capWatts": -1}, "capWatts"),
        ({"capWatts": "lots"}, "capWatts"),
        ({"capWatts": 100, "band": 1.0}, "band"),
        ({"capWatts": 100, "batchSizes": [4, 2]}, "batchSizes"),
        ({"capWatts": 100, "batchSizes": [2, 2]}, "batchSizes"),
        ({"capWatts": 100, "batchSizes": []}, "batchSizes"),
        ({"capWatts": 100, "clockControl": {"minMHz": 900, "maxMHz": 600}}, "clockControl"),
        ({"capWatts": 100, "sampleIntervalMs": 0}, "sampleIntervalMs"),
    ],
)
def test_errors_name_the_field(power: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidPowerSpecError, match=rf"spec\.power\.{field}"):
        parse_power_spec(power)


def test_clock_ladder_is_supported_clocks_inside_the_bounds() -> None:
    spec = parse_power_spec({"capWatts": 100, "clockControl": {"minMHz": 700, "maxMHz": 1300}})
    supported = [1531, 544, 734, 1303, 1063, 632]
    assert clock_ladder_mhz(spec, supported, clock_control_available=True) == (734, 1063)


def test_no_clock_ladder_when_clocks_cannot_or_must_not_be_set() -> None:
    on = parse_power_spec({"capWatts": 100})
    off = parse_power_spec({"capWatts": 100, "clockControl": {"enabled": False}})
    assert clock_ladder_mhz(on, [600, 900], clock_control_available=False) == ()
    assert clock_ladder_mhz(off, [600, 900], clock_control_available=True) == ()
    settings = to_power_settings(off, [600, 900], clock_control_available=True)
    assert not settings.clock_control
    assert settings.cap_watts == 100


def test_static_pair_and_latency_slo_are_parsed_and_checked() -> None:
    spec = parse_power_spec(
        {
            "capWatts": 180, "policy": "Static", "staticBatchSize": 16, "staticClockMHz": 1200,
            "latencySLO": {"p99Ms": 25},
        }
    )  # fmt: skip
    assert (spec.static_batch_size, spec.static_clock_mhz, spec.p99_slo_ms) == (16, 1200, 25.0)
    assert policy_options(spec) == {"batch_size": 16, "clock_mhz": 1200}
    assert policy_options(replace(spec, policy="Adaptive")) == {}
    with pytest.raises(InvalidPowerSpecError, match="staticBatchSize: 12 is not one of"):
        parse_power_spec({"capWatts": 180, "staticBatchSize": 12})
    with pytest.raises(InvalidPowerSpecError, match="staticClockMHz"):
        parse_power_spec({"capWatts": 180, "staticClockMHz": 900, "clockControl": {"minMHz": 1000}})
    with pytest.raises(InvalidPowerSpecError, match=r"latencySLO\.p99Ms"):
        parse_power_spec({"capWatts": 180, "latencySLO": {"p99Ms": 0}})
