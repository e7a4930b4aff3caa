"""The board power limit at the cap, through the node agent, and what the status says of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from capinfer_sidecar.gpu.agent import NodeAgentUnreachableError, PowerLimitResult
from capinfer_sidecar.loop import LoopSnapshot
from capinfer_sidecar.main import Backstop
from capinfer_sidecar.status import pod_status_entry


def snapshot(clock_control: bool) -> LoopSnapshot:
    return LoopSnapshot(
        now_s=1.0, cap_watts=100.0, power_watts=95.0, mean_power_watts=90.0,
        energy_joules=1.0, batch_size=8, requested_batch_size=8,
        sm_clock_mhz=1200 if clock_control else None, inferences_per_second=10.0,
        seconds_over_cap=0.0, violations=0, reloads=0, reload_failures=0,
        policy="Adaptive", policy_state="settled", reason="r",
        clock_control=clock_control, degraded=None,
    )  # fmt: skip


@dataclass
class FakeAgent:
    """Answers as the agent does for a card whose limits are [125, 250] W."""

    down: bool = False
    asked: list[float] = field(default_factory=list)

    def set_power_limit(self, gpus: Sequence[str], watts: float) -> list[PowerLimitResult]:
        self.asked.append(watts)
        if self.down:
            raise NodeAgentUnreachableError("set-power-limit", "connection refused")
        enforced = min(max(watts, 125.0), 250.0)
        return [PowerLimitResult(gpu, watts, enforced, 125.0, 250.0) for gpu in gpus]


def test_the_limit_follows_the_cap_and_a_cap_below_the_minimum_is_said() -> None:
    agent, cap = FakeAgent(), [150.0]
    backstop = Backstop(agent, lambda: cap[0], ["GPU-a", "GPU-b"])  # type: ignore[arg-type]
    backstop.assert_once()
    assert (backstop.enforced_watts, backstop.message) == (150.0, None)
    cap[0] = 100.0
    backstop.assert_once()
    assert backstop.enforced_watts == 125.0
    assert backstop.message is not None and "below the card's minimum power limit 125 W" in (
        backstop.message
    )
    agent.down = True
    backstop.assert_once()
    assert backstop.enforced_watts is None
    assert backstop.message is not None and "could not be set" in backstop.message
    assert agent.asked == [150.0, 100.0, 100.0]


def test_without_an_agent_the_status_says_nothing_backs_the_cap() -> None:
    backstop = Backstop(None, lambda: 150.0)
    backstop.assert_once()
    assert backstop.message is not None and "no node agent" in backstop.message


def test_the_status_entry_carries_the_limit_and_why_clocks_are_off() -> None:
    entry = pod_status_entry(
        "p", ["GPU-a"], snapshot(clock_control=False),
        clock_message="no node agent on this node: batch size alone",
        power_limit_watts=125.04, backstop_message="below the minimum",
    )  # fmt: skip
    assert entry["clockControlMessage"] == "no node agent on this node: batch size alone"
    assert entry["powerLimitWatts"] == 125.0
    assert entry["backstopMessage"] == "below the minimum"
    with_clocks = pod_status_entry(
        "p", ["GPU-a"], snapshot(clock_control=True), clock_message="stale"
    )
    assert "clockControlMessage" not in with_clocks
