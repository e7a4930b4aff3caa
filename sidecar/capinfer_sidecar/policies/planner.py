"""The batch planner's choice, pure: which batch size, if any, is worth a reload.

A reload costs seconds at the old batch size, so a move must promise enough. Adaptive
(:class:`capinfer_sidecar.policies.adaptive.Adaptive`) gathers, for each batch size it may
move to, the pair it would run at under the limit and the throughput expected there --
measured (:class:`Measured`), or for one never measured, hoped and guessed by its model
(:class:`Unmeasured`) -- and these functions pick the move. No state, no time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from capinfer_sidecar.policies.base import Knobs


@dataclass(frozen=True)
class Gains:
    """What a move must promise, as relative throughput gains (see ``AdaptiveTuning``)."""

    switch_gain: float
    """A measured batch size, its rate measured at the clock it would run at."""
    larger_batch_preference: float
    """Taken off for a larger batch size: at a lower clock it leaves a cap rise to the clock."""
    probe_gain: float
    """What a batch size never measured must hopefully promise."""
    bold_probe_gain: float
    """A hope this large earns the first probe even when the best guess sees no gain."""


@dataclass(frozen=True)
class Candidate:
    """A batch size the planner may reload to."""

    knobs: Knobs
    """The pair to move to (a probe enters at a cautious clock)."""
    expected_rate: float
    """Measured (rescaled to its clock), or the best guess for one never measured."""
    hoped_rate: float
    measured: bool


@dataclass(frozen=True)
class Measured:
    """A batch size measured under this cap (or within memory)."""

    knobs: Knobs
    """Where it would run under the limit."""
    rate: float
    exact: bool
    """Measured at that very clock (else rescaled from another one)."""


@dataclass(frozen=True)
class Unmeasured:
    """A batch size never measured, within the model's reach."""

    entry: Knobs
    """Where it would enter: a clock its first samples are safe at."""
    hope: float
    """Throughput on hopeful estimates (low power, short batches)."""
    guess: float
    """Throughput on the best guess."""
    bracketed: bool
    """A smaller and a larger batch size are measured: the model interpolates here."""


def gain_needed(batch: int, current: int, exact: bool, gains: Gains) -> float:
    """The relative gain a move from ``current`` to ``batch`` must promise.

    A rate rescaled from another clock needs twice the switch gain. A larger batch size
    needs less: at a lower clock it leaves a cap rise to the clock alone (no reload).
    """
    gain = gains.switch_gain * (1.0 if exact else 2.0)
    if batch > current:
        gain -= gains.larger_batch_preference
    return max(gain, 0.0)


def best_measured(
    rate: float, current: int, options: Sequence[Measured], gains: Gains
) -> Candidate | None:
    """The measured batch size that beats ``rate`` by its gain needed, the best of them."""
    best: Candidate | None = None
    for option in options:
        needed = rate * (1.0 + gain_needed(option.knobs.batch_size, current, option.exact, gains))
        if option.rate > needed and (best is None or option.rate > best.expected_rate):
            best = Candidate(option.knobs, option.rate, option.rate, measured=True)
    return best


def best_probe(
    rate: float,
    current: int,
    options: Sequence[Unmeasured],
    gains: Gains,
    *,
    first: bool,
    only_prior: bool,
) -> Candidate | None:
    """An unmeasured batch size worth a reload, if any: of those, the best guess's favourite.

    - Between two measured batch sizes (bracketed) the model interpolates, and its error
      there is of the order of the gains at stake near the best; with throughput against
      batch size single-peaked under a cap, the best may well lie there. Worth a reload when
      its hope merely matches ``rate``.
    - Otherwise the hope must promise ``probe_gain``, and the best guess must be a gain too:
      for the first probe after a cap change, the gain a move needs -- or nothing when only
      the prior speaks (one batch size measured), or when the hope is bold; for later ones,
      ``probe_gain`` itself.
    """
    best: Candidate | None = None
    for option in options:
        batch = option.entry.batch_size
        if option.bracketed:
            worth = option.hope >= rate
        else:
            hoped = option.hope > rate * (1.0 + gains.probe_gain)
            if first:
                believed = (
                    only_prior
                    or option.guess > rate * (1.0 + gain_needed(batch, current, True, gains))
                    or option.hope > rate * (1.0 + gains.bold_probe_gain)
                )
            else:
                believed = option.guess > rate * (1.0 + gains.probe_gain)
            worth = hoped and believed
        if worth and (best is None or option.guess > best.expected_rate):
            best = Candidate(option.entry, option.guess, option.hope, measured=False)
    return best
