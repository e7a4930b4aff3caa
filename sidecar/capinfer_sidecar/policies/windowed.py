"""The skeleton shared by the paper's controllers: change, observe a window, judge, move.

BatchSizer, DVFS and BatchDVFS all work the same way: ask for settings, wait until they
serve, gather peak power over a window (a number of batches, or a period of time), compare
the window's maximum with the band ``[band * cap, cap]`` and take one search step. The
readings are cleared after every judgement, as the authors' code does (the listing of
Algorithm 1 never clears ``PowerReading``, which would make one old spike decide forever).
"""

from __future__ import annotations

import abc

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.policies.observe import PeakWindow, Verdict, classify, knobs_applied


class WindowedSearchPolicy(Policy):
    """Drives the change/observe/judge cycle; subclasses hold the search state."""

    def __init__(self) -> None:
        self._settings: PowerSettings | None = None
        self._window: PeakWindow | None = None
        self._reason = "not started"
        self._state = "idle"
        self._last_peak_watts = 0.0

    @property
    def settings(self) -> PowerSettings:
        if self._settings is None:
            raise RuntimeError(f"{self.name}: start() must be called before anything else")
        return self._settings

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        del now_s
        self._settings = settings
        self._window = None
        self._reason = self._begin(settings)
        self._state = "searching"
        return self._decision()

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        del now_s
        old = self.settings
        if settings == old:
            return self._decision()
        self._settings = settings
        wanted = self._wanted()
        reason = self._resume(old, settings)
        if reason is not None:
            self._reason = reason
            self._state = "searching"
        # Readings gathered so far stay valid while the knobs stay the same: they measure the
        # settings in effect, whatever the cap, so the next judgement comes sooner.
        if self._wanted() != wanted:
            self._window = None
        return self._decision()

    def step(self, observation: Observation) -> Decision:
        wanted = self._wanted()
        if self._window is None:
            if knobs_applied(wanted, observation):
                self._window = PeakWindow.open(observation)
            return self._decision()
        window = self._window.add(observation)
        if not self._complete(window, observation):
            self._window = window
            return self._decision()
        self._last_peak_watts = window.peak_watts
        verdict = classify(window.peak_watts, self.settings)
        self._reason, self._state = self._judge(verdict, window.peak_watts)
        # Continuous monitoring: with the same knobs the next window opens right away.
        self._window = PeakWindow.open(observation) if self._wanted() == wanted else None
        return self._decision()

    def _decision(self) -> Decision:
        window = self._window
        return Decision(
            knobs=self._wanted(),
            reason=self._reason,
            state=self._state,
            extra={
                "last_peak_watts": self._last_peak_watts,
                "window_samples": float(window.samples if window else 0),
            },
        )

    @abc.abstractmethod
    def _begin(self, settings: PowerSettings) -> str:
        """Set up the search for a fresh start; return the reason for the first settings."""

    @abc.abstractmethod
    def _resume(self, old: PowerSettings, new: PowerSettings) -> str | None:
        """React to new settings; return a reason, or None when nothing relevant changed."""

    @abc.abstractmethod
    def _wanted(self) -> Knobs:
        """The settings the search wants now."""

    @abc.abstractmethod
    def _complete(self, window: PeakWindow, observation: Observation) -> bool:
        """Whether the window has seen enough to judge."""

    @abc.abstractmethod
    def _judge(self, verdict: Verdict, peak_watts: float) -> tuple[str, str]:
        """Take one search step; return (reason, state)."""


def describe_peak(verdict: Verdict, peak_watts: float, settings: PowerSettings) -> str:
    """'peak 212.0 W over the cap 200 W', for reasons."""
    if verdict is Verdict.OVER:
        where = f"over the cap {settings.cap_watts:g} W"
    elif verdict is Verdict.UNDER:
        where = f"under the band floor {settings.floor_watts:g} W"
    else:
        where = f"inside the band [{settings.floor_watts:g}, {settings.cap_watts:g}] W"
    return f"peak {peak_watts:.1f} W {where}"
