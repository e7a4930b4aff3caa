"""Several GPUs steered as one; their clocks set through the node agent, or refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from capinfer_sidecar.gpu.errors import GpuPermissionError
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


@dataclass
class RecordingKnob:
    """Stands for the node agent's client: records what it was asked."""

    calls: list[tuple[str, list[str], int | None]] = field(default_factory=list)

    def lock_sm_clock(self, gpus: Sequence[str], clock_mhz: int) -> None:
        self.calls.append(("lock", list(gpus), clock_mhz))

    def reset_sm_clock(self, gpus: Sequence[str]) -> None:
        self.calls.append(("reset", list(gpus), None))


def group_of(knob: RecordingKnob | None = None) -> tuple[GpuGroup, StubGpu, StubGpu]:
    a = StubGpu("GPU-a", 150.0, 100.0, (600, 900, 1200))
    b = StubGpu("GPU-b", 170.0, 300.0, (600, 900, 1400))
    return GpuGroup([a, b], knob, "no node agent here"), a, b  # type: ignore[list-item]


def test_the_hottest_gpu_counts_and_clocks_are_the_common_ones() -> None:
    group, _, _ = group_of()
    assert group.power_watts() == 170.0
    assert group.energy_joules() == 200.0
    assert group.supported_sm_clocks_mhz() == (600, 900)
    assert group.uuids == ["GPU-a", "GPU-b"]


def test_clocks_are_set_through_the_knob_for_every_gpu_of_the_pod() -> None:
    knob = RecordingKnob()
    group, a, b = group_of(knob)
    group.set_locked_sm_clock_mhz(900)
    group.reset_sm_clock()
    assert knob.calls == [("lock", ["GPU-a", "GPU-b"], 900), ("reset", ["GPU-a", "GPU-b"], None)]
    assert a.locked == [] and b.locked == []  # never on the devices themselves


def test_without_a_knob_a_clock_is_a_refusal_that_says_why() -> None:
    group, _, _ = group_of(None)
    assert group.refusal == "no node agent here"
    with pytest.raises(GpuPermissionError, match="no node agent here"):
        group.set_locked_sm_clock_mhz(900)
    group.reset_sm_clock()  # nothing to reset: no error


def test_a_refusal_by_the_knob_is_remembered_for_the_status() -> None:
    class RefusingKnob(RecordingKnob):
        def lock_sm_clock(self, gpus: Sequence[str], clock_mhz: int) -> None:
            raise GpuPermissionError("lock-sm-clock", "node agent: pod p does not hold GPU-b")

    group, _, _ = group_of(RefusingKnob())
    assert group.refusal is None
    with pytest.raises(GpuPermissionError):
        group.set_locked_sm_clock_mhz(900)
    assert group.refusal is not None and "does not hold GPU-b" in group.refusal


def test_an_empty_group_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        GpuGroup([])
