"""DVFS: the BatchSizer paper's baseline (section 5.1).

"Similar to BatchSizer, we employ a pseudo binary search approach [...] to find a proper DVFS
level. [...] we select BS = 16 (middle of the batch size set)." So: the batch size is fixed
(the rung nearest 16), and Algorithm 1's search runs over the SM clock levels instead, with
the same band, the same 10-batch window (counted from the first sample at which the clock
serves) and the same restart on a cap change.

The paper does not say which level the search starts from; it starts from the lowest one, as
BatchSizer starts from the smallest batch (and PIT from the lowest clock). The authors' later
BatchDVFS code has a simpler DVFS baseline (one level per 3 s from the sixth level); the
search here is the one this paper describes.

Without clock control there is nothing to search: the policy holds the batch size and says so.
"""

from __future__ import annotations

from capinfer_sidecar.policies.base import Knobs, Observation, PowerSettings
from capinfer_sidecar.policies.batchsizer import PAPER_OBSERVE_BATCHES
from capinfer_sidecar.policies.ladder import (
    LadderSearch,
    Move,
    index_at_or_below,
    nearest_index,
)
from capinfer_sidecar.policies.observe import PeakWindow, Verdict
from capinfer_sidecar.policies.windowed import WindowedSearchPolicy, describe_peak

PAPER_DVFS_BATCH_SIZE = 16


class DVFS(WindowedSearchPolicy):
    """Pseudo binary search over the clock levels at a fixed batch size."""

    name = "DVFS"

    def __init__(
        self, batch_size: int = PAPER_DVFS_BATCH_SIZE, observe_batches: int = PAPER_OBSERVE_BATCHES
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if observe_batches < 1:
            raise ValueError(f"observe_batches must be at least 1, got {observe_batches}")
        self._batch_target = batch_size
        self._observe_batches = observe_batches
        self._batch_size = batch_size
        self._clocks: tuple[int, ...] = ()
        self._search = LadderSearch.begin(1)

    @property
    def search(self) -> LadderSearch:
        """The search state over clock-level indices."""
        return self._search

    def _begin(self, settings: PowerSettings) -> str:
        self._batch_size = settings.batch_sizes[
            nearest_index(settings.batch_sizes, self._batch_target)
        ]
        self._clocks = settings.clock_levels_mhz
        self._search = LadderSearch.begin(max(len(self._clocks), 1))
        if not self._clocks:
            return f"batch {self._batch_size}, clocks cannot be set: nothing to control"
        return f"batch {self._batch_size}, start at {self._clocks[0]} MHz (the lowest level)"

    def _resume(self, old: PowerSettings, new: PowerSettings) -> str | None:
        batch_size = new.batch_sizes[nearest_index(new.batch_sizes, self._batch_target)]
        if (new.clock_levels_mhz, batch_size) != (self._clocks, self._batch_size):
            current = self._clock()
            self._batch_size = batch_size
            self._clocks = new.clock_levels_mhz
            if not self._clocks:
                self._search = LadderSearch.begin(1)
                return f"batch {batch_size}, clocks cannot be set any more: nothing to control"
            index = index_at_or_below(self._clocks, current) if current is not None else 0
            self._search = LadderSearch.begin(len(self._clocks), index)
            return f"clock levels changed: search restarts at {self._clocks[index]} MHz"
        if (old.cap_watts, old.band) == (new.cap_watts, new.band):
            return None
        self._search = self._search.restart()
        change = f"cap changed {old.cap_watts:g} W -> {new.cap_watts:g} W"
        if not self._clocks:
            return f"{change}: search restarts, but clocks cannot be set: nothing to control"
        return f"{change}: search restarts over all clock levels from {self._clock()} MHz"

    def _wanted(self) -> Knobs:
        return Knobs(batch_size=self._batch_size, sm_clock_mhz=self._clock())

    def _complete(self, window: PeakWindow, observation: Observation) -> bool:
        return window.samples > 0 and window.batches(observation) >= self._observe_batches

    def _judge(self, verdict: Verdict, peak_watts: float) -> tuple[str, str]:
        peak = describe_peak(verdict, peak_watts, self.settings)
        before = self._clock()
        if before is None:
            return f"{peak} at batch {self._batch_size}: clocks cannot be set", "no-clock-control"
        if verdict is Verdict.IN_BAND:
            return f"{peak} at {before} MHz: keep it", "settled"
        if verdict is Verdict.UNDER:
            self._search, move = self._search.up()
            if move is Move.AT_TOP:
                return f"{peak} at {before} MHz, the highest level: no more to gain", "at-top"
        else:
            self._search, move = self._search.down()
            if move is Move.AT_BOTTOM:
                return f"{peak} at {before} MHz, the lowest level: cap cannot be met", "at-bottom"
        return f"{peak} at {before} MHz: clock {before} -> {self._clock()} MHz", "searching"

    def _clock(self) -> int | None:
        return self._clocks[self._search.current] if self._clocks else None
