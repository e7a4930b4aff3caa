"""The probes and /metrics, served by a real aiohttp server on a free local port."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry, Gauge

from capinfer_sidecar.httpserver import Health, build_app, serve


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


async def test_probes_follow_the_loop_and_metrics_are_exposed() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    Gauge("capinfer_power_cap_watts", "cap", registry=registry).set(180)
    health = Health(monotonic=clock, stall_after_s=5)
    runner = await serve(build_app(registry, health), "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:

            async def status(path: str) -> tuple[int, str]:
                async with session.get(base + path) as response:
                    return response.status, await response.text()

            assert (await status("/healthz"))[0] == 200
            assert (await status("/readyz")) == (503, "starting\n")
            health.waiting("waiting for Triton to serve model 'm'")
            clock.now_s += 600  # a long model load: alive, not started, not ready
            assert (await status("/healthz")) == (200, "waiting for Triton to serve model 'm'\n")
            assert (await status("/startupz"))[0] == 503
            assert (await status("/readyz"))[0] == 503
            health.sampled(degraded=None)
            assert (await status("/startupz")) == (200, "ok\n")
            assert (await status("/readyz"))[0] == 200
            problems: list[str] = ["control-loop keeps failing (3 times in a row): boom"]
            health.problem = lambda: problems[0] if problems else None
            assert (await status("/readyz")) == (503, problems[0] + "\n")
            assert (await status("/healthz"))[0] == 200
            problems.clear()
            assert (await status("/readyz"))[0] == 200
            health.sampled(degraded="power readings stopped")
            assert (await status("/readyz")) == (503, "power readings stopped\n")
            clock.now_s += 6
            code, text = await status("/healthz")
            assert code == 503 and "stalled" in text
            code, text = await status("/metrics")
            assert code == 200 and "capinfer_power_cap_watts 180.0" in text
    finally:
        await runner.cleanup()
