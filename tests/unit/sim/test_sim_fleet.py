"""The fleet simulator: many Adaptive sidecars under one budget, and the oracle split."""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from capinfer.cli import main
from capinfer.fleetbench import fleet_metrics, member_policy
from capinfer_core.budget import SplitPolicy
from capinfer_sidecar.fleetsim import EXPLORE_STEP, member_curve, run_fleet
from capinfer_sidecar.loop import LoopSnapshot
from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.sim.fleet import (
    FleetConfig,
    _best_split,
    _options,
    load_fleet_workload,
    oracle_split,
    parse_fleet_workload,
)
from capinfer_sidecar.sim.yamlread import SpecError

FLEET = Path(__file__).parents[3] / "bench" / "workloads" / "fleet.yaml"

SMALL: dict[str, Any] = {
    "name": "small-fleet",
    "fleet": {
        "budget_watts": 700,
        "budget_changes": [{"at_s": 10, "watts": 450}],
        "reserve_fraction": 0.02,
        "bounds": {
            "p40": {"min_watts": 80, "max_watts": 250},
            "h100": {"min_watts": 150, "max_watts": 700},
        },
    },
    "defaults": {"duration_s": 20, "load": "saturating"},
    "jobs": [
        {"name": "a", "profile": "p40", "dnn": "Res50", "dataset": "caltech", "seed": 1},
        {"name": "b", "profile": "p40", "dnn": "MobV2", "dataset": "caltech", "seed": 2},
        {"name": "c", "profile": "h100", "dnn": "Res50", "dataset": "tensor", "seed": 3},
    ],
}


def _small() -> FleetConfig:
    return parse_fleet_workload(SMALL, "small").config


def _caps_at(caps: list[tuple[float, float]], at_s: float) -> float:
    current = caps[0][1]
    for when, cap in caps:
        if when <= at_s:
            current = cap
    return current


@pytest.mark.parametrize("split", list(SplitPolicy))
def test_published_caps_never_sum_over_the_budget(split: SplitPolicy) -> None:
    config = _small()
    result = run_fleet(config, split, member_policy)
    moments = sorted({when for caps in result.caps.values() for when, _ in caps})
    assert len(moments) >= 2  # the budget changed, so caps moved
    for at_s in moments:
        published = math.fsum(_caps_at(caps, at_s) for caps in result.caps.values())
        allowed = config.budget_at(at_s + 1e-9) * (1 - config.reserve_fraction)
        assert published <= allowed + 1e-6, (split, at_s, published, allowed)
    assert result.confirmations > 0
    metrics = fleet_metrics(result)
    assert metrics.throughput_ips > 0
    assert len(metrics.settling_s) == 1


def test_max_throughput_moves_watts_to_the_gpu_that_uses_them_best() -> None:
    """The H100 serves far more per watt than the P40s: after the budget falls, the split
    leaves the P40s near their minimum and gives the H100 the rest, where Equal does not."""
    config = _small()
    best = run_fleet(config, SplitPolicy.MAX_THROUGHPUT, member_policy)
    equal = run_fleet(config, SplitPolicy.EQUAL, member_policy)
    assert _caps_at(best.caps["c"], 19.9) > _caps_at(equal.caps["c"], 19.9) + 50
    assert sum(best.inferences.values()) > sum(equal.inferences.values())


def test_the_fleet_run_is_deterministic() -> None:
    config = replace(_small(), duration_s=8.0, budget_changes=())
    first = run_fleet(config, SplitPolicy.MAX_THROUGHPUT, member_policy)
    second = run_fleet(config, SplitPolicy.MAX_THROUGHPUT, member_policy)
    assert first.inferences == second.inferences
    assert first.caps == second.caps


def test_oracle_split_is_the_exact_best_static_choice() -> None:
    """Against brute force over every member's pairs on the small fleet."""
    config = _small()
    for budget in (450.0, 700.0):
        total, caps, _ = _best_split(config.members, budget, 0.0)
        options = [_options(spec, math.inf) for spec in config.members]
        brute = max(
            sum(ips for _, ips in choice)
            for choice in itertools.product(*options)
            if sum(watts for watts, _ in choice) <= budget
        )
        assert total == pytest.approx(brute)
        assert sum(caps.values()) <= budget
        for spec in config.members:
            assert spec.min_watts <= caps[spec.name] <= spec.max_watts


def test_oracle_follows_budget_and_load_changes() -> None:
    fleet = load_fleet_workload(FLEET)
    stretches = oracle_split(fleet.config)
    starts = [s.start_s for s in stretches]
    assert starts == [0.0, 80.0, 120.0, 160.0]  # budget at 80 and 160, loads at 120
    assert stretches[1].throughput_ips < stretches[0].throughput_ips
    for stretch in stretches:
        assert sum(stretch.caps_watts.values()) <= stretch.budget_watts


def _variant(part: str, key: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(SMALL)
    if part == "job":
        document["jobs"][0][key] = value
    else:
        document["fleet"][key] = value
    return document


BOUNDS_P40_ONLY = {"p40": {"min_watts": 80, "max_watts": 250}}
BOUNDS_INVERTED = {"p40": {"min_watts": 300, "max_watts": 250}, "h100": BOUNDS_P40_ONLY["p40"]}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_variant("job", "cap_watts", 100), "budget sets every member's cap"),
        (_variant("job", "cap_changes", []), "budget sets every member's cap"),
        (_variant("fleet", "bounds", BOUNDS_P40_ONLY), "no bounds for profile 'h100'"),
        (_variant("fleet", "bounds", BOUNDS_INVERTED), "below min_watts"),
        (_variant("fleet", "budget_changes", [{"at_s": 30, "watts": 1}]), "in the run"),
        (_variant("fleet", "surprise", 1), "surprise"),
        (_variant("job", "duration_s", 30), "same duration_s"),
    ],
)
def test_fleet_workloads_are_validated(document: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_fleet_workload(document, "small")


class _Measured(Policy):
    """A policy that only reports what it measured."""

    def __init__(self, measured: list[tuple[float, float]]) -> None:
        self._measured = measured

    def measured_settings(self) -> list[tuple[float, float]]:
        return self._measured

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        return Decision(Knobs(1, None), "")

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        return Decision(Knobs(1, None), "")

    def step(self, observation: Observation) -> Decision:
        return Decision(Knobs(1, None), "")


def _snapshot(power_watts: float, ips: float, state: str = "settled") -> LoopSnapshot:
    return LoopSnapshot(
        now_s=1.0, cap_watts=200.0, power_watts=power_watts, mean_power_watts=power_watts,
        energy_joules=0.0, batch_size=8, requested_batch_size=8, sm_clock_mhz=1000,
        inferences_per_second=ips, seconds_over_cap=0.0, violations=0, reloads=0,
        reload_failures=0, policy="Adaptive", policy_state=state, reason="", clock_control=True,
        degraded=None,
    )  # fmt: skip


MEASURED = [(120.0, 100.0), (160.0, 150.0), (195.0, 180.0)]


def test_a_cap_that_binds_earns_an_optimistic_step_above_it() -> None:
    recent = [_snapshot(195.0, 180.0)] * 10
    curve, demand = member_curve(_Measured(MEASURED), recent, 200.0, 250.0)
    assert curve is not None
    assert curve.cap_watts[-1] == pytest.approx(200.0 * (1 + EXPLORE_STEP)) or (
        curve.cap_watts[-1] == 250.0
    )
    assert curve.throughput_at(curve.cap_watts[-1]) > 180.0  # the last slope continued
    assert demand == 250.0


def test_light_load_caps_the_curve_at_what_is_served() -> None:
    recent = [_snapshot(140.0, 90.0, state="light-load")] * 10
    curve, demand = member_curve(_Measured(MEASURED), recent, 200.0, 250.0)
    assert curve is not None
    assert curve.peak_ips == pytest.approx(90.0 * 1.02)
    assert demand == pytest.approx(154.0)  # a little over the recent peak
    assert curve.throughput_at(250.0) == curve.peak_ips


def test_nothing_measured_means_no_curve() -> None:
    curve, _ = member_curve(_Measured([]), [_snapshot(195.0, 0.0)] * 10, 200.0, 250.0)
    assert curve is None


def _small_file(tmp_path: Path, duration_s: float) -> Path:
    document = copy.deepcopy(SMALL)
    document["defaults"]["duration_s"] = duration_s
    document["fleet"]["budget_changes"] = [{"at_s": duration_s / 2, "watts": 450}]
    path = tmp_path / "small-fleet.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_capinfer_bench_runs_a_fleet_workload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _small_file(tmp_path, 8.0)
    out = tmp_path / "report"
    assert main(["bench", "--workload", str(path), "--out", str(out), "--policies",
                 "MaxThroughput,Equal"]) == 0  # fmt: skip
    report = (out / "report.md").read_text()
    assert "oracle split" in report and "| MaxThroughput |" in report and "| Equal |" in report
    assert "--policies MaxThroughput,Equal" in report  # the command that made it
    results = json.loads((out / "results.json").read_text())
    assert set(results["splits"]) == {"MaxThroughput", "Equal"}
    assert results["splits"]["Equal"]["vs_equal"] == 1.0
    assert 0 < results["splits"]["MaxThroughput"]["vs_oracle"] < 1.0
    captured = capsys.readouterr()
    assert "MaxThroughput: 0/8 s simulated" in captured.err  # progress


def test_capinfer_bench_refuses_unknown_splits_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _small_file(tmp_path, 4.0)
    argv = ["bench", "--workload", str(path), "--out", str(tmp_path / "o"), "--policies", "DVFS"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("capinfer: error: ") and "unknown split policy 'DVFS'" in err
