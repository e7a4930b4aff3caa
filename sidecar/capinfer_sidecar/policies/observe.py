"""Judging observations: the band verdict and the observation window after a change."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from capinfer_sidecar.policies.base import Knobs, Observation, PowerSettings


class Verdict(Enum):
    """Where a peak power reading falls relative to the band ``[band * cap, cap]``."""

    UNDER = "under"
    IN_BAND = "in-band"
    OVER = "over"


def classify(peak_watts: float, settings: PowerSettings) -> Verdict:
    """The paper's three cases; both band edges count as inside (Algorithm 1, line 5)."""
    if peak_watts > settings.cap_watts:
        return Verdict.OVER
    if peak_watts < settings.floor_watts:
        return Verdict.UNDER
    return Verdict.IN_BAND


def knobs_applied(wanted: Knobs, observation: Observation) -> bool:
    """Whether the settings asked for are the ones serving now.

    A wanted clock of None means "not controlled", so any applied clock matches it.
    """
    if observation.reload_in_flight or observation.applied.batch_size != wanted.batch_size:
        return False
    return wanted.sm_clock_mhz is None or observation.applied.sm_clock_mhz == wanted.sm_clock_mhz


def not_lower(new: Knobs, old: Knobs) -> bool:
    """Whether ``new`` lowers neither knob from ``old``: then power can only have grown, and
    a reading taken across the change bounds the new settings' peak from above."""
    if new.batch_size < old.batch_size:
        return False
    if new.sm_clock_mhz is None or old.sm_clock_mhz is None:
        return new.sm_clock_mhz == old.sm_clock_mhz
    return new.sm_clock_mhz >= old.sm_clock_mhz


@dataclass(frozen=True)
class PeakWindow:
    """Power readings gathered since a window opened, reduced to their maximum.

    A window opens on the first sample at which the wanted settings are applied; that
    sample's own reading is left out, since part of its interval ran on the old settings.
    """

    opened_s: float
    opened_batches: int
    peak_watts: float = 0.0
    samples: int = 0

    @classmethod
    def open(cls, observation: Observation) -> PeakWindow:
        return cls(opened_s=observation.now_s, opened_batches=observation.batches_completed)

    def add(self, observation: Observation) -> PeakWindow:
        return PeakWindow(
            opened_s=self.opened_s,
            opened_batches=self.opened_batches,
            peak_watts=max(self.peak_watts, observation.power_watts),
            samples=self.samples + 1,
        )

    def batches(self, observation: Observation) -> int:
        """Batches completed since the window opened."""
        return observation.batches_completed - self.opened_batches

    def age_s(self, observation: Observation) -> float:
        return observation.now_s - self.opened_s
