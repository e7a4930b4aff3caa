"""The sidecar's HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz`` and ``/startupz``.

The server starts before anything else, so the probes answer while the sidecar waits for
Triton to serve the model. Liveness means the sidecar has not hung: true while it starts,
then the control loop must keep sampling. Start-up is done once the control loop took its
first sample. Readiness means the cap is being followed: the loop samples with fresh
readings, on the policy's settings (not the failsafe's), and no supervised task keeps
failing. All are answered from state the loop and the supervisor update, so a probe never
touches NVML or Triton.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def _no_problem() -> str | None:
    return None


@dataclass
class Health:
    """Updated by the loop; read by the probes."""

    monotonic: Callable[[], float]
    stall_after_s: float = 10.0
    last_sample_s: float | None = None
    degraded: str | None = "starting"
    """Why the loop runs on safe settings; before the first sample, what start-up waits for."""
    problem: Callable[[], str | None] = _no_problem
    """A task that keeps failing (the supervisor's word), None when all is well."""

    def waiting(self, what: str) -> None:
        """Start-up is waiting for something (Triton, the object): say what."""
        if self.last_sample_s is None:
            self.degraded = what

    def sampled(self, degraded: str | None) -> None:
        self.last_sample_s = self.monotonic()
        self.degraded = degraded

    def started(self) -> tuple[bool, str]:
        if self.last_sample_s is None:
            return False, self.degraded or "starting"
        return True, "ok"

    def live(self) -> tuple[bool, str]:
        if self.last_sample_s is None:
            return True, self.degraded or "starting"
        age_s = self.monotonic() - self.last_sample_s
        if age_s > self.stall_after_s:
            return False, f"control loop stalled: no sample for {age_s:.1f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        for check in (self.started, self.live):
            ok, why = check()
            if not ok:
                return False, why
        problem = self.problem()
        if problem is not None:
            return False, problem
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
    app.router.add_get("/startupz", probe(health.started))
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving; the caller cleans up with ``await runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
