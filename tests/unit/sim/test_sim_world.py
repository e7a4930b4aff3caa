"""The simulated world: batch formation from counts, and the loop's two ports over it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capinfer_sidecar.sim.arrivals import PoissonArrivals
from capinfer_sidecar.sim.config import (
    ClockAccess,
    PoissonLoad,
    RateStep,
    RunConfig,
    SaturatingLoad,
)
from capinfer_sidecar.sim.faults import (
    Faults,
    PowerErrorKind,
    PowerErrorWindow,
    ReloadFaults,
    Window,
)
from capinfer_sidecar.sim.profiles import WorkloadProfile, load_profile_set
from capinfer_sidecar.sim.world import (
    GpuErrorTypes,
    ModelLoadError,
    SimulatedGpu,
    SimulatedServer,
    SimulatedTriton,
    TritonUnavailableError,
)
from capinfer_sidecar.simloop import VirtualTimeLoop

RES50 = load_profile_set("p40").workload("Res50", "caltech")


class TransientError(Exception):
    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"{operation}: {detail}")


class LostError(TransientError):
    pass


class RefusedError(TransientError):
    pass


ERRORS = GpuErrorTypes(transient=TransientError, lost=LostError, refused=RefusedError)


def config(profile: WorkloadProfile = RES50, **overrides: Any) -> RunConfig:
    base = RunConfig(profile=profile, cap_watts=200.0, duration_s=30.0, seed=5)
    return dataclasses.replace(base, **overrides)


def on_virtual_time(coroutine: Coroutine[Any, Any, Any]) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


# -- batch formation -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rate=st.floats(1.0, 20_000.0),
    changes=st.lists(
        st.tuples(st.floats(0.0, 10.0), st.sampled_from(RES50.gpu.batch_sizes)), max_size=8
    ),
    seed=st.integers(0, 10_000),
)
def test_batches_never_exceed_the_max_in_effect_and_inferences_conserve_arrivals(
    rate: float, changes: list[tuple[float, int]], seed: int
) -> None:
    load = PoissonLoad((RateStep(0.0, rate),))
    log: list[tuple[int, int]] = []
    server = SimulatedServer(
        config(load=load, duration_s=10.0, seed=seed), max_batch_size=4, batch_log=log
    )
    for at_s, size in sorted(changes):
        server.set_max_batch_size(size, at_s)
        server.set_clock(544 if size > 64 else None, at_s)
    counters = server.counters(10.0)
    assert all(1 <= batch <= largest for batch, largest in log)
    assert counters.inferences == sum(batch for batch, _ in log[: counters.batches])
    arrivals = server.arrivals
    assert isinstance(arrivals, PoissonArrivals)
    in_service = sum(batch for batch, _ in log[counters.batches :])
    assert arrivals.arrived == counters.inferences + in_service + (counters.queue_depth or 0)


@settings(max_examples=20, deadline=None)
@given(concurrency=st.integers(1, 600), largest=st.sampled_from(RES50.gpu.batch_sizes))
def test_a_closed_loop_forms_full_batches_of_what_its_clients_send(
    concurrency: int, largest: int
) -> None:
    log: list[tuple[int, int]] = []
    server = SimulatedServer(
        config(load=SaturatingLoad(concurrency), duration_s=5.0),
        max_batch_size=largest,
        batch_log=log,
    )
    counters = server.counters(5.0)
    assert {batch for batch, _ in log} == {min(concurrency, largest)}
    assert counters.queue_depth == concurrency - min(concurrency, largest)


def test_the_trace_is_on_its_own_grid_and_counts_true_power() -> None:
    server = SimulatedServer(config(duration_s=3.0), max_batch_size=64)
    server.set_clock(1531, 0.0)
    server.finish()
    trace = server.trace
    assert trace.time_s == pytest.approx([0.1 * (i + 1) for i in range(30)])
    assert max(trace.true_peak_watts) <= RES50.peak_power_watts(64, 1531) + 1e-9
    assert sum(trace.throughput_ips) * 0.1 == pytest.approx(server.inferences, abs=64)


# -- the GPU port ----------------------------------------------------------------------------


def test_the_gpu_port_reads_power_and_energy_and_sets_clocks() -> None:
    server = SimulatedServer(config(), max_batch_size=64)
    now = [0.0]
    gpu = SimulatedGpu(server, lambda: now[0], ERRORS)
    gpu.set_locked_sm_clock_mhz(835)
    now[0] = 2.0
    reading = gpu.power_watts()
    assert abs(reading - RES50.peak_power_watts(64, 835)) < 10 * RES50.gpu.power_noise_watts + 20
    assert gpu.energy_joules() > 0
    assert server.gpu.clock_mhz(2.0) == 835
    gpu.reset_sm_clock()
    now[0] = 2.1
    assert server.gpu.clock_mhz(2.1) is None


def test_the_gpu_port_fails_as_nvml_does_inside_its_fault_windows() -> None:
    faults = Faults(
        power_errors=(
            PowerErrorWindow(1.0, 1.0, PowerErrorKind.TRANSIENT),
            PowerErrorWindow(3.0, 1.0, PowerErrorKind.LOST),
        ),
        clock_errors=(Window(5.0, 1.0),),
    )
    server = SimulatedServer(config(), max_batch_size=16)
    now = [0.5]
    gpu = SimulatedGpu(server, lambda: now[0], ERRORS, faults)
    assert gpu.power_watts() > 0
    now[0] = 1.5
    with pytest.raises(TransientError, match="NVML_ERROR_UNKNOWN") as transient:
        gpu.power_watts()
    assert type(transient.value) is TransientError
    with pytest.raises(TransientError):
        gpu.energy_joules()
    gpu.set_locked_sm_clock_mhz(949)  # reads fail, clocks still work
    now[0] = 3.5
    with pytest.raises(LostError, match="GPU_IS_LOST"):
        gpu.power_watts()
    with pytest.raises(LostError):
        gpu.set_locked_sm_clock_mhz(949)
    now[0] = 5.5
    assert gpu.power_watts() > 0
    with pytest.raises(TransientError):
        gpu.set_locked_sm_clock_mhz(544)
    now[0] = 6.0
    gpu.set_locked_sm_clock_mhz(544)
    assert gpu.failed_reads == 3


def test_refused_clocks_raise_the_refusal() -> None:
    server = SimulatedServer(config(), max_batch_size=16)
    gpu = SimulatedGpu(server, lambda: 0.0, ERRORS, clocks=ClockAccess.REFUSED)
    with pytest.raises(RefusedError, match="NO_PERMISSION"):
        gpu.set_locked_sm_clock_mhz(949)
    assert gpu.refused
    assert server.gpu.clock_mhz(1.0) is None


# -- the Triton port -------------------------------------------------------------------------


def test_a_reload_takes_its_time_while_the_old_size_serves() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        server = SimulatedServer(config(), max_batch_size=16)
        triton = SimulatedTriton(server, loop.time, reload_s=1.5)
        reload = asyncio.create_task(triton.apply_max_batch_size(64))
        await asyncio.sleep(1.4)
        during = server.max_batch_size
        await reload
        return [during, server.max_batch_size, round(loop.time() * 10)]

    assert on_virtual_time(scenario()) == [16, 64, 15]


def test_failing_and_random_reload_faults() -> None:
    async def scenario() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        server = SimulatedServer(config(), max_batch_size=16)
        faults = Faults(reloads=ReloadFaults(failing_sizes=(256,), probability=0.5))
        triton = SimulatedTriton(server, loop.time, reload_s=1.0, faults=faults, seed=9)
        outcomes = []
        for size in [256, 64, 64, 64, 64, 64, 64, 64, 64]:
            try:
                await triton.apply_max_batch_size(size)
                outcomes.append("ok")
            except ModelLoadError:
                outcomes.append("failed")
        return outcomes, triton.loads_failed

    outcomes, failed = on_virtual_time(scenario())
    assert outcomes[0] == "failed"
    assert "ok" in outcomes[1:] and "failed" in outcomes[1:]  # p = 0.5, seeded
    assert failed == outcomes.count("failed")


def test_triton_outages_refuse_statistics_and_break_a_load_in_flight() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        server = SimulatedServer(config(), max_batch_size=16)
        faults = Faults(triton_outages=(Window(2.0, 3.0),))
        triton = SimulatedTriton(server, loop.time, reload_s=1.5, faults=faults)
        seen = [f"{(await triton.counters()).inferences > 0}@{loop.time():g}"]
        await asyncio.sleep(0.9)
        try:
            await triton.apply_max_batch_size(64)  # 0.9 s to 2.4 s: Triton goes down
        except TritonUnavailableError as error:
            seen.append(f"load: {error}")
        try:
            await triton.counters()
        except TritonUnavailableError:
            seen.append("counters refused")
        await asyncio.sleep(3.0)
        seen.append(f"{server.max_batch_size} {(await triton.counters()).batches > 0}")
        return seen

    assert on_virtual_time(scenario()) == [
        "False@0",
        "load: load model: the connection was lost during the load",
        "counters refused",
        "16 True",
    ]


def test_a_hanging_load_never_answers() -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        server = SimulatedServer(config(), max_batch_size=16)
        faults = Faults(reloads=ReloadFaults(hanging_sizes=(128,)))
        triton = SimulatedTriton(server, loop.time, reload_s=1.0, faults=faults)
        load = asyncio.create_task(triton.apply_max_batch_size(128))
        await asyncio.sleep(3600.0)
        hanging = not load.done()
        load.cancel()
        return hanging and server.max_batch_size == 16

    assert on_virtual_time(scenario())
