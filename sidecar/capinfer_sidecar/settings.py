"""``spec.power`` of a PowerCappedInference, parsed and turned into policy settings.

Pure: the same parsing serves the Kubernetes watch and standalone mode (flags or a YAML
file), so a cap means the same thing wherever it comes from. Defaults match the CRD's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from capinfer_sidecar.policies.base import PowerSettings

DEFAULT_POLICY = "Adaptive"
DEFAULT_BAND = 0.8
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_SAMPLE_INTERVAL_MS = 100
LATENCY_SLO_KEY = "latencySLO"
"""``spec.latencySLO`` travels with ``spec.power`` under this key: both are live settings."""


class InvalidPowerSpecError(ValueError):
    """``spec.power`` cannot be honoured; the message names the field."""


@dataclass(frozen=True)
class PowerSpec:
    """What the user declared, before it meets a real GPU."""

    cap_watts: float
    policy: str = DEFAULT_POLICY
    band: float = DEFAULT_BAND
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    clock_control: bool = True
    min_clock_mhz: int | None = None
    max_clock_mhz: int | None = None
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_MS / 1000
    static_batch_size: int | None = None
    """``staticBatchSize``: Static's fixed batch size (None: the top of the ladder)."""
    static_clock_mhz: int | None = None
    """``staticClockMHz``: Static's fixed SM clock (None: the highest it may lock)."""
    p99_slo_ms: float | None = None
    """``spec.latencySLO.p99Ms``: the p99 latency to keep beside the cap (None: none)."""

    def with_cap(self, cap_watts: float) -> PowerSpec:
        return replace(self, cap_watts=cap_watts)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPowerSpecError(f"spec.power.{field}: expected a number, got {value!r}")
    return float(value)


def _optional_int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    return int(_number(value, field))


def parse_power_spec(power: Mapping[str, Any]) -> PowerSpec:
    """Parse ``spec.power`` (with ``spec.latencySLO`` under ``latencySLO``); every error names
    the offending field."""
    if "capWatts" not in power:
        raise InvalidPowerSpecError("spec.power.capWatts: required")
    cap_watts = _number(power["capWatts"], "capWatts")
    if cap_watts <= 0:
        raise InvalidPowerSpecError(f"spec.power.capWatts: must be positive, got {cap_watts:g}")
    band = _number(power.get("band", DEFAULT_BAND), "band")
    if not 0.0 < band < 1.0:
        raise InvalidPowerSpecError(f"spec.power.band: must be in (0, 1), got {band:g}")
    raw_sizes = power.get("batchSizes", DEFAULT_BATCH_SIZES)
    if not isinstance(raw_sizes, Sequence) or isinstance(raw_sizes, str) or not raw_sizes:
        raise InvalidPowerSpecError("spec.power.batchSizes: expected a non-empty list of integers")
    sizes = tuple(int(_number(size, "batchSizes")) for size in raw_sizes)
    if any(size < 1 for size in sizes) or list(sizes) != sorted(set(sizes)):
        raise InvalidPowerSpecError(
            f"spec.power.batchSizes: must be positive and strictly ascending, got {list(sizes)}"
        )
    clock = power.get("clockControl") or {}
    if not isinstance(clock, Mapping):
        raise InvalidPowerSpecError("spec.power.clockControl: expected an object")
    min_mhz = _optional_int(clock.get("minMHz"), "clockControl.minMHz")
    max_mhz = _optional_int(clock.get("maxMHz"), "clockControl.maxMHz")
    if min_mhz is not None and max_mhz is not None and min_mhz > max_mhz:
        raise InvalidPowerSpecError(
            f"spec.power.clockControl: minMHz ({min_mhz}) must not exceed maxMHz ({max_mhz})"
        )
    interval_ms = _number(
        power.get("sampleIntervalMs", DEFAULT_SAMPLE_INTERVAL_MS), "sampleIntervalMs"
    )
    if interval_ms <= 0:
        raise InvalidPowerSpecError(
            f"spec.power.sampleIntervalMs: must be positive, got {interval_ms}"
        )
    policy = power.get("policy", DEFAULT_POLICY)
    if not isinstance(policy, str) or not policy:
        raise InvalidPowerSpecError(f"spec.power.policy: expected a policy name, got {policy!r}")
    static_batch = _optional_int(power.get("staticBatchSize"), "staticBatchSize")
    if static_batch is not None and static_batch not in sizes:
        raise InvalidPowerSpecError(
            f"spec.power.staticBatchSize: {static_batch} is not one of batchSizes {list(sizes)}"
        )
    static_clock = _optional_int(power.get("staticClockMHz"), "staticClockMHz")
    too_low = static_clock is not None and min_mhz is not None and static_clock < min_mhz
    too_high = static_clock is not None and max_mhz is not None and static_clock > max_mhz
    if too_low or too_high:
        raise InvalidPowerSpecError(
            f"spec.power.staticClockMHz: {static_clock} lies outside clockControl.minMHz..maxMHz"
        )
    return PowerSpec(
        cap_watts=cap_watts,
        policy=policy,
        band=band,
        batch_sizes=sizes,
        clock_control=bool(clock.get("enabled", True)),
        min_clock_mhz=min_mhz,
        max_clock_mhz=max_mhz,
        sample_interval_s=interval_ms / 1000,
        static_batch_size=static_batch,
        static_clock_mhz=static_clock,
        p99_slo_ms=_p99_slo_ms(power.get(LATENCY_SLO_KEY)),
    )


def _p99_slo_ms(slo: Any) -> float | None:
    if slo is None:
        return None
    if not isinstance(slo, Mapping) or "p99Ms" not in slo:
        raise InvalidPowerSpecError("spec.latencySLO: expected an object with p99Ms")
    p99_ms = slo["p99Ms"]
    if isinstance(p99_ms, bool) or not isinstance(p99_ms, int | float) or p99_ms <= 0:
        raise InvalidPowerSpecError(
            f"spec.latencySLO.p99Ms: must be a positive number, got {p99_ms!r}"
        )
    return float(p99_ms)


def policy_options(spec: PowerSpec) -> dict[str, Any]:
    """The policy's constructor options the spec declares (Static's fixed pair)."""
    if spec.policy != "Static":
        return {}
    options: dict[str, Any] = {}
    if spec.static_batch_size is not None:
        options["batch_size"] = spec.static_batch_size
    if spec.static_clock_mhz is not None:
        options["clock_mhz"] = spec.static_clock_mhz
    return options


def clock_ladder_mhz(
    spec: PowerSpec, supported_mhz: Sequence[int], clock_control_available: bool
) -> tuple[int, ...]:
    """The SM clocks a policy may use: supported by the GPU, inside the declared bounds.

    Empty (batch-only control) when clock control is off in the spec or not permitted.
    """
    if not (spec.clock_control and clock_control_available):
        return ()
    low = spec.min_clock_mhz if spec.min_clock_mhz is not None else 0
    high = spec.max_clock_mhz if spec.max_clock_mhz is not None else 1 << 30
    return tuple(sorted({mhz for mhz in supported_mhz if low <= mhz <= high}))


def to_power_settings(
    spec: PowerSpec, supported_mhz: Sequence[int], clock_control_available: bool
) -> PowerSettings:
    return PowerSettings(
        cap_watts=spec.cap_watts,
        batch_sizes=spec.batch_sizes,
        clock_levels_mhz=clock_ladder_mhz(spec, supported_mhz, clock_control_available),
        band=spec.band,
    )
