"""Invariants every policy keeps, on random synthetic GPUs, caps and cap changes."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from toy_plant import P40_CLOCKS_MHZ, PAPER_LADDER, Run, ToyGpu, drive

from capinfer_sidecar.policies import POLICY_NAMES, PowerSettings, make_policy
from capinfer_sidecar.policies.batchdvfs import BatchDVFS
from capinfer_sidecar.policies.batchsizer import BatchSizer
from capinfer_sidecar.policies.dvfs import DVFS


@dataclass(frozen=True)
class Scenario:
    gpu: ToyGpu
    settings: PowerSettings
    cap_changes: dict[float, float]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    ladder = tuple(
        sorted(draw(st.sets(st.sampled_from(PAPER_LADDER), min_size=1, max_size=len(PAPER_LADDER))))
    )
    clocks = draw(st.sampled_from([P40_CLOCKS_MHZ, (), (600, 900, 1200), P40_CLOCKS_MHZ[::3]]))
    idle = draw(st.floats(30.0, 80.0))
    steps = draw(st.lists(st.floats(0.0, 40.0), min_size=len(ladder), max_size=len(ladder)))
    peaks: dict[int, float] = {}
    level = idle + draw(st.floats(1.0, 30.0))
    for batch, step in zip(ladder, steps, strict=True):
        level += step
        peaks[batch] = level
    gpu = ToyGpu(
        peaks,
        idle_watts=idle,
        top_clock_mhz=clocks[-1] if clocks else 1500,
        reload_s=draw(st.floats(0.1, 4.0)),
        per_item_s=draw(st.floats(0.0001, 0.005)),
        batch_base_s=draw(st.floats(0.001, 0.05)),
        noise_watts=draw(st.floats(0.0, 3.0)),
        seed=draw(st.integers(0, 1000)),
    )
    cap = draw(st.floats(idle + 5.0, 320.0))
    power = PowerSettings(cap_watts=cap, batch_sizes=ladder, clock_levels_mhz=clocks)
    changes: dict[float, float] = {}
    if draw(st.booleans()):
        changes[draw(st.floats(2.0, 18.0)).__round__(1)] = draw(st.floats(idle + 5.0, 320.0))
    return Scenario(gpu, power, changes)


def run_policy(name: str, scenario: Scenario) -> Run:
    return drive(
        make_policy(name),
        scenario.gpu,
        scenario.settings,
        duration_s=20.0,
        cap_changes=scenario.cap_changes,
    )


SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(scenario=scenarios(), name=st.sampled_from(POLICY_NAMES))
def test_settings_stay_on_the_ladders(scenario: Scenario, name: str) -> None:
    run = run_policy(name, scenario)
    ladder = scenario.settings.batch_sizes
    clocks = scenario.settings.clock_levels_mhz
    for decision in run.decisions:
        assert decision.knobs.batch_size in ladder
        if clocks:
            assert decision.knobs.sm_clock_mhz is None or decision.knobs.sm_clock_mhz in clocks
        else:
            assert decision.knobs.sm_clock_mhz is None, "a clock was set without clock control"
        assert decision.reason
        assert decision.state


@SLOW
@given(scenario=scenarios(), name=st.sampled_from(POLICY_NAMES))
def test_never_more_batch_or_clock_while_over_the_cap(scenario: Scenario, name: str) -> None:
    run = run_policy(name, scenario)
    over = sum(o.power_watts > c for o, c in zip(run.observations, run.caps_watts, strict=True))
    event("some samples over the cap" if over else "never over the cap")
    for observation, before, decision, cap in zip(
        run.observations, run.wanted_before, run.decisions, run.caps_watts, strict=True
    ):
        if observation.power_watts <= cap:
            continue
        assert decision.knobs.batch_size <= before.batch_size
        if decision.knobs.sm_clock_mhz is not None and before.sm_clock_mhz is not None:
            assert decision.knobs.sm_clock_mhz <= before.sm_clock_mhz


@SLOW
@given(scenario=scenarios(), name=st.sampled_from(POLICY_NAMES))
def test_the_same_inputs_give_the_same_decisions(scenario: Scenario, name: str) -> None:
    assert run_policy(name, scenario).decisions == run_policy(name, scenario).decisions


@SLOW
@given(
    scenario=scenarios(),
    policy_type=st.sampled_from([BatchSizer, DVFS, BatchDVFS]),
    seconds=st.floats(1.0, 20.0),
    new_cap=st.floats(40.0, 320.0),
)
def test_a_cap_change_reopens_the_search(
    scenario: Scenario,
    policy_type: type[BatchSizer] | type[DVFS] | type[BatchDVFS],
    seconds: float,
    new_cap: float,
) -> None:
    policy = policy_type()
    drive(policy, scenario.gpu, scenario.settings, duration_s=round(seconds, 1))
    if new_cap == scenario.settings.cap_watts:
        return
    moved = PowerSettings(
        cap_watts=new_cap,
        batch_sizes=scenario.settings.batch_sizes,
        clock_levels_mhz=scenario.settings.clock_levels_mhz,
    )
    decision = policy.update_settings(moved, seconds)
    search = policy.search
    assert (search.low, search.high) == (0, search.size - 1)
    assert decision.state == "searching"
    assert "search restarts" in decision.reason
