"""BatchDVFS (the BatchSizer authors' follow-up): batch-size search plus clock steps at the ends.

Taken from the authors' published code (``BatchDVFS/*_BatchDVFS.py``): power is sampled every
0.1 s and a decision is taken every 3 s on the maximum of the samples since the last one. The
batch-size search is Algorithm 1 (with the upper bound reopened at ``currentBS == maxBS``);
the clock starts at the middle level (the sixth of the P40's ten) and moves one level only
when the batch size cannot: down when over the cap at the smallest batch size, up when under
the band at the largest. The clock is never stepped back otherwise, as in that code.

Adaptations: the 3 s period is counted from the first sample at which the asked-for settings
serve (a batch-size change is a reload of seconds here, a few milliseconds there); a cap change
reopens the search bounds (that code only compares with the new cap). Without clock control
the policy is the batch-size search alone, on the 3 s period.
"""

from __future__ import annotations

from capinfer_sidecar.policies.base import Knobs, Observation, PowerSettings
from capinfer_sidecar.policies.ladder import LadderSearch, Move, index_at_or_below
from capinfer_sidecar.policies.observe import PeakWindow, Verdict
from capinfer_sidecar.policies.windowed import WindowedSearchPolicy, describe_peak

CODE_DECISION_PERIOD_S = 3.0


class BatchDVFS(WindowedSearchPolicy):
    """Batch-size search; one clock step when the batch size is stuck at an end of its ladder."""

    name = "BatchDVFS"

    def __init__(self, decision_period_s: float = CODE_DECISION_PERIOD_S) -> None:
        super().__init__()
        if decision_period_s <= 0:
            raise ValueError(f"decision_period_s must be positive, got {decision_period_s}")
        self._period_s = decision_period_s
        self._ladder: tuple[int, ...] = ()
        self._search = LadderSearch.begin(1)
        self._clocks: tuple[int, ...] = ()
        self._clock_index = 0

    @property
    def search(self) -> LadderSearch:
        return self._search

    def _begin(self, settings: PowerSettings) -> str:
        self._ladder = settings.batch_sizes
        self._search = LadderSearch.begin(len(self._ladder))
        self._clocks = settings.clock_levels_mhz
        self._clock_index = len(self._clocks) // 2
        clock = self._clock()
        where = f"{clock} MHz (the middle level)" if clock else "clocks not controlled"
        return f"start at batch {self._batch()} (the first rung), {where}"

    def _resume(self, old: PowerSettings, new: PowerSettings) -> str | None:
        reasons = []
        if new.clock_levels_mhz != self._clocks:
            clock = self._clock()
            self._clocks = new.clock_levels_mhz
            if clock is None:
                self._clock_index = len(self._clocks) // 2
            else:
                self._clock_index = index_at_or_below(self._clocks, clock)
            now = self._clock()
            reasons.append(f"clock levels changed: clock {now} MHz" if now else "clocks off")
        if new.batch_sizes != self._ladder:
            current = index_at_or_below(new.batch_sizes, self._batch())
            self._ladder = new.batch_sizes
            self._search = LadderSearch.begin(len(self._ladder), current)
            reasons.append(f"batch ladder changed: search restarts at batch {self._batch()}")
        elif (old.cap_watts, old.band) != (new.cap_watts, new.band):
            self._search = self._search.restart()
            reasons.append(
                f"cap changed {old.cap_watts:g} W -> {new.cap_watts:g} W: "
                f"search restarts over the whole ladder from batch {self._batch()}"
            )
        return "; ".join(reasons) or None

    def _wanted(self) -> Knobs:
        return Knobs(batch_size=self._batch(), sm_clock_mhz=self._clock())

    def _complete(self, window: PeakWindow, observation: Observation) -> bool:
        # A hair of tolerance: sample times are sums of 0.1 s steps.
        return window.samples > 0 and window.age_s(observation) >= self._period_s - 1e-6

    def _judge(self, verdict: Verdict, peak_watts: float) -> tuple[str, str]:
        peak = describe_peak(verdict, peak_watts, self.settings)
        batch, clock = self._batch(), self._clock()
        if verdict is Verdict.IN_BAND:
            return f"{peak} at batch {batch}: keep it", "settled"
        if verdict is Verdict.UNDER:
            self._search, move = self._search.up()
            if move is Move.MOVED:
                return f"{peak}: batch {batch} -> {self._batch()}", "searching"
            if clock is not None and self._clock_index < len(self._clocks) - 1:
                self._clock_index += 1
                return f"{peak} at the largest batch {batch}: clock up to {self._clock()} MHz", (
                    "clock-up"
                )
            return f"{peak} at the largest batch {batch} and top clock: no more to gain", "at-top"
        self._search, move = self._search.down()
        if move is Move.MOVED:
            return f"{peak}: batch {batch} -> {self._batch()}", "searching"
        if clock is not None and self._clock_index > 0:
            self._clock_index -= 1
            return f"{peak} at the smallest batch {batch}: clock down to {self._clock()} MHz", (
                "clock-down"
            )
        return f"{peak} at the smallest batch and lowest clock: cap cannot be met", "at-bottom"

    def _batch(self) -> int:
        return self._ladder[self._search.current] if self._ladder else 1

    def _clock(self) -> int | None:
        return self._clocks[self._clock_index] if self._clocks else None
