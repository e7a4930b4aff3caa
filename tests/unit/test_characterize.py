"""``capinfer characterize`` without a GPU: a fake runner on a fake clock, a fake meter.

The fake GPU's batch takes ``1 ms + 0.1 ms * b`` and draws ``100 W + 2 W * b``; readings
alternate around that nominal power by +-5 W so peak and mean differ. The sweep's timing
runs on the fake clock (the runner advances it), so no figure depends on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from capinfer.characterize import (
    GpuFacts,
    IdleResult,
    OutOfMemoryError,
    Reading,
    SweepResult,
    SweepSettings,
    clock_sweep,
    percentile,
    profile_document,
    render_summary,
    sweep,
    write_figures,
    write_profile,
    write_rows,
)
from capinfer.characterize_gpu import (
    CLOCK_SWEEP_REFUSED,
    TORCH_MISSING,
    import_torch,
    parse_batch_sizes,
    pick_clocks,
)
from capinfer.cli import build_parser, main
from capinfer.errors import UserError
from capinfer_sidecar.sim.profiles import load_profile_set

H100 = GpuFacts(name="Fake H100", power_limit_watts=700.0, max_sm_clock_mhz=1980)
IDLE = IdleResult(mean_watts=90.0, stdev_watts=1.5, samples=100)


def latency_s(batch: int, clock_mhz: int | None = None) -> float:
    slow_down = 1.0 if clock_mhz is None else 1980 / clock_mhz
    return (0.001 + 0.0001 * batch) * slow_down


def nominal_watts(batch: int) -> float:
    return 100.0 + 2.0 * batch


class FakeGpu:
    """Runner, meter and clock control over one simulated device and one fake clock."""

    def __init__(self, out_of_memory_from: int | None = None) -> None:
        self.now_s = 0.0
        self.batch = 0
        self.energy_j = 0.0
        self.reads = 0
        self.clock_mhz: int | None = None
        self.clock_history: list[int | None] = []
        self.out_of_memory_from = out_of_memory_from

    def clock(self) -> float:
        return self.now_s

    def run_batch(self, batch_size: int) -> None:
        if self.out_of_memory_from is not None and batch_size >= self.out_of_memory_from:
            raise OutOfMemoryError(f"batch {batch_size}")
        self.batch = batch_size
        duration_s = latency_s(batch_size, self.clock_mhz)
        self.now_s += duration_s
        self.energy_j += nominal_watts(batch_size) * duration_s

    def read(self) -> Reading:
        self.reads += 1
        wobble = 5.0 if self.reads % 2 else -5.0
        return Reading(
            instant_watts=nominal_watts(self.batch) + wobble,
            average_watts=nominal_watts(self.batch),
            sm_utilization_percent=min(100.0, 10.0 * self.batch),
            sm_clock_mhz=float(self.clock_mhz or 1980),
        )

    def energy_joules(self) -> float:
        return self.energy_j

    def memory_used_bytes(self) -> int:
        return (1000 + 10 * self.batch) * 2**20

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        self.clock_mhz = clock_mhz
        self.clock_history.append(clock_mhz)

    def reset_sm_clock(self) -> None:
        self.clock_mhz = None
        self.clock_history.append(None)


SETTINGS = SweepSettings(
    batch_sizes=(1, 2, 4, 8, 16, 32), seconds_per_point=0.05, warmup_batches=2, min_batches=5
)


def run_sweep(gpu: FakeGpu, settings: SweepSettings = SETTINGS) -> SweepResult:
    return sweep(gpu, gpu, settings, now=gpu.clock)


def test_each_point_reports_what_the_fake_gpu_did() -> None:
    gpu = FakeGpu()
    result = run_sweep(gpu)
    assert [p.batch_size for p in result.points] == [1, 2, 4, 8, 16, 32]
    assert result.out_of_memory_batch is None
    for point in result.points:
        b = point.batch_size
        assert point.inferences == point.batches * b
        assert point.window_s >= SETTINGS.seconds_per_point
        assert point.batches >= SETTINGS.min_batches
        assert point.throughput_ips == pytest.approx(b / latency_s(b))
        assert point.latency_p50_ms == pytest.approx(1000 * latency_s(b))
        assert point.latency_p99_ms == pytest.approx(1000 * latency_s(b))
        assert point.energy_per_inference_joules == pytest.approx(
            nominal_watts(b) * latency_s(b) / b
        )
        assert point.instant_power_peak_watts == pytest.approx(nominal_watts(b) + 5.0)
        assert point.average_power_peak_watts == pytest.approx(nominal_watts(b))
        assert nominal_watts(b) - 5.0 <= point.instant_power_mean_watts <= nominal_watts(b) + 5.0
        assert point.sm_utilization_mean_percent == pytest.approx(min(100.0, 10.0 * b))
        assert point.memory_used_mib == pytest.approx(1000 + 10 * b)
        assert point.samples >= 2
    rates = [p.throughput_ips for p in result.points]
    assert rates == sorted(rates)


def test_the_sweep_stops_at_the_first_batch_that_does_not_fit() -> None:
    result = run_sweep(FakeGpu(out_of_memory_from=16))
    assert [p.batch_size for p in result.points] == [1, 2, 4, 8]
    assert result.out_of_memory_batch == 16


def test_the_profile_loads_back_and_matches_the_measured_points(tmp_path: Path) -> None:
    result = run_sweep(FakeGpu(out_of_memory_from=32))
    document = profile_document(result, model="resnet50", gpu=H100, idle=IDLE, idle_floor_watts=60)
    path = tmp_path / "resnet50.profile.yaml"
    write_profile(document, path)

    profiles = load_profile_set(path)
    workload = profiles.workload("resnet50", "synthetic-224")
    assert profiles.gpu.batch_sizes == (1, 2, 4, 8, 16)
    assert profiles.gpu.power_limit_watts == 700.0
    assert profiles.gpu.loaded_idle_watts == 90.0
    assert profiles.gpu.idle_floor_watts == 60.0
    for point in result.points:
        b = point.batch_size
        assert workload.throughput_ips(b, None) == pytest.approx(point.throughput_ips)
        assert workload.throughput_ips(b, 1980) == pytest.approx(point.throughput_ips)
        assert workload.peak_power_watts(b, None) == pytest.approx(point.instant_power_peak_watts)
    # Between measured points the profile interpolates: 3 lies between 2 and 4.
    assert result.points[1].throughput_ips < workload.throughput_ips(3, None)
    assert workload.throughput_ips(3, None) < result.points[2].throughput_ips


def test_a_clock_sweep_measures_the_same_ladder_at_each_clock_and_gives_the_clock_back(
    tmp_path: Path,
) -> None:
    gpu = FakeGpu(out_of_memory_from=16)
    result = clock_sweep(gpu, gpu, gpu, (990, 1980), SETTINGS, now=gpu.clock)
    assert gpu.clock_history == [990, 1980, None]
    assert [(p.locked_clock_mhz, p.batch_size) for p in result.points] == [
        (c, b) for c in (990, 1980) for b in (1, 2, 4, 8)
    ]
    path = tmp_path / "clocks.yaml"
    write_profile(
        profile_document(result, model="m", gpu=H100, idle=IDLE, idle_floor_watts=60), path
    )
    workload = load_profile_set(path).workload("m", "synthetic-224")
    assert workload.gpu.clock_levels_mhz == (990, 1980)
    assert workload.throughput_ips(8, 990) == pytest.approx(8 / latency_s(8, 990))
    assert workload.throughput_ips(8, 1980) == pytest.approx(8 / latency_s(8, 1980))


def test_a_failing_clock_sweep_still_gives_the_clock_back() -> None:
    gpu = FakeGpu()

    def broken(batch_size: int) -> None:
        raise RuntimeError("device lost")

    gpu.run_batch = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        clock_sweep(gpu, gpu, gpu, (990,), SETTINGS, now=gpu.clock)
    assert gpu.clock_history == [990, None]


def test_rows_figures_and_summary_are_written(tmp_path: Path) -> None:
    result = run_sweep(FakeGpu(out_of_memory_from=32))
    write_rows(result, tmp_path / "rows.csv", tmp_path / "rows.json", {"model": "resnet50"})
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rows["out_of_memory_batch"] == 32
    assert [r["batch_size"] for r in rows["rows"]] == [1, 2, 4, 8, 16]
    csv_lines = (tmp_path / "rows.csv").read_text().splitlines()
    assert csv_lines[0].startswith("batch_size,locked_clock_mhz,")
    assert len(csv_lines) == 1 + 5

    figures = write_figures(result, tmp_path, title="t", power_limit_watts=700)
    for _, name in figures:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert {name for _, name in figures} == {"throughput_vs_batch.png", "peak_power_vs_batch.png"}

    summary = render_summary(
        result, model="resnet50", gpu=H100, idle=IDLE, settings=SETTINGS, files=figures,
        command="capinfer characterize --model resnet50",
    )  # fmt: skip
    assert "Batch size 32 did not fit in memory." in summary
    assert summary.count("\n| ") == 5 + 1  # header and one line per point
    assert "throughput_vs_batch.png" in summary


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert percentile([1.0, 2.0], 0.99) == pytest.approx(1.99)
    assert percentile([7.0], 0.99) == 7.0


def test_clocks_are_spread_over_the_upper_half() -> None:
    supported = [210, 345, 990, 1200, 1500, 1755, 1980]
    assert pick_clocks(supported, 3) == (990, 1500, 1980)
    assert pick_clocks(supported, 10) == (990, 1200, 1500, 1755, 1980)
    assert pick_clocks(supported, 1) == (1980,)


def test_batch_sizes_must_be_positive_and_ascending() -> None:
    assert parse_batch_sizes("1,2,4") == (1, 2, 4)
    for bad in ("4,2", "0,1", "a", "", "2,2"):
        with pytest.raises(UserError):
            parse_batch_sizes(bad)


def test_the_cli_refuses_a_clock_sweep_without_ownership(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["characterize", "--out", str(tmp_path), "--clock-sweep"])
    assert code == 2
    assert CLOCK_SWEEP_REFUSED in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_pytorch_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail here
    with pytest.raises(UserError, match="pip install torch torchvision"):
        import_torch()
    code = main(["characterize", "--out", str(tmp_path / "out"), "--model", "mobilenet_v2"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"capinfer: error: {TORCH_MISSING}"


def test_the_subcommand_is_registered_with_its_safety_text() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    help_text = " ".join(subparsers.choices["characterize"].format_help().split())
    assert "must only be used on GPUs you own" in help_text
    assert "--i-own-this-gpu" in help_text
