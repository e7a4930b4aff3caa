"""Fakes for the control loop's tests: virtual time, a scripted GPU, Triton and policy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from capinfer_sidecar.gpu.errors import GpuPermissionError
from capinfer_sidecar.loop import ControlLoop, LoopSnapshot, ServerCounters
from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.reloads import ReloadGovernor

SETTINGS = PowerSettings(
    cap_watts=200, batch_sizes=(1, 4, 16), clock_levels_mhz=(600, 900, 1200), band=0.8
)


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 100.0

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        await asyncio.sleep(0)


@dataclass
class FakeGpu:
    readings_watts: list[float | None]
    energy_j: float = 0.0
    clock_refused: bool = False
    locked_mhz: int | None = None
    resets: int = 0
    power_errors: list[Exception] = field(default_factory=list)
    """Raised by the next power reads, one each, before the readings resume."""
    clock_errors: list[Exception] = field(default_factory=list)

    def power_watts(self) -> float:
        if self.power_errors:
            raise self.power_errors.pop(0)
        value = self.readings_watts[0] if len(self.readings_watts) == 1 else None
        if len(self.readings_watts) > 1:
            value = self.readings_watts.pop(0)
        if value is None:
            raise RuntimeError("no reading")
        self.energy_j += value * 0.02
        return value

    def energy_joules(self) -> float:
        return self.energy_j

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        if self.clock_refused:
            raise GpuPermissionError("set locked clocks", "NO_PERMISSION")
        if self.clock_errors:
            raise self.clock_errors.pop(0)
        self.locked_mhz = clock_mhz

    def reset_sm_clock(self) -> None:
        self.resets += 1
        self.locked_mhz = None


@dataclass
class FakeServer:
    inferences: int = 0
    batches: int = 0
    reachable: bool = True
    fail_reload: bool = False
    release_reload: asyncio.Event = field(default_factory=asyncio.Event)
    applied: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    serving: int = 1
    """The max batch size in effect."""
    p99_latency_ms: float | None = None
    """What Triton's latency summary says, as the test sets it."""

    async def counters(self) -> ServerCounters:
        if not self.reachable:
            raise ConnectionError("refused")
        self.inferences += 40
        self.batches += 10
        return ServerCounters(
            self.inferences, self.batches, queue_depth=3, p99_latency_ms=self.p99_latency_ms
        )

    async def apply_max_batch_size(self, batch_size: int) -> None:
        self.attempts.append(batch_size)
        await self.release_reload.wait()
        if self.fail_reload:
            raise RuntimeError("load failed")
        self.applied.append(batch_size)
        self.serving = batch_size

    async def max_batch_size(self) -> int:
        if not self.reachable:
            raise ConnectionError("refused")
        return self.serving


class ScriptedPolicy(Policy):
    """Asks for fixed knobs and records what it observed."""

    name = "scripted"

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.observations: list[Observation] = []
        self.settings_seen: list[PowerSettings] = []
        self.clock_disabled = ""

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        self.settings_seen.append(settings)
        return Decision(self.knobs, "start", "starting")

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        self.settings_seen.append(settings)
        if not settings.clock_control:
            self.knobs = Knobs(self.knobs.batch_size, None)
        return Decision(self.knobs, "settings", "restarted")

    def step(self, observation: Observation) -> Decision:
        self.observations.append(observation)
        return Decision(self.knobs, "steady", "settled")

    def disable_clock_control(self, reason: str) -> None:
        self.clock_disabled = reason


def make_loop(
    policy: Policy,
    gpu: FakeGpu,
    server: FakeServer,
    time: FakeTime,
    reloads: ReloadGovernor | None = None,
) -> tuple[ControlLoop, list[LoopSnapshot]]:
    snapshots: list[LoopSnapshot] = []
    loop = ControlLoop(
        policy=policy,
        settings=SETTINGS,
        gpu=gpu,
        server=server,
        initial_batch_size=1,
        monotonic=time.monotonic,
        sleep=time.sleep,
        on_snapshot=snapshots.append,
        reloads=reloads or ReloadGovernor(),
    )
    return loop, snapshots
