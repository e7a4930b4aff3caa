"""The production control loop on virtual time: how the benchmark runs a policy.

:func:`run` builds the pod's control path -- a :class:`~capinfer_sidecar.loop.ControlLoop`
with its :class:`~capinfer_sidecar.reloads.ReloadGovernor`, run by a
:class:`~capinfer_sidecar.supervisor.Supervisor` as ``capinfer-sidecar`` runs it -- on the
simulated GPU and Triton of :mod:`capinfer_sidecar.sim.world`, and drives it on an asyncio
event loop whose clock is virtual: when every task waits, time jumps to the next timer. The
loop gets that clock through the ``monotonic`` and ``sleep`` it takes in the pod. Cap
changes reach it through :meth:`ControlLoop.update_settings`, as the cap follower delivers
them. Whatever production does -- retried GPU errors, the failsafe, a reload backed off or
quarantined, a loop restarted after an error -- happens here too, on the workload's faults.

The oracle runs through the same loop (:func:`run_oracle`): its policy holds the best
static pair of each cap, its reloads take no time, and no fault touches it.

Metrics come from the simulated server's own trace, on true power.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import selectors
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, replace
from typing import Any

from capinfer_sidecar.gpu.errors import GpuError, GpuLostError, GpuPermissionError
from capinfer_sidecar.loop import ControlLoop, LoopSnapshot
from capinfer_sidecar.policies.base import Policy
from capinfer_sidecar.reloads import ReloadGovernor
from capinfer_sidecar.sim.config import RunConfig
from capinfer_sidecar.sim.faults import Faults
from capinfer_sidecar.sim.oracle import OraclePolicy
from capinfer_sidecar.sim.world import (
    GpuErrorTypes,
    LoopView,
    RunResult,
    SimulatedGpu,
    SimulatedServer,
    SimulatedTriton,
)
from capinfer_sidecar.supervisor import Supervisor

GPU_ERRORS = GpuErrorTypes(transient=GpuError, lost=GpuLostError, refused=GpuPermissionError)
"""The simulated GPU raises what the NVML adapter raises."""

CONTROL_TASK = "control-loop"


class SimulationStalledError(RuntimeError):
    """Every task waits and no timer is set: the simulation could never move on."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector with nothing to select: a wait of ``timeout`` moves the clock instead."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationStalledError("every task waits and nothing is scheduled")
        self.now_s += timeout
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on virtual time: ``asyncio.sleep(60)`` returns at once, 60
    virtual seconds later. Nothing here may wait on real I/O or threads."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now_s

    async def sleep(self, delay_s: float) -> None:
        """``asyncio.sleep`` without the trip through the event loop when nothing else could
        run meanwhile: no callback is ready and no timer falls due before the wake-up. The
        outcome is the same (nothing else would have run); the cost is far lower, and the
        control loop sleeps five times a sample. It reads the event loop's ready queue and
        timer heap (``BaseEventLoop._ready``, ``_scheduled``, stable since Python 3.4);
        ``tests/unit/sim/test_simloop_faults.py`` checks that it changes no outcome."""
        wake_s = self._virtual.now_s + delay_s
        ready: Sized = self._ready  # type: ignore[attr-defined]
        timers: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if delay_s > 0 and not ready and (not timers or timers[0].when() > wake_s):
            self._virtual.now_s = wake_s
            return
        await asyncio.sleep(delay_s)


@dataclass
class _Observed:
    failsafe_s: float = 0.0
    last: LoopSnapshot | None = None


def run(
    config: RunConfig,
    policy: Policy,
    *,
    governor: ReloadGovernor | None = None,
    on_snapshot: Callable[[LoopSnapshot], None] | None = None,
    batch_log: list[tuple[int, int]] | None = None,
) -> RunResult:
    """Simulate ``config`` with ``policy`` in the production control loop.

    ``on_snapshot`` sees every snapshot of the loop (what metrics and status see in a pod);
    ``batch_log`` collects ``(batch formed, max batch size in effect)`` of every batch.
    """
    # The run's cost is the CPU time of this (single-threaded) process: wall-clock time on
    # a shared machine also counts the waits for a core.
    started = time.process_time()
    # The loop logs its warnings (failed loads, the failsafe) as in a pod. Where nothing
    # configured logging, a handler here keeps Python's last resort from printing them all.
    quiet = logging.NullHandler()
    package_log = logging.getLogger("capinfer_sidecar")
    package_log.addHandler(quiet)
    loop = VirtualTimeLoop()
    try:
        result = loop.run_until_complete(
            _simulate(config, policy, governor or ReloadGovernor(), on_snapshot, batch_log)
        )
    finally:
        loop.close()
        package_log.removeHandler(quiet)
    return replace(result, cpu_s=time.process_time() - started)


def run_oracle(config: RunConfig) -> RunResult:
    """The oracle's schedule through the same loop: instant reloads, no faults."""
    ideal = replace(config, reload_s=0.0, initial_batch_size=None, faults=Faults())
    return run(ideal, OraclePolicy(ideal))


async def _simulate(
    config: RunConfig,
    policy: Policy,
    governor: ReloadGovernor,
    snapshot_hook: Callable[[LoopSnapshot], None] | None,
    batch_log: list[tuple[int, int]] | None,
) -> RunResult:
    event_loop = asyncio.get_running_loop()
    if not isinstance(event_loop, VirtualTimeLoop):
        raise TypeError("a simulation runs on a VirtualTimeLoop")
    monotonic = event_loop.time
    settings = config.settings(config.cap_watts)
    # Triton was deployed with the batch size the policy asks for first (a copy is asked:
    # the loop starts the policy itself).
    first = copy.deepcopy(policy).start(settings, monotonic())
    initial_batch = config.initial_batch_size or first.knobs.batch_size
    server = SimulatedServer(config, max_batch_size=initial_batch, batch_log=batch_log)
    gpu = SimulatedGpu(server, monotonic, GPU_ERRORS, config.faults, config.clocks)
    triton = SimulatedTriton(
        server,
        monotonic,
        asyncio.sleep,
        reload_s=config.effective_reload_s,
        faults=config.faults,
        seed=config.seed,
    )
    observed = _Observed()

    def on_snapshot(snapshot: LoopSnapshot) -> None:
        if snapshot.degraded is not None:
            observed.failsafe_s += config.sample_interval_s
        observed.last = snapshot
        if snapshot_hook is not None:
            snapshot_hook(snapshot)
        view = LoopView(
            power_watts=snapshot.power_watts,
            requested_batch_size=snapshot.requested_batch_size,
            reload_in_flight=snapshot.requested_batch_size != snapshot.batch_size,
            state=snapshot.policy_state,
        )
        server.observe(view, snapshot.now_s)

    control = ControlLoop(
        policy=policy,
        settings=settings,
        gpu=gpu,
        server=triton,
        initial_batch_size=initial_batch,
        monotonic=monotonic,
        sleep=event_loop.sleep,
        sample_interval_s=config.sample_interval_s,
        on_snapshot=on_snapshot,
        reloads=governor,
        latency_slo_ms=config.latency_slo_ms,
    )
    supervisor = Supervisor(monotonic=monotonic, sleep=asyncio.sleep)
    tasks = [
        supervisor.start(CONTROL_TASK, control.run),
        asyncio.create_task(_follow_caps(config, control, server)),
    ]
    await asyncio.sleep(server.end_s)
    server.finish()
    energy = server.gpu.energy_joules(server.end_s)
    inferences, batches = server.inferences, server.batches
    control.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    state = next(s for s in supervisor.tasks if s.name == CONTROL_TASK)
    last = observed.last
    return RunResult(
        config=config,
        policy_name=policy.name,
        trace=server.trace,
        inferences=inferences,
        batches=batches,
        reloads=triton.loads_asked,
        reload_failures=last.reload_failures if last is not None else 0,
        clock_changes=server.clock_changes,
        energy_joules=energy,
        cpu_s=0.0,
        clock_control_refused=gpu.refused,
        failsafe_s=observed.failsafe_s,
        loop_failures=state.restarts + (1 if state.retry_at_s is not None else 0),
        loop_error=state.last_error,
        quarantined_batch_sizes=last.quarantined_batch_sizes if last is not None else (),
        p99_latency_ms=server.latencies.run_p99_ms(),
        slo_misses=last.slo_misses if last is not None else 0,
        seconds_over_slo=last.seconds_over_slo if last is not None else 0.0,
    )


async def _follow_caps(config: RunConfig, control: ControlLoop, server: SimulatedServer) -> None:
    """Deliver each cap change at its time, as the cap follower does in the pod."""
    loop = asyncio.get_running_loop()
    for change in config.cap_changes:
        wait_s = change.at_s - loop.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        server.set_cap(change.cap_watts, loop.time())
        control.update_settings(replace(control.settings, cap_watts=change.cap_watts))
