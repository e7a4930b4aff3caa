"""Batch sizes the real Triton refuses to load: backed off, quarantined, bounded; the sizes
that load keep serving.

Real: ``tritonserver`` 2.51 and its model loading. The ``simbatch`` model fails its load
in ``initialize`` above ``max_supported_batch_size`` (32 here), as a model whose engine
has no profile for larger batches does: Triton answers the sidecar's load request with an
error, the same way it does for such a model. Real too: the ``capinfer-sidecar`` process,
its reload governor, metrics and probes, under a closed-loop load. Stand-in: the GPU
(the virtual P40, fed by the batches Triton executes).

Two policies meet the refusal: ``Static``, which asks for the largest batch size (256)
forever and never gives up, so only the governor bounds the failed loads; and
``Adaptive``, which learns from a failed load and carries on with the largest size that
loads. The cap is high enough that both want batches larger than the model can load.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad
from podwatch import PodWatch, over_cap_between

pytestmark = pytest.mark.triton

CAP_W = 240.0
LOADABLE = 32
MAX_FAILURES_PER_MINUTE = 5
"""The governor's global bound (its default)."""


async def test_a_size_asked_for_forever_is_backed_off_and_quarantined(tmp_path: Path) -> None:
    power_file = tmp_path / "power.yaml"
    power_file.write_text(f"capWatts: {CAP_W:.0f}\npolicy: Static\n")
    pod = LocalPod(
        tmp_path / "pod",
        ["--power-file", str(power_file)],
        model=SimBatchSpec(max_batch_size=8, max_supported_batch_size=LOADABLE),
    )
    pod.start()
    try:
        address = pod.triton.http_address if pod.triton else ""
        started = pod.scrape()
        async with (
            ClosedLoopLoad(address, "simbatch", concurrency=64) as load,
            PodWatch(pod) as watch,
        ):
            quarantined = await watch.wait_for(
                "a quarantined batch size", lambda s: bool(s.sample.quarantined), 0, 120
            )
            print(
                f"batch {quarantined.sample.quarantined} quarantined"
                f" {quarantined.at_s - started.at_s:.1f} s after the start, after"
                f" {quarantined.sample.reload_failures:.0f} failed loads"
            )
            served_before = load.counts.succeeded
            await asyncio.sleep(5)
            served_after_quarantine = load.counts.succeeded - served_before
            last = pod.scrape()
            counts = await load.stop()
        triton_log = pod.triton.log_path.read_text() if pod.triton else ""
        status, ready_text = pod.probe("/readyz")
    finally:
        exit_code = pod.stop()

    # What Triton says it refused, and what the sidecar counted, agree.
    failures_s, refused = refused_loads(triton_log)
    print(f"Triton refused {len(refused)} loads (sizes {sorted(set(refused))});"
          f" the sidecar counted {last.reload_failures:.0f}")  # fmt: skip
    assert refused and all(size > LOADABLE for size in refused)
    assert last.reload_failures == len(refused)
    assert all(size > LOADABLE for size in last.quarantined)
    # The bound, by Triton's clock: never more than the governor's limit in any minute.
    worst = max(sum(1 for t in failures_s if s <= t < s + 60) for s in failures_s)
    print(f"most failed loads in any 60 s: {worst}")
    assert worst <= MAX_FAILURES_PER_MINUTE
    # Throughput continues on the sizes that load, and the metrics say which one serves.
    assert last.batch_size == 8, "Static's size never loaded: the model's own size serves"
    assert served_after_quarantine > 100
    assert counts.failed == 0 and counts.wrong == 0, counts.errors
    assert over_cap_between(started, last) <= 0.1 * (last.at_s - started.at_s)
    # A quarantined size is the policy's loss, not a failure of the pod: it stays ready.
    assert status == 200, ready_text
    assert exit_code == 0


def refused_loads(triton_log: str) -> tuple[list[float], list[int]]:
    """When Triton refused a load of the model (seconds of its log's day), and which size."""
    found = re.findall(
        r"^E\d{4} (\d\d):(\d\d):(\d\d\.\d+) +\d+ model_lifecycle\.cc:\d+\] \"failed to load"
        r" 'simbatch' version 1: .*max_batch_size (\d+) exceeds",
        triton_log,
        re.MULTILINE,
    )
    times = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s, _ in found]
    return times, [int(size) for *_, size in found]


async def test_adaptive_moves_on_to_the_largest_size_that_loads(tmp_path: Path) -> None:
    power_file = tmp_path / "power.yaml"
    power_file.write_text(f"capWatts: {CAP_W:.0f}\npolicy: Adaptive\n")
    pod = LocalPod(
        tmp_path / "pod",
        ["--power-file", str(power_file)],
        model=SimBatchSpec(max_batch_size=8, max_supported_batch_size=LOADABLE),
    )
    pod.start()
    try:
        address = pod.triton.http_address if pod.triton else ""
        started = pod.scrape()
        async with (
            ClosedLoopLoad(address, "simbatch", concurrency=64) as load,
            PodWatch(pod) as watch,
        ):
            largest = await watch.wait_for(
                f"batch size {LOADABLE} in effect",
                lambda s: s.sample.batch_size == LOADABLE,
                0,
                timeout_s=120,
            )
            print(
                f"batch {LOADABLE} in effect {largest.at_s - started.at_s:.1f} s after the"
                f" start, after {largest.sample.reload_failures:.0f} failed loads"
            )
            served_before = load.counts.succeeded
            await asyncio.sleep(5)
            served_at_largest = load.counts.succeeded - served_before
            last = pod.scrape()
            counts = await load.stop()
        triton_log = pod.triton.log_path.read_text() if pod.triton else ""
    finally:
        exit_code = pod.stop()

    _, refused = refused_loads(triton_log)
    print(f"Triton refused {len(refused)} loads (sizes {refused});"
          f" {served_at_largest} served in 5 s at batch {LOADABLE}")  # fmt: skip
    assert refused and last.reload_failures == len(refused)
    # Each refused size once: the policy takes a refusal as its answer, never asks again.
    assert len(set(refused)) == len(refused), "the policy asked again for a refused size"
    assert last.quarantined == ()
    assert last.batch_size == LOADABLE and served_at_largest > 100
    assert counts.failed == 0 and counts.wrong == 0, counts.errors
    assert over_cap_between(started, last) <= 0.1 * (last.at_s - started.at_s)
    assert exit_code == 0
