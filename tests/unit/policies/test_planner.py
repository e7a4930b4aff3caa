"""The batch planner's choice alone: what a reload must promise, measured or probed."""

from __future__ import annotations

from capinfer_sidecar.policies.base import Knobs
from capinfer_sidecar.policies.planner import (
    Gains,
    Measured,
    Unmeasured,
    best_measured,
    best_probe,
    gain_needed,
)

GAINS = Gains(switch_gain=0.03, larger_batch_preference=0.02, probe_gain=0.05, bold_probe_gain=0.15)


def test_a_rescaled_rate_needs_twice_the_gain_and_a_larger_batch_a_little_less() -> None:
    assert gain_needed(8, 16, True, GAINS) == 0.03
    assert gain_needed(8, 16, False, GAINS) == 0.06
    assert abs(gain_needed(32, 16, True, GAINS) - 0.01) < 1e-12


def test_the_best_measured_batch_size_that_beats_the_rate_by_its_gain() -> None:
    options = [
        Measured(Knobs(8, 900), 1025.0, exact=True),  # +2.5%: short of 3%
        Measured(Knobs(32, 600), 1015.0, exact=True),  # +1.5%: a larger one needs only 1%
        Measured(Knobs(4, 1200), 1050.0, exact=False),  # +5%, rescaled: short of 6%
    ]
    chosen = best_measured(1000.0, 16, options, GAINS)
    assert chosen is not None and chosen.knobs == Knobs(32, 600) and chosen.measured
    assert best_measured(1000.0, 16, options[:1] + options[2:], GAINS) is None
    faster = [*options, Measured(Knobs(2, 1400), 1100.0, exact=True)]
    assert best_measured(1000.0, 16, faster, GAINS).knobs == Knobs(2, 1400)  # type: ignore[union-attr]


def probe(batch: int, hope: float, guess: float, bracketed: bool = False) -> Unmeasured:
    return Unmeasured(Knobs(batch, 700), hope=hope, guess=guess, bracketed=bracketed)


def test_a_batch_size_between_two_measured_ones_is_tried_when_it_could_match() -> None:
    # Measured 4 and 16, settled on 16 at 3023/s; the model sees 8 at +4% hoped, +3% guessed
    # (it was +12% in truth): not enough outside a bracket, enough inside one.
    outside = probe(8, hope=3131.0, guess=3109.0)
    inside = probe(8, hope=3131.0, guess=3109.0, bracketed=True)
    kwargs = {"first": False, "only_prior": False}
    assert best_probe(3023.0, 16, [outside], GAINS, **kwargs) is None  # type: ignore[arg-type]
    chosen = best_probe(3023.0, 16, [inside], GAINS, **kwargs)  # type: ignore[arg-type]
    assert chosen is not None and chosen.knobs.batch_size == 8 and not chosen.measured
    # A hope below the current rate is not worth a reload, bracketed or not.
    low = probe(8, hope=3000.0, guess=2990.0, bracketed=True)
    assert best_probe(3023.0, 16, [low], GAINS, **kwargs) is None  # type: ignore[arg-type]


def test_the_first_probe_trusts_the_hope_when_only_the_prior_speaks() -> None:
    hopeful = probe(32, hope=1060.0, guess=1000.0)  # +6% hoped, no gain guessed
    assert best_probe(1000.0, 16, [hopeful], GAINS, first=True, only_prior=True) is not None
    assert best_probe(1000.0, 16, [hopeful], GAINS, first=True, only_prior=False) is None
    bold = probe(32, hope=1160.0, guess=1000.0)
    assert best_probe(1000.0, 16, [bold], GAINS, first=True, only_prior=False) is not None
    # Later probes need the best guess itself to promise the probe gain.
    assert best_probe(1000.0, 16, [bold], GAINS, first=False, only_prior=False) is None


def test_of_the_probes_worth_a_reload_the_best_guess_wins() -> None:
    options = [probe(4, 1200.0, 1070.0), probe(64, 1300.0, 1060.0), probe(2, 1100.0, 1090.0)]
    chosen = best_probe(1000.0, 16, options, GAINS, first=False, only_prior=False)
    assert chosen is not None and chosen.knobs.batch_size == 2
