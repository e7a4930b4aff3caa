"""BatchSizer (Nabavinejad, Reda, Ebrahimi, ASP-DAC 2021): Algorithm 1 and section 4.2.

The batch size is the only knob; clocks are left to the GPU. The policy starts at the first
rung, and after every change observes a number of batches (10 in the paper) and compares the
maximum peak power over them with the band ``[alpha * cap, cap]``:

- inside the band: keep the batch size, keep monitoring;
- under the band: ``minBS = currentBS; currentBS = ceil((minBS + maxBS) / 2)``;
- over the cap: ``maxBS = currentBS; currentBS = floor((minBS + maxBS) / 2)``, or, when the
  current rung is ``minBS`` itself, ``maxBS = currentBS; minBS = 1`` first.

Where the paper leaves room, these choices were made (see also :mod:`.ladder`):

- *The observation window.* The paper changes the batch size between two batches at no cost.
  Here a change is a Triton reload that takes seconds while the old batch size keeps serving,
  so the 10 batches are counted from the first sample at which the new batch size serves.
- *Readings are cleared after each judgement* (the authors' code does; the listing does not).
- *Continuous readjustment* upward: under the band at ``currentBS == maxBS`` the upper bound
  reopens to the top rung (the authors' BatchDVFS code; the listing would stay put forever).
- *Over the cap at the first rung* nothing can be done; the policy says so and keeps
  monitoring. The listing then falls through to line 14 and sets ``maxBS = 1``, which would
  later pin the search to the first rung; the authors' code makes the cases exclusive.
- *A cap change restarts the search*: the bounds reopen to the whole ladder from the current
  batch size (starting again from batch 1 would throw away throughput for nothing). Readings
  already gathered at the current batch size are kept and judged against the new cap.
- *The max-beneficial batch size* from offline profiling (section 4.2) is an optional
  constructor argument; rungs above it are left out of the ladder.
- *A batch-size change that never takes effect* (a failed reload) leaves the policy waiting
  for it, asking again each sample: the paper has no such case.
"""

from __future__ import annotations

from capinfer_sidecar.policies.base import Knobs, Observation, PowerSettings
from capinfer_sidecar.policies.ladder import LadderSearch, Move, index_at_or_below
from capinfer_sidecar.policies.observe import PeakWindow, Verdict
from capinfer_sidecar.policies.windowed import WindowedSearchPolicy, describe_peak

PAPER_OBSERVE_BATCHES = 10


def usable_batch_sizes(
    batch_sizes: tuple[int, ...], max_beneficial_batch: int | None
) -> tuple[int, ...]:
    """The ladder without the rungs past the max-beneficial batch size (at least one rung)."""
    if max_beneficial_batch is None:
        return batch_sizes
    kept = tuple(b for b in batch_sizes if b <= max_beneficial_batch)
    return kept or batch_sizes[:1]


class BatchSizer(WindowedSearchPolicy):
    """The paper's controller: pseudo binary search over the batch-size ladder."""

    name = "BatchSizer"

    def __init__(
        self,
        observe_batches: int = PAPER_OBSERVE_BATCHES,
        max_beneficial_batch: int | None = None,
    ) -> None:
        super().__init__()
        if observe_batches < 1:
            raise ValueError(f"observe_batches must be at least 1, got {observe_batches}")
        if max_beneficial_batch is not None and max_beneficial_batch < 1:
            raise ValueError(f"max_beneficial_batch must be positive, got {max_beneficial_batch}")
        self._observe_batches = observe_batches
        self._max_beneficial_batch = max_beneficial_batch
        self._ladder: tuple[int, ...] = ()
        self._search = LadderSearch.begin(1)

    @property
    def search(self) -> LadderSearch:
        """The search state (minBS, maxBS, currentBS as 0-based indices)."""
        return self._search

    def _begin(self, settings: PowerSettings) -> str:
        self._ladder = usable_batch_sizes(settings.batch_sizes, self._max_beneficial_batch)
        self._search = LadderSearch.begin(len(self._ladder))
        return f"start at batch {self._batch()} (the first rung), cap {settings.cap_watts:g} W"

    def _resume(self, old: PowerSettings, new: PowerSettings) -> str | None:
        ladder = usable_batch_sizes(new.batch_sizes, self._max_beneficial_batch)
        if ladder != self._ladder:
            current = index_at_or_below(ladder, self._batch())
            self._ladder = ladder
            self._search = LadderSearch.begin(len(ladder), current)
            return f"batch ladder now {list(ladder)}: search restarts at batch {ladder[current]}"
        if (old.cap_watts, old.band) == (new.cap_watts, new.band):
            return None
        self._search = self._search.restart()
        return (
            f"cap changed {old.cap_watts:g} W -> {new.cap_watts:g} W: "
            f"search restarts over the whole ladder from batch {self._batch()}"
        )

    def _wanted(self) -> Knobs:
        return Knobs(batch_size=self._batch(), sm_clock_mhz=None)

    def _complete(self, window: PeakWindow, observation: Observation) -> bool:
        return window.samples > 0 and window.batches(observation) >= self._observe_batches

    def _judge(self, verdict: Verdict, peak_watts: float) -> tuple[str, str]:
        peak = describe_peak(verdict, peak_watts, self.settings)
        before = self._batch()
        if verdict is Verdict.IN_BAND:
            return f"{peak} at batch {before}: keep it", "settled"
        if verdict is Verdict.UNDER:
            self._search, move = self._search.up()
            if move is Move.AT_TOP:
                return f"{peak} at batch {before}, the largest: no more to gain", "at-top"
        else:
            self._search, move = self._search.down()
            if move is Move.AT_BOTTOM:
                return f"{peak} at batch {before}, the smallest: cap cannot be met", "at-bottom"
        return f"{peak} at batch {before}: batch {before} -> {self._batch()} ({self._bounds()})", (
            "searching"
        )

    def _batch(self) -> int:
        return self._ladder[self._search.current] if self._ladder else 1

    def _bounds(self) -> str:
        return f"minBS={self._ladder[self._search.low]}, maxBS={self._ladder[self._search.high]}"
