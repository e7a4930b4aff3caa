"""A sidecar on a node without the node agent: it says so and controls the batch size alone.

A real ``capinfer-sidecar`` and a real tritonserver (the ``simbatch`` model on a virtual
GPU, as in the demo) under a saturating load, with no agent to call: the sidecar must not
stop or restart, must report clock control off with the reason, must never show a locked
clock, and must still move the batch size.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad

pytestmark = pytest.mark.triton

RUN_S = 20.0


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        ("", "no node agent"),
        # An address where nothing listens: a node whose agent is not installed or down.
        ("unix:///nonexistent/capinfer-node-agent.sock", "node agent at unix:///nonexistent"),
    ],
    ids=["none-configured", "none-listening"],
)
async def test_without_an_agent_the_batch_size_alone_is_controlled(
    tmp_path: Path, agent: str, reason: str
) -> None:
    power_file = tmp_path / "power.yaml"
    power_file.write_text("capWatts: 150\npolicy: Adaptive\n")
    pod = LocalPod(
        tmp_path / "pod",
        ["--power-file", str(power_file), "--node-agent", agent],
        model=SimBatchSpec(max_batch_size=8, max_supported_batch_size=256),
        local_agent=False,
    )
    pod.start()
    try:
        async with ClosedLoopLoad(pod.triton.http_address if pod.triton else "", "simbatch",
                                  concurrency=64) as load:  # fmt: skip
            samples = []
            for _ in range(int(RUN_S / 0.5)):
                await asyncio.sleep(0.5)
                samples.append(pod.scrape())
                assert pod.sidecar is not None and pod.sidecar.poll() is None, "it stopped"
            metrics = (await asyncio.to_thread(_metrics, pod)).strip()
            counts = await load.stop()
    finally:
        code = pod.stop()
    log = pod.sidecar_log.read_text()
    batches = sorted({s.batch_size for s in samples if s.batch_size is not None})
    print(f"batch sizes seen: {batches}; reason logged: {reason!r}")
    assert gauge(metrics, "capinfer_clock_control") == 0
    assert all(s.sm_clock_mhz is None for s in samples), "a clock was reported locked"
    assert reason in log and "batch size alone" in log
    assert len(batches) > 1, "the batch size never moved"
    assert counts.failed == 0, counts.errors
    assert code == 0


def _metrics(pod: LocalPod) -> str:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(pod.metrics_url, timeout=2) as response:
        return str(response.read().decode())
