"""Adaptive: capinfer's own controller. The SM clock for fast, fine moves; the batch size for
coarse efficiency moves, spent sparingly since each one is a Triton reload of seconds.

It keeps a table of what each (batch size, clock) pair was seen to do -- its peak power (the
90th percentile of its recent readings, which tracks the top of the batch-to-batch spread
without the sensor noise's outliers) and its throughput -- and fits a small model to it (see
:mod:`.model`) to estimate pairs never visited. The working limit is the cap less a headroom
for the estimate's error (a share of the cap, or of the learned sensor noise). Every sample:

1. *A reading over the cap beyond doubt* (more than the noise allows): the clock goes down at
   once, to the highest level estimated under the limit. At the lowest clock, or without clock
   control, the batch size goes down instead (a reload: seconds).
2. *A reading over the cap within the noise, or a pair whose peak is over the limit*: the
   pair is left for the highest level its peak, rescaled along the fitted clock curve, puts
   under the limit (at least one level down, however dense the ladder), and remembered as
   too hot. One noisy reading alone
   moves nothing, neither up nor down.
3. Otherwise the clock *climbs*, once a batch has run start to end at the current pair, to
   the highest level estimated under the limit for every batch size that may be executing
   (the one serving, the one being loaded, a larger one still draining after a reload).
4. At the top clock with room to spare, the batch size *grows* at once. Else, once the clock
   has been quiet and the current pair's throughput is measured, the *planner* reloads to a
   measured batch size known to do better at the clock it would settle at, or *probes* one
   never measured that the model says could (hopeful estimates) and likely will (best guess)
   do better, near a measured one, a limited number of times per cap -- or, between two
   measured ones, that could merely match (the model's error there is the size of the
   gains). A larger batch size needs a little less gain: at a lower clock it leaves a cap
   rise to the clock alone.
   A move to a larger batch size lowers the clock first, so its first samples are safe.

Under light load (batches formed below the max batch size) the batch size stays, and the
table keeps those samples out (a surge of load would form full batches, at more power).
A cap change is answered in the same decision: on a drop the clock goes down (and the batch
size too if no clock can hold the new cap); on a rise the clock goes up as far as is known to
be safe; the planner then starts over with what the table knows. Without clock control the
same logic works on the batch size alone.

Parts that stand alone (pure, tested on their own): :mod:`.clocktrim` (which clock level a
cut goes to, and where a batch size fits, by power), :mod:`.planner` (which batch size is
worth a reload: measured, or probed), :mod:`.caphistory` (whether the cap is hunting),
:mod:`.model` and :mod:`.table` (what was seen, and the fit). This class gathers what they
need and acts. Which tuning constants matter, and why: :class:`AdaptiveTuning`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.policies.batchsizer import usable_batch_sizes
from capinfer_sidecar.policies.caphistory import CapChange, hunting_floor_watts
from capinfer_sidecar.policies.clocktrim import (
    highest_level_under,
    highest_level_within,
    level_under_limit,
)
from capinfer_sidecar.policies.ladder import index_at_or_below, nearest_index
from capinfer_sidecar.policies.model import Lean, ModelPriors, PlantModel
from capinfer_sidecar.policies.observe import not_lower
from capinfer_sidecar.policies.planner import (
    Candidate,
    Gains,
    Measured,
    Unmeasured,
    best_measured,
    best_probe,
)
from capinfer_sidecar.policies.table import PlantTable


@dataclass(frozen=True)
class AdaptiveTuning:
    """Knobs of the controller itself; the defaults are what the benchmark was tuned with.

    Which ones matter, and why (most first). The rest are plumbing: they change little
    within a factor of two of their default.

    - *The working limit* (``headroom``, ``noise_sigmas``, ``max_headroom``,
      ``reading_bias_sigmas``): how far under the cap a pair's peak must stay, and how much
      higher than the truth its readings are taken to sit. The one lever between time over
      the cap and throughput: every watt of headroom is a watt of clock not used; too little
      and the sensor's noise puts the true power over the cap. ``reading_bias_sigmas`` is 0:
      the cap is the hard limit and throughput is sought within it. Crediting the readings'
      bias buys throughput with time over the cap: on the generated tuning half 0 / 1 / 2
      gave 0.926 / 0.934 / 0.934 of the oracle and 1.04% / 1.17% / 1.80% of the time over
      the cap; at 1, paper-table2's time over the cap went 0.01% -> 0.10% and its worst
      overshoot 1.2 -> 3.7 W.
    - *The alarm* (``alarm_sigmas``): what separates a real violation (cut at once) from
      noise (trim after several readings). Lower cuts the clock on noise; higher leaves a
      real excursion for a few samples.
    - *Where it starts* (``start_batch``): under a tight cap the first batch size is over the
      cap until a reload (seconds) takes it down; under a relaxed one growing from a small
      one costs reloads at low throughput. A reading over the cap with nothing known of
      smaller sizes drops several rungs at once (``drop_power_exponent``).
    - *What a reload must earn* (``switch_gain``, ``larger_batch_preference``,
      ``probe_gain``, ``bold_probe_gain``, ``max_probes``, ``probe_reach``): the planner's
      appetite. Lower gains and more probes find better pairs and spend more reloads (each
      seconds at the old size); ``probe_reach`` bounds how far the model is trusted.
    - *Against thrashing* (``free_moves``, ``move_backoff_s``): caps that hunt up and down
      would otherwise be chased with a reload each way.
    - *Evidence* (``settle_s``, ``measure_s``, ``plan_interval_s``, ``dwell_samples``,
      ``memory_s``): how long a pair is watched before it is judged, and how long what was
      seen is trusted.
    - *Climbing* (``trial_sigmas``, ``max_climb_ratio``): how boldly the clock climbs into
      levels not measured. On a dense ladder (NVML lists 12-15 MHz steps) the climb and the
      trim both move by estimated power, never one level at a time.
    """

    headroom: float = 0.004
    """Least working headroom under the cap, as a fraction of it."""
    noise_sigmas: float = 0.5
    """Headroom in standard deviations of the sensor noise (learned), when that is more."""
    noise_prior: float = 0.005
    """Sensor noise assumed until learned, as a fraction of the cap."""
    alarm_sigmas: float = 2.5
    """A reading this many noise deviations over the cap is a violation beyond doubt."""
    reading_bias_sigmas: float = 0.0
    """How far above the true peak a pair's readings sit, in noise deviations (see
    ``Adaptive.reading_cap_watts``)."""
    max_headroom: float = 0.05
    """Most working headroom under the cap, as a fraction of it."""
    start_batch: int = 16
    """First batch size (nearest rung). Without clock control the first rung is used."""
    trial_sigmas: float = 1.0
    """How far above the limit (in noise deviations) the next clock level's best guess may
    be, for it to be tried once."""
    dwell_samples: int = 3
    """Samples at a clock level before climbing further."""
    settle_s: float = 1.0
    """Quiet clock time before the batch planner may judge the current pair."""
    measure_s: float = 2.0
    """Seconds of throughput evidence a pair needs before it is compared."""
    plan_interval_s: float = 0.5
    """How often the batch planner looks at the table once the clock is quiet."""
    free_moves: int = 4
    """Batch-size moves per cap without a wait; each further one waits twice as long."""
    move_backoff_s: float = 10.0
    """The wait before the first move past ``free_moves``."""
    hopeful_exponent_shift: float = 0.1
    """How much further from linear a hopeful batch-time fit bends."""
    probe_reach: float = 4.0
    """A batch size never measured is tried only within this factor of a measured one."""
    bold_probe_gain: float = 0.15
    """A hope this large earns a try even when the best guess sees no gain."""
    max_probes: int = 2
    """Batch sizes never measured that are tried, at most, after each cap change."""
    probe_gain: float = 0.05
    """Relative gain a batch size never measured must hopefully promise to be tried."""
    larger_batch_preference: float = 0.02
    """How much less gain a move to a larger batch size needs (see :func:`.planner.gain_needed`)."""
    reload_timeout_s: float = 60.0
    """A batch-size change not in effect after this long (and no reload in flight) failed."""
    switch_gain: float = 0.03
    """Relative throughput gain a known batch size must promise to be worth a reload."""
    memory_s: float = 300.0
    """How long what was seen at a pair stays trusted."""
    max_climb_ratio: float = 1.25
    """Largest clock ratio of one climb into levels not measured at this batch size."""
    light_load_fill: float = 0.8
    """Batches formed below this fraction of the max batch size mean light load."""
    hunt_window_s: float = 90.0
    """A cap that rose and then dropped again within this long is hunting (see
    ``Adaptive._holds_recent_caps``)."""
    drop_power_exponent: float = 0.1
    """How fast total power is assumed to fall with the batch size when a reading over the
    cap sends the batch size down and the model knows nothing smaller (low: cautious)."""
    max_beneficial_batch: int | None = None
    """Offline-profiled cutoff, as BatchSizer's: larger rungs are never used."""
    priors: ModelPriors = field(default_factory=ModelPriors)

    def __post_init__(self) -> None:
        if not 0.0 <= self.headroom < 0.5:
            raise ValueError(f"headroom must be in [0, 0.5), got {self.headroom}")
        if self.dwell_samples < 1:
            raise ValueError(f"dwell_samples must be at least 1, got {self.dwell_samples}")
        if self.max_climb_ratio <= 1.0:
            raise ValueError(f"max_climb_ratio must exceed 1, got {self.max_climb_ratio}")


class Adaptive(Policy):
    """Clock for fast trims, batch size for coarse efficiency; see the module docstring."""

    name = "Adaptive"

    def __init__(self, **tuning: Any) -> None:
        self._tuning = AdaptiveTuning(**tuning)
        self._table = PlantTable(self._tuning.memory_s)
        self._model = PlantModel(self._table, self._tuning.priors)
        self._settings: PowerSettings | None = None
        self._ladder: tuple[int, ...] = ()
        self._clocks: tuple[int, ...] = ()
        self._clock_set: frozenset[int] = frozenset()
        self._batch = 1
        self._clock: int | None = None
        self._clock_quiet_samples = 0
        self._clock_changed_s = 0.0
        self._batch_applied_s: float | None = None
        self._probed: set[int] = set()
        """Batch sizes moved to since the last cap change (never probed twice)."""
        self._probes = 0
        """Moves to batch sizes never measured, on the model's word, since the last cap change."""
        self._reloads = 0
        self._now_s = 0.0
        self._last_applied: Knobs | None = None
        self._draining: tuple[int, int] | None = None
        """(batch size, batches count then) of a batch formed under the previous max, running."""
        self._drained = False
        self._limit_at: tuple[float, float] | None = None
        self._limit_watts = 0.0
        self._planned_s = -1.0
        self._moves_in_epoch = 0
        self._next_move_s = 0.0
        self._moved_s = 0.0
        self._refused: dict[int, float] = {}
        """Batch sizes whose reload never took effect, and when that was found."""
        self._reason = "not started"
        self._state = "idle"
        self._infeasible = False
        """The least-power setting was seen over the cap: held, and reported."""
        self._cap_changes: list[CapChange] = []
        """(time, cap before, cap after) of each cap change, for telling a hunting cap."""
        self._first_sample = True
        """The first sample after start: its interval began before the first settings were
        in effect (the GPU's own clock), so it says nothing about them."""

    @property
    def tuning(self) -> AdaptiveTuning:
        return self._tuning

    @property
    def settings(self) -> PowerSettings:
        if self._settings is None:
            raise RuntimeError("Adaptive: start() must be called before anything else")
        return self._settings

    @property
    def limit_watts(self) -> float:
        """The working limit for a pair's peak: the cap less a headroom for the estimate's
        error (a share of the cap, or of the sensor noise when that is more)."""
        cap = self.settings.cap_watts
        if self._limit_at != (self._now_s, cap):
            noise = self._table.noise_watts
            headroom = min(
                max(self._tuning.noise_sigmas * noise, self._tuning.headroom * cap),
                self._tuning.max_headroom * cap,
            )
            self._limit_at = (self._now_s, cap)
            self._limit_watts = self.reading_cap_watts - headroom
        return self._limit_watts

    @property
    def reading_cap_watts(self) -> float:
        """The cap as readings see it: what a pair whose true peak is at the cap reads.

        Each reading is the highest of several noisy reads in its interval (the loop takes
        five), so it sits above the true peak by more than its own spread: about three of
        the learned deviations at the 90th percentile a pair's peak is taken at. Compared
        with the cap itself, readings would hold every pair a few watts under it: on a
        3 W-noise sensor near the floor, a whole rung (batch 4 read over a 128 W cap that it
        truly meets). ``reading_bias_sigmas`` is less than the three: what is left is margin;
        by default it is 0 and readings are held to the cap itself (see ``AdaptiveTuning``).
        """
        if not self._table.noise_learned:
            return self.settings.cap_watts  # the prior is a guess: no credit taken on it
        noise = self._table.noise_watts
        return self.settings.cap_watts + self._tuning.reading_bias_sigmas * noise

    @property
    def alarm_watts(self) -> float:
        """A reading above this is a violation beyond doubt, not sensor noise."""
        return self.reading_cap_watts + self._tuning.alarm_sigmas * self._table.noise_watts

    # -- the Policy interface ------------------------------------------------------------

    def measured_settings(self) -> list[tuple[float, float]]:
        return self._table.measured_settings(self._now_s)

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        self._settings = settings
        self._now_s = now_s
        self._table.forget()
        self._probed = set()
        self._probes = 0
        self._set_ladders(settings)
        if self._clocks:
            self._batch = self._ladder[nearest_index(self._ladder, self._tuning.start_batch)]
            self._set_clock(self._clocks[0], now_s)
            where = f"{self._clock} MHz (the lowest level, safe while nothing is known)"
        else:
            self._batch = self._ladder[0]
            self._clock = None
            where = "clocks not controlled, so the first rung (a violation would last a reload)"
        self._batch_applied_s = None
        self._last_applied = None
        self._first_sample = True
        self._infeasible = False
        self._cap_changes = []
        self._say(f"start at batch {self._batch}, {where}", "starting")
        return self._decision()

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        old = self.settings
        if settings == old:
            return self._decision()
        self._settings = settings
        self._now_s = now_s
        notes = self._set_ladders(settings)
        if (old.cap_watts, old.band) != (settings.cap_watts, settings.band):
            if old.cap_watts != settings.cap_watts:
                self._cap_changes.append((now_s, old.cap_watts, settings.cap_watts))
            self._infeasible = False
            self._probed = set()
            self._probes = 0
            self._moves_in_epoch = 0
            self._next_move_s = 0.0
            notes.append(self._follow_cap(old.cap_watts, now_s))
        self._say("; ".join(notes) or "settings changed", "following")
        return self._decision()

    def step(self, observation: Observation) -> Decision:
        self._now_s = observation.now_s
        previous, self._last_applied = self._last_applied, observation.applied
        if self._first_sample:
            self._first_sample = False
            return self._decision()
        self._table.noise_prior_watts = self._tuning.noise_prior * self.settings.cap_watts
        self._table.full_fraction = self._tuning.light_load_fill
        self._table.record(observation)
        if self._infeasible and self._pair_peak(observation.applied) <= self.reading_cap_watts:
            self._infeasible = False  # the least-power setting now reads under the cap
        if observation.applied.sm_clock_mhz == self._clock:
            self._clock_quiet_samples += 1
        if self._batch_applied_s is None and not observation.reload_in_flight:
            if observation.applied.batch_size == self._batch:
                self._batch_applied_s = observation.now_s
            elif self._batch in observation.refused_batch_sizes:
                self._give_up_reload(observation, "Triton refused to load it")
            elif observation.now_s - self._moved_s > self._tuning.reload_timeout_s:
                self._give_up_reload(
                    observation,
                    f"it did not take effect within {self._tuning.reload_timeout_s:g} s",
                )
        if previous is not None and previous.batch_size != observation.applied.batch_size:
            # The batch formed under the old max may still be executing: until it is done,
            # a clock must be safe for it too.
            self._draining = (previous.batch_size, observation.batches_completed + 1)
            self._drained = False
        elif self._draining is not None and observation.batches_completed >= self._draining[1]:
            # It finished within this sample's interval, which still saw it: one more step.
            if self._drained:
                self._draining = None
            self._drained = True
        if previous is not None and not not_lower(observation.applied, previous):
            # The interval began on higher settings: its reading says nothing of the new
            # ones. Hold this once; the next sample is theirs.
            return self._decision()
        if observation.power_watts > self.alarm_watts:
            self._on_over_cap(observation)
        elif observation.power_watts > self.settings.cap_watts or (
            self._pair_peak(observation.applied) > self.limit_watts
        ):
            self._on_near_cap(observation)
        else:
            self._climb(observation)
            self._plan(observation)
        return self._decision()

    def _give_up_reload(self, observation: Observation, why: str) -> None:
        """A batch-size change never took effect (Triton refused the load, or it took too
        long): stay with what serves, and leave that batch size alone for the memory."""
        refused = self._batch
        self._refused[refused] = observation.now_s
        self._batch = observation.applied.batch_size
        self._batch_applied_s = observation.now_s
        self._say(f"reload to batch {refused}: {why}; batch {self._batch} stays", "reload-failed")

    def _holds_recent_caps(self, batch: int) -> bool:
        """While the cap hunts, a larger batch size must fit the lowest recent cap.

        A cap that drops again within seconds would otherwise meet a large batch size that
        only a reload (seconds over the cap) can take down; a clock cut is instant. So, once
        the cap has risen and then dropped again within ``hunt_window_s``, a move to a larger
        batch size needs its cautious peak at the lowest clock under the lowest cap of that
        window. Caps that only step one way (down, or down then back up) are not hunting.
        """
        if batch <= self._batch:
            return True
        lowest_cap = hunting_floor_watts(
            self._cap_changes, self._now_s, self._tuning.hunt_window_s, self.settings.cap_watts
        )
        if lowest_cap is None:
            return True
        clock = self._clocks[0] if self._clocks else None
        estimate = self._peak(batch, clock, lean=Lean.CAUTIOUS)
        return estimate is not None and estimate <= lowest_cap * (1.0 - self._tuning.headroom)

    def _usable(self, batch: int) -> bool:
        """Not refused by the server recently."""
        refused_s = self._refused.get(batch)
        return refused_s is None or self._now_s - refused_s > self._tuning.memory_s

    def _pair_peak(self, knobs: Knobs) -> float:
        cell = self._table.get(knobs.batch_size, knobs.sm_clock_mhz, self._now_s)
        if cell is None or not cell.peaks_watts:
            return 0.0
        return cell.peak_watts(self._table.noise_watts)

    # -- reactions -----------------------------------------------------------------------

    def _on_over_cap(self, observation: Observation) -> None:
        """A reading over the cap by more than the noise: cut at once."""
        applied = observation.applied
        reading = f"peak {observation.power_watts:.1f} W over the cap {self.settings.cap_watts:g} W"
        clock = applied.sm_clock_mhz
        self._keep_away(applied, observation.power_watts - self._table.noise_watts)
        if self._clocks and clock is not None and clock > self._clocks[0]:
            target = self._clock_under_limit(applied.batch_size, clock, observation.power_watts)
            if self._clock is not None and target < self._clock:
                self._set_clock(target, observation.now_s)
                self._say(
                    f"{reading} at batch {applied.batch_size}, {clock} MHz: clock down to "
                    f"{target} MHz",
                    "over-cap",
                )
            return
        self._batch_down(observation, reading)

    def _batch_down(self, observation: Observation, reading: str) -> None:
        applied = observation.applied
        if self._batch < applied.batch_size:
            return  # a smaller batch size is already on its way
        if self._draining is not None and self._draining[0] > applied.batch_size:
            return  # the reading is the larger batch's, formed before the reload, still running
        smaller = self._smaller_batch(applied.batch_size, observation.power_watts)
        if smaller is None:
            # Nothing draws less: hold this setting (never oscillate). It is reported
            # infeasible once its peak is over the cap beyond doubt (the alarm bound: a
            # noisy sensor reads the top of a pair's spread, and near the floor a pair that
            # truly fits reads over the cap by a few watts); cleared when the peak comes
            # back under the cap, or the cap changes.
            where = "smallest batch" + (", lowest clock" if self._clocks else "")
            if self._pair_peak(applied) > self.alarm_watts:
                self._infeasible = True
            if self._infeasible:
                self._say(
                    f"{reading} at the least-power setting ({where}): the cap is infeasible;"
                    " holding it",
                    "cap-infeasible",
                )
            else:
                self._say(
                    f"{reading} at the least-power setting ({where}), within the sensor's "
                    "noise: holding it",
                    "holding",
                )
            return
        self._move_batch(smaller, observation.now_s)
        self._say(f"{reading} at batch {applied.batch_size}: batch down to {smaller}", "over-cap")

    def _on_near_cap(self, observation: Observation) -> None:
        """A reading over the cap within the noise, or a pair whose peak is over the limit.

        One noisy reading alone moves nothing (neither up nor down); a pair whose peak, from
        all its recent readings, is above the limit is left for the highest level estimated
        under the limit (at least one down).
        """
        applied = observation.applied
        peak = self._pair_peak(applied)
        if peak <= self.limit_watts:
            return
        clock = applied.sm_clock_mhz
        lowest = not self._clocks or clock is None or clock == self._clocks[0]
        if lowest:
            if peak > self.reading_cap_watts:
                self._batch_down(observation, f"peak {peak:.1f} W over the cap")
            return
        self._keep_away(applied, peak)
        if clock is None or self._clock != clock:
            return
        # Stepped by power, not by level: on a dense ladder (NVML lists 12-15 MHz steps) one
        # level is a watt or two, and a level at a time would leave the pair over the limit
        # for as many samples as there are levels to go.
        # The latest reading counts when it is higher: the pair's peak, from few readings,
        # may not have caught up with what the pair really draws.
        lower = self._clock_under_limit(
            applied.batch_size, clock, max(peak, observation.power_watts)
        )
        self._set_clock(lower, observation.now_s)
        self._say(
            f"peak {peak:.1f} W above the limit {self.limit_watts:.1f} W at batch "
            f"{applied.batch_size}, {clock} MHz: clock down to {lower} MHz",
            "trimming",
        )

    def _keep_away(self, knobs: Knobs, peak_watts: float) -> None:
        self._table.mark_too_hot(knobs, peak_watts, self._now_s)

    def _climb(self, observation: Observation) -> None:
        clock = self._clock
        if not self._clocks or clock is None or observation.applied.sm_clock_mhz != clock:
            return
        if self._clock_quiet_samples < self._tuning.dwell_samples:
            return
        # A batch must have run from start to end at this pair: between spikes the readings
        # sit at the idle floor, and one of those would look like room to climb.
        if self._model.measured_peak(observation.applied.batch_size, clock, self._now_s) is None:
            return
        batches = {observation.applied.batch_size, self._batch}
        if self._draining is not None:
            batches.add(self._draining[0])
        target = self._highest_safe_clock(batches, clock)
        if target <= clock:
            return
        self._set_clock(target, observation.now_s)
        self._say(
            f"peak {observation.power_watts:.1f} W, room under the limit "
            f"{self.limit_watts:.1f} W: clock up to {target} MHz",
            "climbing",
        )

    def _plan(self, observation: Observation) -> None:
        now_s = observation.now_s
        if observation.reload_in_flight or self._batch_applied_s is None:
            return
        if self._light_load(observation):
            self._say_light_load(now_s)
            return
        if self._grow_at_top_clock(observation):
            return
        if min(now_s - self._clock_changed_s, now_s - self._batch_applied_s) < (
            self._tuning.settle_s
        ):
            return
        if now_s - self._planned_s < self._tuning.plan_interval_s:
            return
        if now_s < self._next_move_s:
            return
        self._planned_s = now_s
        measured = self._model.rate(self._batch, self._clock, now_s, self._tuning.measure_s)
        if measured is None or measured <= 0:
            return
        # Judged where it would settle: the clock may still be on its way up after a cut.
        own = self._fit(self._batch, lean=Lean.CENTRAL)
        rate = measured
        if own is not None and self._clock is not None and own.sm_clock_mhz != self._clock:
            there = self._model.rate(self._batch, own.sm_clock_mhz, now_s, self._tuning.measure_s)
            rate = measured if there is None else max(there, measured)
        before = self._batch
        choice = self._best_batch(rate)
        if choice is not None:
            target = choice.knobs
            self._move_batch(target.batch_size, now_s, target.sm_clock_mhz)
            self._probes += 0 if choice.measured else 1
            if choice.measured:
                how = f"is known to do {choice.expected_rate / rate - 1.0:+.0%}"
            else:
                how = (
                    f"could do {choice.hoped_rate / rate - 1.0:+.0%} "
                    f"(best guess {choice.expected_rate / rate - 1.0:+.0%})"
                )
            self._say(
                f"{rate:.0f}/s at batch {before}; batch {target.batch_size} {how} under the "
                f"limit {self.limit_watts:.1f} W: reload to it",
                "moving" if choice.measured else "probing",
            )
            return
        if self._state != "settled":
            self._say(
                f"settled at batch {self._batch}"
                + (f", {self._clock} MHz" if self._clock else "")
                + f": {rate:.0f}/s, the best known under the limit {self.limit_watts:.1f} W",
                "settled",
            )

    def _grow_at_top_clock(self, observation: Observation) -> bool:
        """At the top clock with room to spare, a larger batch size is a sure gain: take it now.

        The largest rung estimated to fit at the top clock, without waiting for a throughput
        measurement; batch sizes already measured are left to the planner. With clock control
        the best guess picks it and it is entered at the clock the cautious estimate allows
        (the clock climbs from there); without, a violation would last a reload, so the
        cautious estimate picks it.
        """
        top = self._clocks[-1] if self._clocks else None
        if self._clock != top or observation.applied.sm_clock_mhz != top:
            return False
        if self._clock_quiet_samples < self._tuning.dwell_samples:
            return False
        if self._model.measured_peak(self._batch, top, self._now_s) is None:
            return False
        before = self._batch
        lean = Lean.CENTRAL if top is not None else Lean.CAUTIOUS
        target = None
        for batch in (b for b in self._ladder if b > before):
            if self._model.rate(batch, None, self._now_s, self._tuning.measure_s) is not None:
                break
            if not self._usable(batch) or not self._holds_recent_caps(batch):
                break
            if not self._within_reach(batch):
                break
            estimate = self._peak(batch, top, lean=lean)
            if estimate is None or estimate > self.limit_watts:
                break
            target = batch
        entry = self._fit(target, lean=Lean.CAUTIOUS) if target is not None else None
        if target is None or entry is None:
            return False
        self._move_batch(target, observation.now_s, entry.sm_clock_mhz)
        where = f"{top} MHz, the top clock" if top else "clocks not controlled"
        self._say(
            f"peak {observation.power_watts:.1f} W at batch {before}, {where}: room for batch "
            f"{target} under the limit {self.limit_watts:.1f} W",
            "growing",
        )
        return True

    def _say_light_load(self, now_s: float) -> None:
        if self._state == "light-load":
            return
        formed = self._table.formed_batch or 0.0
        self._say(
            f"light load: batches of {formed:.1f} formed under a max of {self._batch}: "
            "the batch size stays",
            "light-load",
        )

    def _follow_cap(self, old_cap_watts: float, now_s: float) -> str:
        """Answer a cap change in the same decision."""
        change = f"cap {old_cap_watts:g} W -> {self.settings.cap_watts:g} W"
        if not self._clocks or self._clock is None:
            fit = self._fit(self._batch, lean=Lean.CENTRAL)
            if fit is None and self.settings.cap_watts < old_cap_watts:
                smaller = self._smaller_batch(self._batch)
                if smaller is not None:
                    self._move_batch(smaller, now_s)
                    return f"{change}: batch down to {smaller}"
            return f"{change}: the batch planner starts over"
        if self.settings.cap_watts < old_cap_watts:
            lowest = self._peak(self._batch, self._clocks[0], lean=Lean.CENTRAL)
            if lowest is not None and lowest > self.limit_watts:
                self._set_clock(self._clocks[0], now_s)
                smaller = self._smaller_batch(self._batch)
                if smaller is not None:
                    self._move_batch(smaller, now_s)
                    return f"{change}: clock to {self._clock} MHz and batch down to {smaller}"
                return f"{change}: clock to {self._clock} MHz"
            target = min(self._clock, self._drop_target(self._batch, self._clock))
        else:
            target = max(self._clock, self._highest_safe_clock({self._batch}, self._clock))
        if target != self._clock:
            self._set_clock(target, now_s)
        return f"{change}: clock to {self._clock} MHz, the batch planner starts over"

    # -- estimates -----------------------------------------------------------------------

    def _peak(
        self, batch: int, clock: int | None, lean: Lean, *, remembered: bool = False
    ) -> float | None:
        return self._model.peak(batch, clock, self._now_s, lean, remembered=remembered)

    def _clock_under_limit(self, batch: int, clock: int, reading_watts: float) -> int:
        """The highest level below ``clock`` estimated under the limit after a violation
        (see :func:`.clocktrim.level_under_limit`)."""
        fit = self._model.power_fit(self._now_s)
        return level_under_limit(
            self._clocks,
            clock,
            reading_watts,
            self.limit_watts,
            idle_watts=fit.idle_watts if fit else 0.0,
            gamma=fit.gamma if fit else self._tuning.priors.clock_power_exponent,
            known_peak=lambda level: self._peak(batch, level, lean=Lean.CENTRAL),
        )

    def _drop_target(self, batch: int, clock: int) -> int:
        """After a cap drop: the highest level at or below ``clock`` estimated under the limit."""
        return highest_level_under(
            self._clocks,
            clock,
            self.limit_watts,
            lambda level: self._peak(batch, level, lean=Lean.CAUTIOUS),
        )

    def _highest_safe_clock(self, batches: set[int], clock: int) -> int:
        """Climb from ``clock`` through the levels estimated safe for every batch given.

        The first level above is tried on the central estimate (with a noise's allowance);
        further ones need the cautious estimate, and levels beyond ``max_climb_ratio`` need to
        have been measured.
        """
        best = clock
        for candidate in (c for c in self._clocks if c > clock):
            first = best == clock and candidate == self._next_clock(clock)
            far = candidate > clock * self._tuning.max_climb_ratio
            safe = True
            for batch in batches:
                if self._table.too_hot(batch, candidate, self._now_s, self.limit_watts):
                    safe = False
                    break
                measured = self._model.measured_peak(batch, candidate, self._now_s)
                if measured is not None:
                    safe = safe and measured <= self.limit_watts
                    continue
                if far:
                    safe = False
                    break
                estimate = self._peak(
                    batch, candidate, lean=Lean.CENTRAL if first else Lean.CAUTIOUS
                )
                # The next level, never measured, is worth one look when the best guess puts
                # it within the noise of the limit: its first readings settle it (and a pair
                # found too hot is remembered).
                # Not when a level above was found too hot: on a dense ladder the level just
                # under it draws nearly as much.
                allowance = (
                    self._tuning.trial_sigmas * self._table.noise_watts
                    if first and not self._hot_above(batch, candidate)
                    else 0.0
                )
                safe = safe and estimate is not None and estimate <= self.limit_watts + allowance
            if not safe:
                break
            best = candidate
        return best

    def _hot_above(self, batch: int, clock: int) -> bool:
        """A level above ``clock`` was found too hot at this batch size (and still counts)."""
        return any(
            self._table.too_hot(batch, c, self._now_s, self.limit_watts)
            for c in self._clocks
            if c > clock
        )

    def _next_clock(self, clock: int) -> int | None:
        higher = [c for c in self._clocks if c > clock]
        return higher[0] if higher else None

    def _fit(self, batch: int, lean: Lean) -> Knobs | None:
        """The pair a batch size would run at under the limit; None if none is known to fit.

        Every reading still remembered counts: a reload is too dear to spend on a retry.
        """
        if not self._clocks:
            estimate = self._peak(batch, None, lean=lean, remembered=True)
            if estimate is None or estimate > self.limit_watts:
                return None
            return Knobs(batch, None)
        if self._model.power_fit(self._now_s) is None:
            # Nothing fitted: only pairs with readings have an estimate, and the top clock
            # must be one of them for any level to be known to fit.
            for clock in reversed(self._clocks):
                estimate = self._peak(batch, clock, lean=lean, remembered=True)
                if estimate is None:
                    return None
                if estimate <= self.limit_watts:
                    return Knobs(batch, clock)
            return None
        # With a fit every level has an estimate, rising with the clock except where the
        # pair has readings of its own: bisected, not scanned (dense ladders).
        own = {
            clock: self._peak(batch, clock, lean=lean, remembered=True)
            for clock in self._table.cells_for_batch(batch, self._now_s)
            if clock is not None and clock in self._clock_set
        }
        found = highest_level_within(
            self._clocks,
            self.limit_watts,
            lambda clock: self._peak(batch, clock, lean=lean, remembered=True) or 0.0,
            own,
        )
        return None if found is None else Knobs(batch, found)

    def _smaller_batch(self, batch: int, reading_watts: float | None = None) -> int | None:
        """The largest smaller rung estimated to fit (at the lowest clock); else the smallest.

        Where the model knows nothing yet, a reading over the cap at ``batch`` is scaled down
        as ``(b / batch) ** drop_power_exponent`` (idle included, total power falls slowly
        with the batch size: a high estimate): far over the cap, the batch size drops several
        rungs in one reload instead of one rung per reload, each of seconds over the cap.
        """
        smaller = [b for b in self._ladder if b < batch and self._usable(b)]
        if not smaller:
            return None
        clock = self._clocks[0] if self._clocks else None
        exponent = self._tuning.drop_power_exponent
        for candidate in reversed(smaller):
            estimate = self._peak(candidate, clock, lean=Lean.CAUTIOUS)
            if estimate is None and reading_watts is not None:
                estimate = reading_watts * math.pow(candidate / batch, exponent)
            if estimate is None or estimate <= self.limit_watts:
                return candidate  # fits, or nothing is known: one rung at a time
        return smaller[0]

    def _light_load(self, observation: Observation) -> bool:
        queue = observation.queue_depth
        short = self._table.light_load(observation.applied.batch_size)
        return short and (queue is None or queue < observation.applied.batch_size)

    def _best_batch(self, rate: float) -> Candidate | None:
        """A batch size expected to beat ``rate`` by enough to be worth a reload, if any.

        Measured batch sizes are judged on their measured throughput, rescaled to the clock
        they would settle at (central power estimate); a move to the best of them wins. Else an
        unmeasured one is tried (see :meth:`_best_probe`).
        """
        return self._best_known(rate) or self._best_probe(rate)

    @property
    def _gains(self) -> Gains:
        tuning = self._tuning
        return Gains(
            switch_gain=tuning.switch_gain,
            larger_batch_preference=tuning.larger_batch_preference,
            probe_gain=tuning.probe_gain,
            bold_probe_gain=tuning.bold_probe_gain,
        )

    def _best_known(self, rate: float) -> Candidate | None:
        """The best measured batch size worth a reload (:func:`.planner.best_measured`), each
        judged at the pair it would run at under the limit (central estimate)."""
        options: list[Measured] = []
        for batch in self._ladder:
            if batch == self._batch or not self._usable(batch):
                continue
            if not self._holds_recent_caps(batch):
                continue
            pair = self._fit(batch, lean=Lean.CENTRAL)
            if pair is None:
                continue
            found = self._model.rate_and_source(
                batch, pair.sm_clock_mhz, self._now_s, self._tuning.measure_s
            )
            if found is not None:
                options.append(Measured(pair, found[0], found[1]))
        return best_measured(rate, self._batch, options, self._gains)

    def _best_probe(self, rate: float) -> Candidate | None:
        """An unmeasured batch size worth a try, if any (:func:`.planner.best_probe`).

        Judged on the latency fit, with hopeful and with central (best guess) power and
        batch-time estimates; only batch sizes near a measured one, not probed since the cap
        changed, and within the probes left. A probe enters at the cautious pair, so that
        its first samples stay under the cap.
        """
        fit = self._model.latency_fit(self._now_s, self._fit_evidence_s)
        if fit is None or self._probes_left() <= 0:
            return None
        shifted = max(fit.exponent - self._tuning.hopeful_exponent_shift, 0.5)
        hopeful_fit = self._model.latency_fit(self._now_s, self._fit_evidence_s, shifted) or fit
        seen = self._table.batches_seen(self._now_s)
        # With clocks a probe enters at the clock its cautious estimate allows, and climbs.
        # Without, there is no clock to enter low: the cautious estimate would forbid every
        # batch size whose power is at all uncertain, and the best guess has to do.
        entry_lean = Lean.CAUTIOUS if self._clocks else Lean.CENTRAL
        options: list[Unmeasured] = []
        for batch in self._ladder:
            if batch == self._batch or batch in self._probed or not self._within_reach(batch):
                continue
            if not self._usable(batch) or not self._holds_recent_caps(batch):
                continue
            if self._model.rate(batch, None, self._now_s, self._tuning.measure_s) is not None:
                continue  # measured: _best_known judges it
            hopeful = self._fit(batch, lean=Lean.HOPEFUL)
            entry = self._fit(batch, lean=entry_lean)
            if hopeful is None or entry is None:
                continue
            central = self._fit(batch, lean=Lean.CENTRAL) or entry
            options.append(
                Unmeasured(
                    entry,
                    hope=self._model.predicted_rate(hopeful_fit, batch, hopeful.sm_clock_mhz),
                    guess=self._model.predicted_rate(fit, batch, central.sm_clock_mhz),
                    bracketed=any(b < batch for b in seen) and any(b > batch for b in seen),
                )
            )
        return best_probe(
            rate,
            self._batch,
            options,
            self._gains,
            first=self._probes == 0,
            only_prior=len(seen) < 2,
        )

    @property
    def _fit_evidence_s(self) -> float:
        """Evidence a batch size's rate needs to shape the latency fit: less than to be
        compared head-on, since the fit pools several batch sizes."""
        return self._tuning.measure_s / 2

    def _within_reach(self, batch: int) -> bool:
        """Whether a batch size is close enough to a measured one for the model to be trusted
        with its first samples (its power and time are extrapolated from there)."""
        seen = self._table.batches_seen(self._now_s)
        return any(
            1.0 / self._tuning.probe_reach <= batch / known <= self._tuning.probe_reach
            for known in seen
        )

    def _probes_left(self) -> int:
        """Batch sizes never measured that may still be tried under this cap."""
        return self._tuning.max_probes - self._probes

    # -- actions -------------------------------------------------------------------------

    def _move_batch(self, batch: int, now_s: float, fit_clock: int | None = None) -> None:
        if batch == self._batch:
            return
        if batch > self._batch and self._clock is not None:
            # Lower the clock first: the new batch size must be safe from its first sample.
            target = fit_clock if fit_clock is not None else self._clocks[0]
            if target < self._clock:
                self._set_clock(target, now_s)
        self._batch = batch
        self._batch_applied_s = None
        self._moved_s = now_s
        self._probed.add(batch)
        self._reloads += 1
        # The planner may move freely a few times per cap; then ever more slowly, so that
        # estimates flickering around the limit cannot make it thrash reloads.
        self._moves_in_epoch += 1
        extra = self._moves_in_epoch - self._tuning.free_moves
        if extra > 0:
            self._next_move_s = now_s + self._tuning.move_backoff_s * math.pow(2.0, extra - 1)

    def _set_clock(self, clock: int, now_s: float) -> None:
        if clock != self._clock:
            self._clock = clock
            self._clock_quiet_samples = 0
            self._clock_changed_s = now_s

    def _set_ladders(self, settings: PowerSettings) -> list[str]:
        notes = []
        ladder = usable_batch_sizes(settings.batch_sizes, self._tuning.max_beneficial_batch)
        if ladder != self._ladder:
            if self._ladder:
                self._batch = ladder[index_at_or_below(ladder, self._batch)]
                self._batch_applied_s = None
                notes.append(f"batch ladder now {list(ladder)}")
            self._ladder = ladder
        if settings.clock_levels_mhz != self._clocks:
            clocks = settings.clock_levels_mhz
            if not clocks:
                self._clock = None
                notes.append("clocks cannot be set: batch size alone from now on")
            elif self._clock is None:
                self._set_clock(clocks[0], self._now_s)
            else:
                self._set_clock(clocks[index_at_or_below(clocks, self._clock)], self._now_s)
            self._clocks = clocks
            self._clock_set = frozenset(clocks)
            self._model.top_mhz = clocks[-1] if clocks else None
        return notes

    def _say(self, reason: str, state: str) -> None:
        self._reason = reason
        self._state = state

    def _decision(self) -> Decision:
        return Decision(
            knobs=Knobs(self._batch, self._clock),
            reason=self._reason,
            state=self._state,
            extra={"limit_watts": self.limit_watts, "reloads": float(self._reloads)},
            infeasible=self._infeasible,
        )
