"""NVML errors on a running sidecar: transient ones retried, a long burst and a lost GPU
mean the failsafe, and the sidecar recovers from both.

Real: ``tritonserver`` serving the ``simbatch`` model under a closed-loop load, the
``capinfer-sidecar`` process (its control loop, probes and metrics). Stand-in: the GPU,
which cannot exist here. The sidecar's virtual GPU (a P40 running ResNet-50, fed by the
batches Triton really executes) raises, on command, exactly the typed error the NVML
device raises for the NVML return code named (``UNKNOWN``, ``TIMEOUT``, ``GPU_IS_LOST``):
every reading for a transient error, every call for a lost GPU. Power over the fault comes
from the GPU's own energy counter, which the fault does not stop from counting.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad
from capinfer_sidecar.sim.profiles import load_profile_set
from podwatch import (
    PodWatch,
    log_since,
    mean_power_between,
    over_cap_between,
    wait_for_log,
)

pytestmark = pytest.mark.triton

CAP_W = 150.0
LOWEST_CLOCK_MHZ = load_profile_set("p40").workload("Res50", "imagenet").gpu.clock_levels_mhz[0]
"""The virtual P40's lowest clock: where the failsafe locks it."""
STALE_AFTER_S = 2.0
"""The control loop's limit for readings that failed (its default)."""
LONG_BURST_S = 4.0
TRANSIENT_S = 0.5
"""Well under the stale limit: errors this short must only be retried."""


async def test_nvml_errors_transient_burst_and_lost_gpu(tmp_path: Path) -> None:
    power_file = tmp_path / "power.yaml"
    power_file.write_text(f"capWatts: {CAP_W:.0f}\npolicy: Adaptive\n")
    pod = LocalPod(
        tmp_path / "pod",
        ["--power-file", str(power_file)],
        model=SimBatchSpec(max_batch_size=8, max_supported_batch_size=256),
    )
    pod.start()
    try:
        address = pod.triton.http_address if pod.triton else ""
        async with (
            ClosedLoopLoad(address, "simbatch", concurrency=32) as load,
            PodWatch(pod) as watch,
        ):
            await watch.wait_for("readiness", lambda s: s.ready, since_s=0)

            # Transient errors: a short run of each kind is retried, never the failsafe.
            start = pod.scrape()
            for kind in ("unknown", "timeout"):
                offset = pod.sidecar_log.stat().st_size
                pod.inject_gpu_fault(kind, TRANSIENT_S)
                written = await wait_for_log(pod.sidecar_log, offset, f"fault {kind} over")
                raised = int(re.findall(rf"fault {kind} over, (\d+) errors raised", written)[0])
                print(f"{kind}: {raised} NVML errors raised in {TRANSIENT_S} s")
                assert raised >= 1, "the control loop never read the GPU during the fault"
                assert "state=failsafe" not in written
            transient = watch.since(start.at_s)
            assert transient and all(s.sample.degraded is None for s in transient)
            assert all(s.ready for s in transient), {s.ready_text for s in transient}

            # A long burst: the failsafe once readings are stale, then recovery.
            before = pod.scrape()
            pod.inject_gpu_fault("unknown", LONG_BURST_S)
            failsafe = await watch.wait_for(
                "the failsafe", lambda s: s.sample.degraded is not None, before.at_s
            )
            print(f"long burst: failsafe {failsafe.at_s - before.at_s:.2f} s after it began")
            assert failsafe.sample.degraded == "power readings stopped"
            assert not failsafe.ready and "power readings stopped" in failsafe.ready_text
            locked = await watch.wait_for(
                "the lowest clock",
                lambda s: s.sample.sm_clock_mhz == LOWEST_CLOCK_MHZ,
                failsafe.at_s,
                timeout_s=5,
            )
            assert locked.sample.degraded == "power readings stopped"
            recovered = await watch.wait_for(
                "recovery", lambda s: s.ready and s.sample.degraded is None, failsafe.at_s
            )
            after = pod.scrape()
            burst_mean_w = mean_power_between(before, after)
            burst_over_s = over_cap_between(before, after)
            print(
                f"long burst: failsafe for {recovered.at_s - failsafe.at_s:.2f} s;"
                f" mean power {burst_mean_w:.1f} W (energy counter) under a {CAP_W:.0f} W cap;"
                f" {burst_over_s:.2f} s over the cap measured"
            )
            assert failsafe.at_s - before.at_s >= STALE_AFTER_S - 0.2, "failsafe too early"

            # A lost GPU: the failsafe at once (not after the stale limit), then recovery.
            before_lost = pod.scrape()
            offset = pod.sidecar_log.stat().st_size
            pod.inject_gpu_fault("gpu_is_lost", 3.0)
            lost = await watch.wait_for(
                "the failsafe", lambda s: s.sample.degraded is not None, before_lost.at_s
            )
            print(f"lost GPU: failsafe {lost.at_s - before_lost.at_s:.2f} s after it was lost")
            assert (lost.sample.degraded or "").startswith("GPU lost: ")
            assert not lost.ready and "GPU lost" in lost.ready_text
            back = await watch.wait_for(
                "recovery", lambda s: s.ready and s.sample.degraded is None, lost.at_s
            )
            after_lost = pod.scrape()
            lost_mean_w = mean_power_between(before_lost, after_lost)
            lost_over_s = over_cap_between(before_lost, after_lost)
            print(
                f"lost GPU: not ready for {back.at_s - lost.at_s:.2f} s; mean power"
                f" {lost_mean_w:.1f} W; {lost_over_s:.2f} s over the cap measured"
            )
            assert "GPU answers again" in log_since(pod.sidecar_log, offset)
            counts = await load.stop()
        restarts = pod.scrape().task_restarts
    finally:
        exit_code = pod.stop()

    assert burst_mean_w <= CAP_W and lost_mean_w <= CAP_W
    assert burst_over_s <= 0.1 * (after.at_s - before.at_s)
    assert lost_over_s <= 0.1 * (after_lost.at_s - before_lost.at_s)
    assert all(count == 0 for count in restarts.values()), restarts
    assert counts.failed == 0 and counts.wrong == 0, counts.errors
    assert exit_code == 0, f"the sidecar did not stop cleanly; see {pod.sidecar_log}"
