"""Static: one fixed (batch size, clock) pair, for baselines and the oracle."""

from __future__ import annotations

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.policies.ladder import nearest_index


class Static(Policy):
    """Holds a fixed pair whatever the power; it never reacts to the cap.

    ``batch_size`` defaults to the largest rung; ``clock_mhz`` defaults to the highest level
    (None when clocks cannot be set). Values not on the ladders snap to the nearest rung, and
    the reason says so.
    """

    name = "Static"

    def __init__(self, batch_size: int | None = None, clock_mhz: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if clock_mhz is not None and clock_mhz < 1:
            raise ValueError(f"clock_mhz must be positive, got {clock_mhz}")
        self._batch_target = batch_size
        self._clock_target = clock_mhz
        self._decision = Decision(Knobs(1, None), reason="not started", state="idle")

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        del now_s
        self._decision = self._fix(settings)
        return self._decision

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        del now_s
        fixed = self._fix(settings)
        if fixed.knobs != self._decision.knobs:
            self._decision = fixed
        return self._decision

    def step(self, observation: Observation) -> Decision:
        del observation
        return self._decision

    def _fix(self, settings: PowerSettings) -> Decision:
        ladder = settings.batch_sizes
        batch = ladder[-1] if self._batch_target is None else self._snap(ladder, self._batch_target)
        clocks = settings.clock_levels_mhz
        clock: int | None = None
        if clocks:
            clock = (
                clocks[-1] if self._clock_target is None else self._snap(clocks, self._clock_target)
            )
        notes = []
        if self._batch_target is not None and batch != self._batch_target:
            notes.append(f"batch {self._batch_target} is not on the ladder")
        if self._clock_target is not None and clock != self._clock_target:
            notes.append(
                f"clock {self._clock_target} MHz "
                + ("is not a level" if clocks else "cannot be set")
            )
        where = f"{clock} MHz" if clock is not None else "clocks not controlled"
        reason = f"fixed at batch {batch}, {where}" + (f" ({'; '.join(notes)})" if notes else "")
        return Decision(Knobs(batch, clock), reason=reason, state="static")

    @staticmethod
    def _snap(ladder: tuple[int, ...], value: int) -> int:
        return ladder[nearest_index(ladder, value)]
