"""The GPU power/performance model: shapes the paper describes, and clear errors for bad files."""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

import pytest
import yaml

from capinfer_sidecar.sim.profiles import (
    MeasuredWorkload,
    ParametricWorkload,
    ProfileSet,
    builtin_profile_names,
    load_profile_set,
    parse_profile_set,
)
from capinfer_sidecar.sim.yamlread import SpecError

PAPER_DNNS = ["IncV1", "IncV2", "IncV3", "MobV1", "MobV2", "NASNET", "PNASNET", "Res50", "Res101",
              "Res152"]  # fmt: skip


@pytest.fixture(scope="module")
def p40() -> ProfileSet:
    return load_profile_set("p40")


def all_workloads(profiles: ProfileSet) -> list[ParametricWorkload]:
    found = []
    for dnn in profiles.dnns:
        for dataset in profiles.datasets(dnn):
            workload = profiles.workload(dnn, dataset)
            assert isinstance(workload, ParametricWorkload)
            found.append(workload)
    return found


def test_builtin_sets_hold_the_papers_dnns_on_both_datasets(p40: ProfileSet) -> None:
    assert {"p40", "h100"} <= set(builtin_profile_names())
    assert p40.dnns == sorted(PAPER_DNNS)
    for dnn in PAPER_DNNS:
        assert p40.datasets(dnn) == ["caltech", "imagenet"]
    # Every clock the P40 lists (NVML), 12-13 MHz apart; the paper's ten are among them.
    clocks = p40.gpu.clock_levels_mhz
    assert (clocks[0], clocks[-1], len(clocks)) == (544, 1531, 79)
    assert {b - a for a, b in itertools.pairwise(clocks)} == {12, 13}
    assert {544, 632, 734, 835, 949, 1063, 1189, 1303, 1430, 1531} <= set(clocks)
    assert p40.gpu.batch_sizes == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    h100 = load_profile_set("h100")
    assert h100.dnns == sorted(PAPER_DNNS)
    assert h100.gpu.power_limit_watts > p40.gpu.power_limit_watts


@pytest.mark.parametrize("name", ["p40", "h100"])
def test_power_and_throughput_rise_with_the_clock(name: str) -> None:
    profiles = load_profile_set(name)
    clocks = profiles.gpu.clock_levels_mhz
    for workload in all_workloads(profiles):
        for batch in profiles.gpu.batch_sizes:
            for low, high in itertools.pairwise(clocks):
                assert workload.peak_power_watts(batch, high) >= workload.peak_power_watts(
                    batch, low
                ), (workload.label, batch, low)
                assert workload.throughput_ips(batch, high) >= workload.throughput_ips(batch, low)


@pytest.mark.parametrize("name", ["p40", "h100"])
def test_power_rises_with_the_batch_and_throughput_up_to_saturation(name: str) -> None:
    profiles = load_profile_set(name)
    for workload in all_workloads(profiles):
        for clock in (profiles.gpu.min_clock_mhz, None):
            for low, high in itertools.pairwise(profiles.gpu.batch_sizes):
                assert workload.peak_power_watts(high, clock) > workload.peak_power_watts(
                    low, clock
                ), (workload.label, low)
                if high <= workload.saturation_batch:
                    assert workload.throughput_ips(high, clock) > workload.throughput_ips(
                        low, clock
                    )


def test_past_saturation_throughput_is_flat_while_power_keeps_rising(p40: ProfileSet) -> None:
    workload = p40.workload("Res152", "caltech")
    assert workload.saturation_batch < 128
    cutoff = workload.max_beneficial_batch()
    assert cutoff <= 128
    best = max(workload.throughput_ips(b, None) for b in p40.gpu.batch_sizes)
    assert workload.throughput_ips(256, None) < best
    assert workload.peak_power_watts(256, None) > workload.peak_power_watts(cutoff, None)


def test_busy_power_stays_between_loaded_idle_and_the_board_limit() -> None:
    for name in ("p40", "h100"):
        profiles = load_profile_set(name)
        gpu = profiles.gpu
        for workload in all_workloads(profiles):
            for batch, clock in itertools.product(gpu.batch_sizes, gpu.clock_levels_mhz):
                watts = workload.busy_power_watts(batch, clock)
                assert gpu.loaded_idle_watts < watts <= gpu.power_limit_watts + 1e-6
                assert workload.mean_power_watts(batch, clock) < watts


def test_the_board_limiter_lowers_the_clock_instead_of_exceeding_the_limit() -> None:
    document = yaml.safe_load(_builtin_text("p40"))
    document["gpu"]["power_limit_watts"] = 150
    workload = parse_profile_set(document, "low-limit", "test").workload("Res50", "caltech")
    assert workload.busy_power_watts(256, None) == pytest.approx(150, abs=0.01)
    assert workload.effective_clock_mhz(256, None) < 1531
    assert workload.effective_clock_mhz(1, None) == 1531
    # The lowered clock costs throughput exactly as a lower locked clock would.
    clock = workload.effective_clock_mhz(256, None)
    assert workload.batch_latency_s(256, None) == pytest.approx(
        workload.batch_latency_s(256, clock)
    )


def test_compute_time_scales_inversely_with_the_clock(p40: ProfileSet) -> None:
    workload = p40.workload("Res101", "caltech")
    assert isinstance(workload, ParametricWorkload)
    fixed_s = workload.fixed_latency_s
    assert fixed_s > 0
    top = workload.batch_latency_s(128, 1500)
    half = workload.batch_latency_s(128, 750)
    assert half - fixed_s == pytest.approx(2 * (top - fixed_s))
    # Launches and weight reads do not scale with the clock: halving it less than doubles time.
    assert top < half < 2 * top


def test_imagenet_gains_less_from_batching_than_caltech_for_mobilenet(p40: ProfileSet) -> None:
    def gain(dataset: str) -> float:
        workload = p40.workload("MobV1", dataset)
        return workload.throughput_ips(256, None) / workload.throughput_ips(16, None)

    assert gain("caltech") > gain("imagenet") + 0.1


def test_the_papers_pattern_between_batch_size_and_dvfs(p40: ProfileSet) -> None:
    """Job 19 (Res101, Caltech, 236 W) gains from big batches; job 5 (MobV2, ImageNet, 84 W)
    is better served by batch 16 at a lower clock than by small batches at the top clock."""

    def best(workload: ParametricWorkload, cap: float, pairs: list[tuple[int, int]]) -> float:
        feasible = [(b, c) for b, c in pairs if workload.peak_power_watts(b, c) <= cap]
        return max(workload.throughput_ips(b, c) for b, c in feasible)

    top = p40.gpu.max_clock_mhz
    for dnn, dataset, cap, batch_wins in (("Res101", "caltech", 236, True),
                                          ("MobV2", "imagenet", 84, False)):  # fmt: skip
        workload = p40.workload(dnn, dataset)
        assert isinstance(workload, ParametricWorkload)
        batches = best(workload, cap, [(b, top) for b in p40.gpu.batch_sizes])
        dvfs = best(workload, cap, [(16, c) for c in p40.gpu.clock_levels_mhz])
        assert (batches > 1.15 * dvfs) is batch_wins
        assert (batches < dvfs) is not batch_wins


def test_unknown_dnn_and_dataset_name_what_exists(p40: ProfileSet) -> None:
    with pytest.raises(SpecError, match=r"no DNN 'Res999' \(known: IncV1"):
        p40.workload("Res999", "imagenet")
    with pytest.raises(SpecError, match=r"no dataset 'coco' for Res50 \(known: caltech, imag"):
        p40.workload("Res50", "coco")


def test_a_missing_profile_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file, and not a built-in profile"):
        load_profile_set(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("gpu", "power_limit_watts"), "lots", r"gpu.power_limit_watts: expected a number"),
        (("gpu", "default_clock_mhz"), 1000, r"1000 is not one of clock_levels_mhz"),
        (("gpu", "clock_levels_mhz"), [632, 544], r"strictly ascending"),
        (("families", "dense", "efficiency"), -1, r"families.dense.efficiency: expected a pos"),
        (("dnns", "Res50", "family"), "transformer", r"expected one of dense, depthwise, nas"),
        (("gpu", "colour"), "green", r"gpu: unknown field 'colour'"),
    ],
)
def test_bad_profile_fields_name_the_file_and_the_field(
    tmp_path: Path, path: tuple[str, ...], value: object, message: str
) -> None:
    document = yaml.safe_load(_builtin_text("p40"))
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    file = tmp_path / "broken.yaml"
    file.write_text(yaml.safe_dump(document))
    with pytest.raises(SpecError, match=message) as caught:
        load_profile_set(file)
    assert str(caught.value).startswith(str(file))


def test_a_measured_grid_interpolates_in_log_batch_and_clock(tmp_path: Path) -> None:
    document = yaml.safe_load(_builtin_text("p40"))
    points = [
        {"batch": b, "clock_mhz": c, "latency_s": 0.001 * b * 1000 / c, "prep_s": 0.0005,
         "busy_watts": 60 + 10 * b.bit_length() + c / 100}
        for b in (1, 4) for c in (1000, 1500)
    ]  # fmt: skip
    measured = {
        "kind": "measured",
        "gpu": document["gpu"],
        "workloads": [{"dnn": "toy", "dataset": "tensor", "points": points}],
    }
    file = tmp_path / "measured.yaml"
    file.write_text(yaml.safe_dump(measured))
    workload = load_profile_set(file).workload("toy", "tensor")
    assert isinstance(workload, MeasuredWorkload)
    assert workload.batch_latency_s(4, 1000) == pytest.approx(0.004)
    # Batch 2 is halfway between 1 and 4 in log2; clock 1250 halfway between the clocks.
    assert workload.busy_power_watts(2, 1250) == pytest.approx((70 + 90) / 2 + 12.5)
    assert workload.throughput_ips(4, 1500) == pytest.approx(4 / (0.0005 + 0.004 * 1000 / 1500))
    with pytest.raises(ValueError, match=r"batch 8 outside the measured 1\.\.4"):
        workload.busy_power_watts(8, 1000)
    del measured["workloads"][0]["points"][0]
    file.write_text(yaml.safe_dump(measured))
    with pytest.raises(SpecError, match="the grid lacks batch 1 at 1000 MHz"):
        load_profile_set(file)


def _builtin_text(name: str) -> str:
    return (resources.files("capinfer_sidecar.sim.profile_data") / f"{name}.yaml").read_text()
