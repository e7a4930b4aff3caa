"""A fleet of simulated GPUs under one power budget, on virtual time.

Every member is one GPU running the production :class:`~capinfer_sidecar.loop.ControlLoop`
(its policy, reload governor and supervisor) against its own simulated GPU and Triton, as
:mod:`capinfer_sidecar.simloop` runs one; all of them share one virtual clock. A simulated
budget controller, as the operator's would, splits the budget with
:func:`capinfer_core.budget.allocate` every ``interval_s`` and at once when the budget
changes, from throughput curves built with :func:`~capinfer_core.budget.curve_from_measurements`
over what each member's policy has *measured* (never the simulator's truth), and publishes
caps through :class:`~capinfer_core.budget.CapLedger`'s transit rule.

A member's sidecar confirms a cap's generation once its loop runs under that cap, no reload
is in flight and its last ``confirm_samples`` peak readings were under the cap (what a pod's
sidecar would write to its status). Each member is one GPU (``gpus = 1``).

The curve the controller builds for a member (:func:`member_curve`):

- its policy's measured ``(peak, throughput)`` settings;
- when its policy says the load is light, or its recent peak readings stay well under its
  cap (less far at its top clock: its top setting), the cap does not bind: throughput is
  clipped at what it serves now and its uncapped draw is a little over its recent peak;
- when the cap binds, nothing above the cap was measured lately, so one optimistic point is
  added ``EXPLORE_STEP`` above it (the last measured slope continued): a member whose curve
  still climbs gets the chance to show it, and the next split corrects the guess.

When the budget falls under what the fleet may draw, the controller first cuts every member
by the same factor (a cut each policy follows with its clock alone, in milliseconds, where
a deep cut of one member may need a batch-size reload of seconds), and moves watts between
members with the real split only once those cuts are confirmed. It keeps
``reserve_fraction`` of the budget back, re-reads a member's curve only
once a whole window of its samples ran under its current, confirmed cap, and leaves a
member's cap alone when the new split moves it by less than ``DEADBAND``.

Metrics are on the simulator's true power: the fleet's summed true peak per sample
interval against the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from capinfer_core.budget import (
    BudgetMember,
    CapLedger,
    SplitPolicy,
    ThroughputCurve,
    allocate,
    curve_from_measurements,
)
from capinfer_sidecar.loop import ControlLoop, LoopSnapshot
from capinfer_sidecar.policies.base import Policy
from capinfer_sidecar.reloads import ReloadGovernor
from capinfer_sidecar.sim.fleet import FleetConfig, FleetMemberSpec
from capinfer_sidecar.sim.world import (
    LoopView,
    SimulatedGpu,
    SimulatedServer,
    SimulatedTriton,
    Trace,
)
from capinfer_sidecar.simloop import GPU_ERRORS, VirtualTimeLoop
from capinfer_sidecar.supervisor import Supervisor

RECENT_S = 2.0
"""The stretch of recent samples that says whether a member's cap binds."""
BINDS_FRACTION = 0.75
"""Recent peak readings under this fraction of the cap: it does not bind. (Closer to the
cap, a policy may be held below it by the step to its next setting.)"""
AT_TOP_BINDS_FRACTION = 0.92
"""At its top clock a policy is not held back by the next clock step: a smaller gap says
the cap does not bind."""
LIGHT_LOAD_STATE = "light-load"
"""The policy state that says batches form below the max batch size: the load, not the
cap, limits throughput."""
EXPLORE_STEP = 0.3
DEADBAND = 0.04
"""A member's cap moves only when the new split moves it by more than this fraction."""
"""How far above its cap (a fraction) a cap-bound member's curve is extended."""


@dataclass
class MemberRun:
    """One member during and after the run."""

    spec: FleetMemberSpec
    server: SimulatedServer
    policy: Policy
    recent: deque[LoopSnapshot]
    control: ControlLoop = field(init=False)
    caps: list[tuple[float, float]] = field(default_factory=list)
    """``(time, cap)`` each time a cap was published to it."""
    pending: list[tuple[int, float]] = field(default_factory=list)
    """Generations published and not yet confirmed."""
    confirmed: int = 0
    under_cap_samples: int = 0
    confirmations: int = 0


@dataclass(frozen=True)
class FleetResult:
    split: SplitPolicy
    config: FleetConfig
    traces: dict[str, Trace]
    caps: dict[str, list[tuple[float, float]]]
    inferences: dict[str, int]
    allocations: int
    confirmations: int
    cpu_s: float


def member_curve(
    policy: Policy,
    recent: Sequence[LoopSnapshot],
    cap_watts: float,
    max_watts: float,
    top_clock_mhz: int | None = None,
) -> tuple[ThroughputCurve | None, float]:
    """The member's curve and its demand (per-GPU watts it would draw now uncapped).
    ``top_clock_mhz``: the member's highest clock level (None: clocks not controlled)."""
    points = policy.measured_settings()
    if not recent:
        return curve_from_measurements(points, max_watts), max_watts
    recent_peak = max(s.power_watts for s in recent)
    light = sum(1 for s in recent if s.policy_state == LIGHT_LOAD_STATE) > len(recent) / 2
    at_top = top_clock_mhz is not None and all(
        s.sm_clock_mhz is not None and s.sm_clock_mhz >= top_clock_mhz for s in recent
    )
    slack = recent_peak < (AT_TOP_BINDS_FRACTION if at_top else BINDS_FRACTION) * cap_watts
    if light or slack:
        serving = sum(s.inferences_per_second for s in recent) / len(recent)
        clipped = [(w, min(ips, 1.02 * serving)) for w, ips in points]
        clipped.append((recent_peak, serving))
        uncapped = min(max_watts, 1.1 * recent_peak)
        return curve_from_measurements(clipped, uncapped), uncapped
    curve = curve_from_measurements(points, max_watts, max_points=7)
    if curve is None:
        return None, max_watts
    last_watts, last_ips = curve.cap_watts[-1], curve.peak_ips
    reach = min(max_watts, max(cap_watts, last_watts) * (1 + EXPLORE_STEP))
    if reach <= last_watts:
        return curve, max_watts
    if len(curve.cap_watts) >= 2:
        slope = (last_ips - curve.inferences_per_second[-2]) / (last_watts - curve.cap_watts[-2])
    else:
        slope = last_ips / last_watts
    extended = ThroughputCurve(
        (*curve.cap_watts, reach),
        (*curve.inferences_per_second, last_ips + slope * (reach - last_watts)),
        max_watts,
    )
    return extended, max_watts


def _steady_under(recent: Sequence[LoopSnapshot], cap_watts: float) -> bool:
    """A whole window of samples taken under this cap."""
    return len(recent) == recent_window(recent) and all(s.cap_watts == cap_watts for s in recent)


def recent_window(recent: Sequence[LoopSnapshot]) -> int:
    maxlen = getattr(recent, "maxlen", None)
    return maxlen if isinstance(maxlen, int) else len(recent)


def _with_deadband(
    current: dict[str, float], split: Mapping[str, float], budget_watts: float
) -> dict[str, float]:
    """The new split, except that a member whose cap would move by less than
    ``DEADBAND`` keeps its cap (each move restarts part of its policy's search) -- as long
    as the result still fits the budget."""
    kept = {
        key: current[key]
        if key in current and abs(cap - current[key]) <= DEADBAND * max(cap, 1.0)
        else cap
        for key, cap in split.items()
    }
    if math.fsum(kept.values()) <= budget_watts:
        return kept
    return dict(split)


def run_fleet(
    config: FleetConfig,
    split: SplitPolicy,
    make_policy: Callable[[FleetMemberSpec], Policy],
    progress: Callable[[float], None] | None = None,
) -> FleetResult:
    """Simulate the fleet under ``split``; ``progress`` sees the virtual time now and then."""
    started = time.process_time()
    quiet = logging.NullHandler()
    package_log = logging.getLogger("capinfer_sidecar")
    package_log.addHandler(quiet)
    loop = VirtualTimeLoop()
    try:
        result = loop.run_until_complete(_simulate(config, split, make_policy, progress))
    finally:
        loop.close()
        package_log.removeHandler(quiet)
    return replace(result, cpu_s=time.process_time() - started)


def _first_split(config: FleetConfig, split: SplitPolicy) -> dict[str, float]:
    members = [
        BudgetMember(m.name, 1, m.min_watts, m.max_watts, m.priority) for m in config.members
    ]
    budget = config.budget_watts * (1 - config.reserve_fraction)
    return dict(allocate(budget, members, split).caps_watts)


async def _simulate(
    config: FleetConfig,
    split: SplitPolicy,
    make_policy: Callable[[FleetMemberSpec], Policy],
    progress: Callable[[float], None] | None,
) -> FleetResult:
    event_loop = asyncio.get_running_loop()
    if not isinstance(event_loop, VirtualTimeLoop):
        raise TypeError("a fleet simulation runs on a VirtualTimeLoop")
    monotonic = event_loop.time
    first = _first_split(config, split)
    wake = asyncio.Event()
    runs: dict[str, MemberRun] = {}
    supervisor = Supervisor(monotonic=monotonic, sleep=asyncio.sleep)
    tasks: list[asyncio.Task[None]] = []
    for spec in config.members:
        member_config = replace(spec.config, cap_watts=max(first[spec.name], 1.0))
        policy = make_policy(spec)
        settings = member_config.settings(member_config.cap_watts)
        first_batch = copy.deepcopy(policy).start(settings, 0.0).knobs.batch_size
        server = SimulatedServer(member_config, max_batch_size=first_batch)
        gpu = SimulatedGpu(
            server, monotonic, GPU_ERRORS, member_config.faults, member_config.clocks
        )
        triton = SimulatedTriton(
            server, monotonic, asyncio.sleep, reload_s=member_config.effective_reload_s,
            faults=member_config.faults, seed=member_config.seed,
        )  # fmt: skip
        recent: deque[LoopSnapshot] = deque(
            maxlen=round(RECENT_S / member_config.sample_interval_s)
        )
        run = MemberRun(spec, server, policy, recent)
        run.caps.append((0.0, member_config.cap_watts))
        control = ControlLoop(
            policy=policy,
            settings=settings,
            gpu=gpu,
            server=triton,
            initial_batch_size=first_batch,
            monotonic=monotonic,
            sleep=event_loop.sleep,
            sample_interval_s=member_config.sample_interval_s,
            on_snapshot=_observer(run, config.confirm_samples, wake),
            reloads=ReloadGovernor(),
        )
        run.control = control
        runs[spec.name] = run
        tasks.append(supervisor.start(f"loop-{spec.name}", control.run))
    ledger = CapLedger({name: run.caps[0][1] for name, run in runs.items()}, {n: 1 for n in runs})
    counters = {"allocations": 0}
    tasks.append(
        asyncio.create_task(
            _controller(
                config,
                split=split,
                runs=runs,
                ledger=ledger,
                wake=wake,
                counters=counters,
                progress=progress,
            )
        )
    )
    end_s = min(run.server.end_s for run in runs.values())
    await asyncio.sleep(end_s)
    for run in runs.values():
        run.server.finish()
        run.control.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return FleetResult(
        split=split,
        config=config,
        traces={name: run.server.trace for name, run in runs.items()},
        caps={name: run.caps for name, run in runs.items()},
        inferences={name: run.server.inferences for name, run in runs.items()},
        allocations=counters["allocations"],
        confirmations=sum(run.confirmations for run in runs.values()),
        cpu_s=0.0,
    )


def _observer(
    run: MemberRun, confirm_samples: int, wake: asyncio.Event
) -> Callable[[LoopSnapshot], None]:
    """The member's sidecar: trace what the loop reports, and confirm caps it runs under."""

    def on_snapshot(snapshot: LoopSnapshot) -> None:
        run.recent.append(snapshot)
        run.server.observe(
            LoopView(
                power_watts=snapshot.power_watts,
                requested_batch_size=snapshot.requested_batch_size,
                reload_in_flight=snapshot.requested_batch_size != snapshot.batch_size,
                state=snapshot.policy_state,
            ),
            snapshot.now_s,
        )
        if not run.pending:
            return
        generation, cap = run.pending[-1]
        steady = snapshot.requested_batch_size == snapshot.batch_size
        if snapshot.cap_watts == cap and steady and snapshot.power_watts <= cap:
            run.under_cap_samples += 1
        else:
            run.under_cap_samples = 0
        if run.under_cap_samples >= confirm_samples:
            run.confirmed = generation
            run.pending.clear()
            run.confirmations += 1
            wake.set()

    return on_snapshot


async def _controller(
    config: FleetConfig,
    *,
    split: SplitPolicy,
    runs: dict[str, MemberRun],
    ledger: CapLedger,
    wake: asyncio.Event,
    counters: dict[str, int],
    progress: Callable[[float], None] | None,
) -> None:
    """The budget controller: split, then publish through the ledger."""
    loop = asyncio.get_running_loop()
    changes = [c.at_s for c in config.budget_changes]
    next_split_s = 0.0
    targets: dict[str, float] = dict(ledger.published)
    curves: dict[str, tuple[ThroughputCurve | None, float]] = {}
    cutting = False
    next_progress_s = 0.0
    while True:
        now = loop.time()
        budget = config.budget_at(now + 1e-9) * (1 - config.reserve_fraction)
        if budget < ledger.counted_watts:
            # The budget fell under what the fleet may draw: cut every member by the same
            # factor first, a cut each policy follows with its clock alone (milliseconds);
            # the real split moves watts between members once those cuts are confirmed.
            members = [
                BudgetMember(
                    name,
                    1,
                    run.spec.min_watts,
                    run.spec.max_watts,
                    demand_watts=ledger.published[name],
                )
                for name, run in runs.items()
            ]
            targets = dict(allocate(budget, members, SplitPolicy.PROPORTIONAL).caps_watts)
            cutting = True
        elif cutting and not any(run.pending for run in runs.values()):
            cutting = False
            next_split_s = now
        if cutting and now >= next_split_s - 1e-9:
            next_split_s = now + config.interval_s  # the split waits for the cuts
        elif now >= next_split_s - 1e-9:
            members = []
            for name, run in runs.items():
                cap = ledger.published[name]
                if run.pending or not _steady_under(run.recent, cap):
                    # Not yet running under its cap for a whole window: the old curve stands.
                    curve, demand = curves.get(name, (None, run.spec.max_watts))
                else:
                    levels = run.control.settings.clock_levels_mhz
                    curve, demand = member_curve(
                        run.policy, run.recent, cap, run.spec.max_watts,
                        levels[-1] if levels else None,
                    )  # fmt: skip
                    curves[name] = (curve, demand)
                members.append(
                    BudgetMember(
                        name, 1, run.spec.min_watts, run.spec.max_watts, run.spec.priority,
                        curve=curve, demand_watts=demand,
                    )
                )  # fmt: skip
            split_caps = allocate(budget, members, split).caps_watts
            targets = _with_deadband(targets, split_caps, budget)
            counters["allocations"] += 1
            next_split_s = now + config.interval_s
        for name, run in runs.items():
            if run.confirmed:
                ledger.confirm(name, run.confirmed)
        published = ledger.step(targets, budget)
        for name, cap in published.items():
            run = runs[name]
            if cap != run.control.settings.cap_watts and cap > 0:
                run.pending.append((ledger.generation[name], cap))
                run.under_cap_samples = 0
                run.caps.append((now, cap))
                run.control.update_settings(replace(run.control.settings, cap_watts=cap))
        if progress is not None and now >= next_progress_s:
            progress(now)
            next_progress_s = now + 10.0
        upcoming = [t for t in changes if t > now + 1e-9]
        wait_s = min([next_split_s, *upcoming[:1]]) - now
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=max(wait_s, 1e-6))
        if upcoming and loop.time() >= upcoming[0] - 1e-9:
            next_split_s = loop.time()  # a budget change: split again at once
