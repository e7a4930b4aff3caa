"""Several GPUs steered as one, and clocks reset after a crash."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from capinfer_sidecar.gpu.group import GpuGroup


@dataclass
class StubGpu:
    uuid: str
    watts: float
    energy_j: float
    clocks: tuple[int, ...]
    locked: list[int | None] = field(default_factory=list)

    def power_watts(self) -> float:
        return self.watts

    def energy_joules(self) -> float:
        return self.energy_j

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return self.clocks

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        self.locked.append(clock_mhz)

    def reset_sm_clock(self) -> None:
        self.locked.append(None)


def group_of(tmp_path: Path) -> tuple[GpuGroup, StubGpu, StubGpu]:
    a = StubGpu("GPU-a", 150.0, 100.0, (600, 900, 1200))
    b = StubGpu("GPU-b", 170.0, 300.0, (600, 900, 1400))
    return GpuGroup([a, b], clock_marker=tmp_path / "clocks-locked"), a, b  # type: ignore[list-item]


def test_the_hottest_gpu_counts_and_clocks_are_the_common_ones(tmp_path: Path) -> None:
    group, _, _ = group_of(tmp_path)
    assert group.power_watts() == 170.0
    assert group.energy_joules() == 200.0
    assert group.supported_sm_clocks_mhz() == (600, 900)
    assert group.uuids == ["GPU-a", "GPU-b"]


def test_locked_clocks_are_remembered_and_reset_after_a_crash(tmp_path: Path) -> None:
    group, a, b = group_of(tmp_path)
    group.set_locked_sm_clock_mhz(900)
    assert a.locked == [900] and b.locked == [900]
    assert (tmp_path / "clocks-locked").exists()
    restarted, a2, b2 = group_of(tmp_path)  # a new sidecar process after a crash
    assert restarted.recover_after_crash() is True
    assert a2.locked == [None] and b2.locked == [None]
    assert not (tmp_path / "clocks-locked").exists()
    assert restarted.recover_after_crash() is False


def test_an_empty_group_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        GpuGroup([])
