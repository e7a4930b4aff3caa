"""The pod's throughput-versus-cap curve, built from the loop's own settled samples."""

from __future__ import annotations

from dataclasses import replace

from test_metrics import SNAPSHOT

from capinfer_core import ThroughputCurve
from capinfer_sidecar.curves import MIN_SAMPLES, SETTLE_S, CurveRecorder
from capinfer_sidecar.status import pod_status_entry


def run(recorder: CurveRecorder, start_s: float, batch: int, clock: int | None, *,
        power: float, ips: float, seconds: float = 4.0) -> float:  # fmt: skip
    """The loop on one setting for ``seconds`` (10 samples a second); answers the end time."""
    now = start_s
    while now < start_s + seconds:
        recorder.observe(replace(SNAPSHOT, now_s=now, batch_size=batch, sm_clock_mhz=clock,
                                 power_watts=power, inferences_per_second=ips))  # fmt: skip
        now += 0.1
    return now


def test_each_settled_setting_is_a_point_and_the_top_setting_is_the_uncapped_draw() -> None:
    recorder = CurveRecorder(lambda batch, clock: batch == 64)
    assert recorder.curve(300) is None
    t = run(recorder, 0, 8, 1200, power=120, ips=400)
    # The first samples after a move still carry the old setting's throughput: not counted.
    t = run(recorder, t, 32, 1400, power=200, ips=1000, seconds=SETTLE_S - 0.5)
    assert len(recorder.points()) == 1
    t = run(recorder, t, 32, 1400, power=200, ips=900)
    curve = recorder.curve(300)
    assert curve is not None
    assert curve.cap_watts == (120, 200) and curve.inferences_per_second == (400, 900)
    assert curve.uncapped_watts == 300  # the top setting never ran: up to the declared cap
    run(recorder, t, 64, 1400, power=260, ips=1000)
    curve = recorder.curve(300)
    assert curve is not None and curve.uncapped_watts == 260


def test_safe_settings_and_missing_readings_are_no_measurement() -> None:
    recorder = CurveRecorder(lambda batch, clock: False)
    now = 0.0
    for _ in range(100):
        recorder.observe(replace(SNAPSHOT, now_s=now, degraded="power readings stale"))
        recorder.observe(replace(SNAPSHOT, now_s=now + 0.05, power_watts=float("nan")))
        now += 0.1
    assert recorder.points() == []
    assert MIN_SAMPLES > 1


def test_the_status_entry_carries_the_curve_in_its_status_form() -> None:
    curve = ThroughputCurve((120.0, 200.0), (400.0, 900.0), 260.0)
    entry = pod_status_entry("pod-a", ["GPU-1"], SNAPSHOT, curve=curve.to_status())
    assert ThroughputCurve.from_status(entry["curve"]) == curve
    assert "curve" not in pod_status_entry("pod-a", ["GPU-1"], SNAPSHOT)


def test_the_policys_own_measurements_win_over_the_loops_samples() -> None:
    recorder = CurveRecorder(lambda batch, clock: False)
    run(recorder, 0, 8, 1200, power=120, ips=400)
    measured = [(110.0, 420.0), (190.0, 950.0), (200.0, 600.0)]  # hotter, no faster: dropped
    curve = recorder.curve(300, measured)
    assert curve is not None
    assert curve.cap_watts == (110, 190) and curve.inferences_per_second == (420, 950)
    fallback = recorder.curve(300, [])
    assert fallback is not None and fallback.cap_watts == (120,)
