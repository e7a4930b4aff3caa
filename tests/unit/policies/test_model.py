"""The table of what was seen, and the model fitted to it."""

from __future__ import annotations

import math
import random

import pytest

from capinfer_sidecar.policies.base import Knobs, Observation
from capinfer_sidecar.policies.model import (
    Lean,
    ModelPriors,
    PlantModel,
    PowerFit,
    fit_power,
)
from capinfer_sidecar.policies.table import PlantTable

TOP_MHZ = 1500


def true_power(batch: int, clock: int) -> float:
    """idle 50 W + 40 W * batch^0.3 * (clock / top)^2."""
    return 50.0 + 40.0 * math.pow(batch, 0.3) * (clock / TOP_MHZ) ** 2


class Feeder:
    """Feeds a table one sample per 0.1 s at a pair, batches of ``batch_time_s``."""

    def __init__(self, table: PlantTable, seed: int = 0) -> None:
        self.table = table
        self.now_s = 0.0
        self.batches = 0.0
        self.inferences = 0
        self.rng = random.Random(seed)

    def run(
        self,
        knobs: Knobs,
        seconds: float,
        watts: float,
        batch_time_s: float,
        *,
        noise_watts: float = 0.0,
        formed: int | None = None,
    ) -> None:
        for _ in range(round(seconds / 0.1)):
            self.now_s = round(self.now_s + 0.1, 6)
            before = int(self.batches)
            self.batches += 0.1 / batch_time_s
            done = int(self.batches) - before
            self.inferences += done * (formed or knobs.batch_size)
            reading = watts + (self.rng.gauss(0.0, noise_watts) if noise_watts else 0.0)
            self.table.record(
                Observation(
                    now_s=self.now_s,
                    power_watts=reading,
                    mean_power_watts=reading,
                    batches_completed=int(self.batches),
                    inferences_completed=self.inferences,
                    applied=knobs,
                    reload_in_flight=False,
                )
            )


def test_the_peak_is_the_90th_percentile_once_there_are_enough_readings() -> None:
    table = PlantTable(memory_s=60.0)
    feeder = Feeder(table)
    feeder.run(Knobs(16, 1000), 0.5, 100.0, 0.05)
    cell = table.get(16, 1000, feeder.now_s)
    assert cell is not None
    # Four readings (the first sample only opens the pair): the highest, less the noise.
    assert cell.peak_watts(noise_watts=1.0) == pytest.approx(99.0)
    for watts in [100.0] * 20 + [130.0]:
        feeder.run(Knobs(16, 1000), 0.1, watts, 0.05)
    # One outlier among 25 readings does not move the 90th percentile.
    assert cell.peak_watts(noise_watts=1.0) == pytest.approx(100.0)


def test_the_sensor_noise_is_learned_from_consecutive_readings() -> None:
    table = PlantTable(memory_s=60.0)
    feeder = Feeder(table, seed=3)
    feeder.run(Knobs(64, 1200), 60.0, 180.0, 0.5, noise_watts=2.0)
    assert table.noise_watts == pytest.approx(2.0, rel=0.25)


def test_throughput_is_the_slope_of_completed_inferences() -> None:
    table = PlantTable(memory_s=60.0)
    feeder = Feeder(table)
    # 64 per batch, a batch every 0.32 s: 200 inferences per second.
    feeder.run(Knobs(64, 1200), 20.0, 180.0, 0.32)
    cell = table.get(64, 1200, feeder.now_s)
    assert cell is not None
    rate = cell.rate()
    assert rate is not None
    assert rate[0] == pytest.approx(200.0, rel=0.02)
    assert rate[1] > 15.0


def test_light_load_samples_stay_out_of_the_table() -> None:
    table = PlantTable(memory_s=60.0)
    feeder = Feeder(table)
    feeder.run(Knobs(64, 1200), 5.0, 90.0, 0.05, formed=4)
    assert table.light_load(64)
    cell = table.get(64, 1200, feeder.now_s)
    assert cell is None or not cell.peaks_watts


def test_readings_of_a_batch_still_draining_after_a_reload_are_left_out() -> None:
    table = PlantTable(memory_s=60.0)
    feeder = Feeder(table)
    feeder.run(Knobs(256, 1200), 3.0, 230.0, 1.0)
    # The reload to 32 completes; the 256 batch executing keeps drawing 230 W for a while.
    feeder.run(Knobs(32, 1200), 0.5, 230.0, 10.0)
    cell = table.get(32, 1200, feeder.now_s)
    assert cell is None or not cell.peaks_watts


def test_a_pair_left_too_hot_is_remembered_for_the_memory() -> None:
    table = PlantTable(memory_s=30.0)
    table.mark_too_hot(Knobs(64, 1400), 210.0, now_s=10.0)
    assert table.too_hot(64, 1400, now_s=20.0, limit_watts=200.0)
    assert not table.too_hot(64, 1400, now_s=20.0, limit_watts=215.0)
    assert not table.too_hot(64, 1400, now_s=45.0, limit_watts=200.0)


def test_the_power_fit_recovers_idle_and_the_clock_exponent() -> None:
    points = [(b, c, true_power(b, c)) for b in (16, 64) for c in (600, 900, 1200, 1500)]
    fit = fit_power(points, TOP_MHZ, ModelPriors())
    assert fit is not None
    assert fit.idle_watts == pytest.approx(50.0, abs=1.0)
    assert fit.gamma == pytest.approx(2.0, abs=0.1)
    estimate = fit.peak(32, 1100, Lean.CENTRAL, kappa_margin=0.1)
    assert estimate == pytest.approx(true_power(32, 1100), rel=0.02)


def test_leaning_estimates_are_ordered() -> None:
    fit = PowerFit(50.0, 2.0, TOP_MHZ, ((16, 91.0), (64, 138.0)), kappa_prior=0.35)
    for batch in (8, 32, 256):
        cautious = fit.peak(batch, 1200, Lean.CAUTIOUS, kappa_margin=0.1)
        central = fit.peak(batch, 1200, Lean.CENTRAL, kappa_margin=0.1)
        hopeful = fit.peak(batch, 1200, Lean.HOPEFUL, kappa_margin=0.1)
        assert cautious >= central >= hopeful, batch
    # Between measured batch sizes the estimate stays between their values.
    assert 91.0 <= fit.dynamic(32, Lean.CAUTIOUS, 0.1) <= 138.0


def test_the_latency_fit_and_the_clock_share_of_batch_time() -> None:
    table = PlantTable(memory_s=120.0)
    model = PlantModel(table, ModelPriors())
    model.top_mhz = TOP_MHZ
    feeder = Feeder(table)

    def batch_time_s(batch: int, clock: int) -> float:
        # 0.002 s host time per item (clock-independent) + 0.004 s per item at the top clock.
        return 0.01 + 0.002 * batch + 0.004 * batch * TOP_MHZ / clock

    for batch, clock in ((16, 1500), (16, 1000), (64, 1500), (128, 1200)):
        feeder.run(Knobs(batch, clock), 6.0, true_power(batch, clock), batch_time_s(batch, clock))
    # phi at batch 16: (0.004 * 16) / (0.01 + 0.006 * 16) at the top clock.
    assert model.clock_fraction(feeder.now_s, 2.0) == pytest.approx(0.064 / 0.106, abs=0.06)
    fit = model.latency_fit(feeder.now_s, 2.0)
    assert fit is not None
    predicted = model.predicted_rate(fit, 32, 1300)
    assert predicted == pytest.approx(32 / batch_time_s(32, 1300), rel=0.08)


def test_rates_at_other_clocks_are_rescaled_with_the_clock_share() -> None:
    table = PlantTable(memory_s=120.0)
    model = PlantModel(table, ModelPriors(clock_time_fraction=0.5))
    model.top_mhz = TOP_MHZ
    Feeder(table).run(Knobs(64, 1500), 6.0, 150.0, 0.2)
    found = model.rate_and_source(64, 750, 6.0, 2.0)
    assert found is not None
    rate, exact = found
    assert not exact
    # Half the time doubles at half the clock: 0.2 s becomes 0.3 s.
    assert rate == pytest.approx(64 / 0.3, rel=0.03)
    assert math.isclose(model.rate(64, 1500, 6.0, 2.0) or 0.0, 320.0, rel_tol=0.02)
