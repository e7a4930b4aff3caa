"""A latency SLO no batch size can meet: the sidecar steps the batch size down to the smallest,
counts the misses and says the SLO cannot be met; the cap stays held.

Real: ``tritonserver`` 2.51 with its latency summaries (as the operator runs it), the
``simbatch`` model under a closed-loop load, and the ``capinfer-sidecar`` process reading
the p99 from Triton's metrics. Stand-in: the GPU (the virtual P40, fed by the batches Triton
executes). The SLO (1 ms) is below the model's own sleep for any batch, so it is missed
whatever the machine's speed; Static at batch 32 would never move on its own. Two clients
keep the queue shorter than a batch: latency is the batch's, not queueing (under a backlog
the guard would not take batch sizes away, see the unit tests).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad
from podwatch import over_cap_between

pytestmark = pytest.mark.triton

CAP_W = 240.0
DEADLINE_S = 180.0
"""The one step down is taken at the first reading over the SLO; the rest is room for a
busy machine."""


def sidecar_metrics(pod: LocalPod) -> dict[tuple[str, str], float]:
    """Every series of the sidecar by (name, reason label)."""
    with urllib.request.urlopen(pod.metrics_url, timeout=2) as response:
        text = response.read().decode()
    return {
        (sample.name, sample.labels.get("reason", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict[tuple[str, str], float], name: str) -> float | None:
    found = [v for (n, _), v in metrics.items() if n == name]
    return found[0] if found else None


def unmet_reason(metrics: dict[tuple[str, str], float]) -> str | None:
    reasons = [r for (n, r), v in metrics.items() if n == "capinfer_latency_slo_unmet" and v == 1]
    return reasons[0] if reasons else None


async def test_an_slo_nothing_can_meet_brings_the_batch_down_and_is_reported(
    tmp_path: Path,
) -> None:
    power_file = tmp_path / "power.yaml"
    power_file.write_text(
        f"power:\n  capWatts: {CAP_W:.0f}\n  policy: Static\n  batchSizes: [1, 32]\n"
        "latencySLO:\n  p99Ms: 1\n"
    )
    pod = LocalPod(
        tmp_path / "pod",
        ["--power-file", str(power_file)],
        model=SimBatchSpec(max_batch_size=8),
    )
    pod.start()
    try:
        address = pod.triton.http_address if pod.triton else ""
        started = pod.scrape()
        async with ClosedLoopLoad(address, "simbatch", concurrency=2) as load:
            deadline = time.monotonic() + DEADLINE_S
            metrics = sidecar_metrics(pod)
            while unmet_reason(metrics) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                metrics = sidecar_metrics(pod)
            last = pod.scrape()
            counts = await load.stop()
    finally:
        exit_code = pod.stop()

    p99_s = value(metrics, "capinfer_request_p99_latency_seconds")
    print(f"p99 {p99_s}, unmet: {unmet_reason(metrics)}")
    assert unmet_reason(metrics) is not None, f"never gave up on the SLO: {metrics}"
    assert "even at the smallest batch size 1" in (unmet_reason(metrics) or "")
    assert p99_s is not None and p99_s > 0.001
    assert value(metrics, "capinfer_latency_slo_p99_seconds") == pytest.approx(0.001)
    assert value(metrics, "capinfer_latency_slo_batch_ceiling") == 1
    assert (value(metrics, "capinfer_latency_slo_misses_total") or 0) >= 1
    assert last.batch_size == 1, "Static's 32 gave way to the SLO"
    assert counts.failed == 0 and counts.wrong == 0, counts.errors
    assert over_cap_between(started, last) <= 0.1 * (last.at_s - started.at_s)
    assert exit_code == 0
