"""Several GPUs of one pod, steered as one: the cap is per GPU, so the hottest one counts.

The group reads its GPUs itself (readings need no privilege) and sets their clock through
a :class:`ClockKnob`: the node agent's client in a pod. Without one (no agent on the node,
or it refused this pod) the group has no clock knob and says why: the control loop then
controls the batch size alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from capinfer_sidecar.gpu.base import GpuDevice
from capinfer_sidecar.gpu.errors import GpuPermissionError, GpuRefusedError


class ClockKnob(Protocol):
    """Who sets the clocks of the group's GPUs (the node agent)."""

    def lock_sm_clock(self, gpus: Sequence[str], clock_mhz: int) -> None: ...

    def reset_sm_clock(self, gpus: Sequence[str]) -> None: ...


class GpuGroup:
    """The loop's view of a pod's GPUs: peak power of the hottest GPU, one clock for all.

    Triton runs the controlled model's instances across all of the pod's GPUs with one
    ``max_batch_size``, so one knob setting serves them all; the GPU closest to the cap
    decides. Mean power (from energy) is per GPU, averaged.
    """

    def __init__(
        self,
        gpus: Sequence[GpuDevice],
        clocks: ClockKnob | None = None,
        no_clocks_reason: str = "no node agent to set clocks",
    ) -> None:
        if not gpus:
            raise ValueError("a GPU group needs at least one GPU")
        self.gpus = tuple(gpus)
        self.clocks = clocks
        self.no_clocks_reason = no_clocks_reason
        self.refusal: str | None = None if clocks is not None else no_clocks_reason
        """Why clocks cannot be set, once that is known (no knob, or the knob refused)."""

    @property
    def uuids(self) -> list[str]:
        return [gpu.uuid for gpu in self.gpus]

    def power_watts(self) -> float:
        return max(gpu.power_watts() for gpu in self.gpus)

    def energy_joules(self) -> float:
        return sum(gpu.energy_joules() for gpu in self.gpus) / len(self.gpus)

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        """Clocks every GPU of the group supports."""
        common = set(self.gpus[0].supported_sm_clocks_mhz())
        for gpu in self.gpus[1:]:
            common &= set(gpu.supported_sm_clocks_mhz())
        return tuple(sorted(common))

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        if self.clocks is None:
            raise GpuPermissionError("set locked SM clock", self.no_clocks_reason)
        try:
            self.clocks.lock_sm_clock(self.uuids, clock_mhz)
        except GpuRefusedError as error:
            self.refusal = str(error)
            raise

    def reset_sm_clock(self) -> None:
        if self.clocks is not None:
            self.clocks.reset_sm_clock(self.uuids)
