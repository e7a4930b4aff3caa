"""DVFS, BatchDVFS and Static on synthetic traces."""

from __future__ import annotations

from toy_plant import P40_CLOCKS_MHZ, PAPER_LADDER, ToyGpu, drive

from capinfer_sidecar.policies.base import Knobs, PowerSettings
from capinfer_sidecar.policies.batchdvfs import BatchDVFS
from capinfer_sidecar.policies.dvfs import DVFS
from capinfer_sidecar.policies.static import Static

# Peak power at the top clock; the toy scales the dynamic part with (clock / 1531)^2.
PEAKS_WATTS = {1: 70, 2: 80, 4: 95, 8: 110, 16: 130, 32: 160, 64: 200, 128: 230, 256: 250}


def settings(cap_watts: float = 200.0, clocks: tuple[int, ...] = P40_CLOCKS_MHZ) -> PowerSettings:
    return PowerSettings(cap_watts=cap_watts, batch_sizes=PAPER_LADDER, clock_levels_mhz=clocks)


def clocks_asked(decisions: list[Knobs]) -> list[int | None]:
    walk: list[int | None] = []
    for knobs in decisions:
        if not walk or walk[-1] != knobs.sm_clock_mhz:
            walk.append(knobs.sm_clock_mhz)
    return walk


def test_dvfs_holds_batch_16_and_binary_searches_the_clock() -> None:
    gpu = ToyGpu(PEAKS_WATTS)
    run = drive(DVFS(), gpu, settings(cap_watts=120.0), duration_s=30)
    assert {d.knobs.batch_size for d in run.decisions} == {16}
    walk = clocks_asked([d.knobs for d in run.decisions])
    # 544 (67 W, under 96) -> 1063 (89 W, under) -> 1303 (108 W, in the band [96, 120]).
    assert walk == [544, 1063, 1303]
    assert run.decisions[-1].state == "settled"


def test_dvfs_at_the_top_clock_under_the_band_stays_there() -> None:
    run = drive(DVFS(), ToyGpu(PEAKS_WATTS), settings(cap_watts=240.0), duration_s=30)
    assert run.decisions[-1].knobs == Knobs(16, 1531)
    assert run.decisions[-1].state == "at-top"


def test_dvfs_without_clock_control_holds_its_batch_size() -> None:
    run = drive(DVFS(), ToyGpu(PEAKS_WATTS), settings(clocks=()), duration_s=10)
    assert {d.knobs for d in run.decisions} == {Knobs(16, None)}
    assert "clocks cannot be set" in run.decisions[-1].reason


def test_dvfs_batch_snaps_to_the_nearest_rung() -> None:
    decision = DVFS().start(PowerSettings(200.0, (1, 8, 24, 64), (500, 1000)), 0.0)
    assert decision.knobs == Knobs(8, 500)


def test_batchdvfs_starts_at_the_middle_clock_and_decides_every_3_s() -> None:
    gpu = ToyGpu(PEAKS_WATTS, reload_s=0.5)
    run = drive(BatchDVFS(), gpu, settings(cap_watts=240.0), duration_s=8)
    first = run.decisions[0].knobs
    assert first == Knobs(1, P40_CLOCKS_MHZ[5])
    # The window opens at the first sample (0.1 s) and closes 3 s later.
    pairs = zip(run.observations, run.decisions, strict=True)
    changed_at = next(o.now_s for o, d in pairs if d.knobs != first)
    assert abs(changed_at - 3.1) < 1e-6


def test_batchdvfs_steps_the_clock_down_when_batch_one_is_over_the_cap() -> None:
    gpu = ToyGpu(dict.fromkeys(PAPER_LADDER, 300.0), reload_s=0.5)
    run = drive(BatchDVFS(), gpu, settings(cap_watts=150.0), duration_s=30)
    assert run.batches_asked() == [1]
    # 1063 MHz: 50 + 250 * (1063 / 1531)^2 = 170.5 W, over; 949 MHz: 146.1 W, in the band.
    assert clocks_asked([d.knobs for d in run.decisions]) == [1063, 949]
    assert run.decisions[-1].state == "settled"


def test_batchdvfs_steps_the_clock_up_when_the_top_batch_is_under_the_band() -> None:
    gpu = ToyGpu(PEAKS_WATTS, reload_s=0.5)
    run = drive(BatchDVFS(), gpu, settings(cap_watts=250.0), duration_s=60)
    assert run.batches_asked() == [1, 16, 64, 128, 256]
    walk = clocks_asked([d.knobs for d in run.decisions])
    assert walk[0] == 1063
    assert walk[1] == 1189
    assert run.decisions[-1].knobs.batch_size == 256


def test_batchdvfs_without_clocks_is_a_batch_search() -> None:
    gpu = ToyGpu(PEAKS_WATTS, reload_s=0.5)
    run = drive(BatchDVFS(), gpu, settings(cap_watts=200.0, clocks=()), duration_s=60)
    assert all(d.knobs.sm_clock_mhz is None for d in run.decisions)
    # Band [160, 200]: 32 (160 W) or 64 (200 W) are inside it.
    assert run.decisions[-1].knobs.batch_size in {32, 64}
    assert run.decisions[-1].state == "settled"


def test_static_holds_its_pair_whatever_the_cap() -> None:
    run = drive(Static(64, 1189), ToyGpu(PEAKS_WATTS), settings(cap_watts=100.0), duration_s=5)
    assert {d.knobs for d in run.decisions} == {Knobs(64, 1189)}
    assert run.decisions[-1].state == "static"


def test_static_defaults_and_snapping() -> None:
    assert Static().start(settings(), 0.0).knobs == Knobs(256, 1531)
    decision = Static(batch_size=50, clock_mhz=1000).start(settings(), 0.0)
    assert decision.knobs == Knobs(64, 949)
    assert "not on the ladder" in decision.reason
    assert "not a level" in decision.reason
    no_clocks = Static(batch_size=16, clock_mhz=1000).start(settings(clocks=()), 0.0)
    assert no_clocks.knobs == Knobs(16, None)
    assert "cannot be set" in no_clocks.reason
