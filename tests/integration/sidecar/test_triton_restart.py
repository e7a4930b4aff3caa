"""A real ``tritonserver`` killed mid-run and started again: the sidecar degrades, holds
the failsafe while Triton is away, and takes control again once the model serves.

Real: ``tritonserver`` 2.51 (SIGKILLed with its Python-backend stubs, as a crash or an OOM
kill ends it, then started again at the same addresses, loading the model from its
repository as a restarted container does), the ``capinfer-sidecar`` process, its probes
and metrics, a closed-loop load. Stand-in: the GPU (the virtual P40, fed by the batches
Triton executes).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest

from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad
from capinfer_sidecar.sim.profiles import load_profile_set
from podwatch import PodWatch, mean_power_between, over_cap_between

pytestmark = pytest.mark.triton

CAP_W = 150.0
LOWEST_CLOCK_MHZ = load_profile_set("p40").workload("Res50", "imagenet").gpu.clock_levels_mhz[0]
OUTAGE_S = 3.0


def served_max_batch_size(pod: LocalPod) -> int:
    """What Triton itself says the model's max batch size is."""
    assert pod.triton is not None
    url = f"{pod.triton.http_url}/v2/models/simbatch/config"
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(json.loads(response.read())["max_batch_size"])


async def test_triton_killed_and_restarted(tmp_path: Path) -> None:
    power_file = tmp_path / "power.yaml"
    power_file.write_text(f"capWatts: {CAP_W:.0f}\npolicy: Adaptive\n")
    pod = LocalPod(
        tmp_path / "pod",
        ["--power-file", str(power_file)],
        model=SimBatchSpec(max_batch_size=8, max_supported_batch_size=256),
    )
    pod.start()
    try:
        assert pod.triton is not None
        triton = pod.triton
        async with (
            ClosedLoopLoad(triton.http_address, "simbatch", concurrency=32) as load,
            PodWatch(pod) as watch,
        ):
            grown = await watch.wait_for(
                "a grown batch size", lambda s: s.ready and (s.sample.batch_size or 0) > 8, 0
            )
            print(f"batch size {grown.sample.batch_size:.0f} before the kill")
            before = pod.scrape()
            failed_before = load.counts.failed
            triton.kill()
            killed_s = time.monotonic()
            down = await watch.wait_for(
                "the failsafe", lambda s: s.sample.degraded is not None, killed_s
            )
            print(f"degraded {down.at_s - killed_s:.2f} s after the kill: {down.sample.degraded}")
            assert down.sample.degraded == "Triton is unreachable"
            assert not down.ready and "Triton is unreachable" in down.ready_text
            await asyncio.sleep(OUTAGE_S)
            during = watch.since(down.at_s)
            assert all(not s.ready for s in during)
            assert during[-1].sample.sm_clock_mhz == LOWEST_CLOCK_MHZ
            assert pod.sidecar_alive()
            await asyncio.to_thread(triton.start)
            back_s = time.monotonic()
            recovered = await watch.wait_for(
                "recovery", lambda s: s.ready and s.sample.degraded is None, back_s
            )
            print(f"ready again {recovered.at_s - back_s:.2f} s after Triton served again")
            served_before = load.counts.succeeded
            await asyncio.sleep(5)
            served_after = load.counts.succeeded - served_before
            last = pod.scrape()
            in_effect = served_max_batch_size(pod)
            counts = await load.stop()
    finally:
        exit_code = pod.stop()

    print(
        f"{counts.failed} requests failed, all while Triton was down;"
        f" {served_after} served in the 5 s after recovery"
    )
    print(
        f"over the run: {over_cap_between(before, last):.2f} s over the cap measured, mean"
        f" power {mean_power_between(before, last):.1f} W under a {CAP_W:.0f} W cap"
    )
    # Requests fail only while Triton is away (refused by its absence), none after.
    assert failed_before == 0
    late = [t - back_s for t in counts.failures_sent_s if t >= back_s]
    assert not late, f"{len(late)} requests sent after Triton was back failed: {counts.last_errors}"
    assert counts.wrong == 0
    assert served_after > 100
    # The metrics tell what Triton serves, not what it served before it was killed.
    assert last.batch_size == in_effect
    assert over_cap_between(before, last) <= 0.1 * (last.at_s - before.at_s)
    # No crash loop: the same process throughout, its tasks restarted a bounded few times.
    assert sum(last.task_restarts.values()) <= 1, last.task_restarts
    assert exit_code == 0, f"the sidecar did not stop cleanly; see {pod.sidecar_log}"
