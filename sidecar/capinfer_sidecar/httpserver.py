"""The sidecar's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

Liveness means the control loop is still sampling (it has not hung); readiness means
it is controlling the GPU with fresh readings. Both are answered from state the loop
updates, so a probe never touches NVML or Triton.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class Health:
    """Updated by the loop; read by the probes."""

    monotonic: Callable[[], float]
    stall_after_s: float = 10.0
    last_sample_s: float | None = None
    degraded: str | None = "starting"

    def sampled(self, degraded: str | None) -> None:
        self.last_sample_s = self.monotonic()
        self.degraded = degraded

    def live(self) -> tuple[bool, str]:
        if self.last_sample_s is None:
            return True, "starting"
        age_s = self.monotonic() - self.last_sample_s
        if age_s > self.stall_after_s:
            return False, f"control loop stalled: no sample for {age_s:.1f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        alive, why = self.live()
        if not alive:
            return False, why
        if self.degraded is not None:
            return False, self.degraded
        return True, "ok"


def build_app(registry: CollectorRegistry, health: Health) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def probe(
        check: Callable[[], tuple[bool, str]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            ok, why = check()
            return web.Response(status=200 if ok else 503, text=why + "\n")

        return handler

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", probe(health.live))
    app.router.add_get("/readyz", probe(health.ready))
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving; the caller cleans up with ``await runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
