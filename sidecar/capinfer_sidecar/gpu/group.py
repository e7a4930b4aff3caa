"""Several GPUs of one pod, steered as one: the cap is per GPU, so the hottest one counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from capinfer_sidecar.gpu.base import GpuDevice


class GpuGroup:
    """The loop's view of a pod's GPUs: peak power of the hottest GPU, one clock for all.

    Triton runs the controlled model's instances across all of the pod's GPUs with one
    ``max_batch_size``, so one knob setting serves them all; the GPU closest to the cap
    decides. Mean power (from energy) is per GPU, averaged.
    """

    def __init__(self, gpus: Sequence[GpuDevice], clock_marker: Path | None = None) -> None:
        if not gpus:
            raise ValueError("a GPU group needs at least one GPU")
        self.gpus = tuple(gpus)
        self._clock_marker = clock_marker

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
        # The marker goes first: a crash between the two leaves clocks to reset, not locked
        # clocks nobody knows about.
        if self._clock_marker is not None:
            self._clock_marker.write_text(f"{clock_mhz}\n")
        for gpu in self.gpus:
            gpu.set_locked_sm_clock_mhz(clock_mhz)

    def reset_sm_clock(self) -> None:
        for gpu in self.gpus:
            gpu.reset_sm_clock()
        if self._clock_marker is not None:
            self._clock_marker.unlink(missing_ok=True)

    def recover_after_crash(self) -> bool:
        """Reset clocks a previous run locked and never reset; True when it had to."""
        if self._clock_marker is None or not self._clock_marker.exists():
            return False
        self.reset_sm_clock()
        return True
