"""Shared test helpers for the simulator: a scripted policy and a small hand-made profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.sim.profiles import ProfileSet, parse_profile_set


@dataclass
class Scripted(Policy):
    """Asks for ``first`` at start and for each scheduled pair from its time on; records
    everything it is told."""

    first: Knobs
    schedule: list[tuple[float, Knobs]] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    settings_seen: list[tuple[float, PowerSettings]] = field(default_factory=list)
    clock_disabled: list[str] = field(default_factory=list)
    name: str = "Scripted"

    def _wanted(self, now_s: float) -> Decision:
        knobs = self.first
        for at_s, scheduled in self.schedule:
            if now_s >= at_s:
                knobs = scheduled
        if self.clock_disabled:
            knobs = Knobs(knobs.batch_size, None)
        return Decision(knobs, reason="scripted", state="scripted")

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        self.settings_seen.append((now_s, settings))
        return self._wanted(now_s)

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        self.settings_seen.append((now_s, settings))
        return self._wanted(now_s)

    def step(self, observation: Observation) -> Decision:
        self.observations.append(observation)
        return self._wanted(observation.now_s)

    def disable_clock_control(self, reason: str) -> None:
        self.clock_disabled.append(reason)


def tiny_measured_profile(jitter_fraction: float = 0.0, noise_watts: float = 0.0) -> ProfileSet:
    """Two batch sizes at two clocks, numbers chosen to check the oracle by hand.

    | batch | clock | latency | busy power | throughput (prep 0.01 s)  |
    |   1   | 1000  | 0.04 s  | 100 W      | 1 / 0.05  = 20/s          |
    |   1   | 2000  | 0.02 s  | 150 W      | 1 / 0.03  = 33.3/s        |
    |   4   | 1000  | 0.08 s  | 140 W      | 4 / 0.09  = 44.4/s        |
    |   4   | 2000  | 0.04 s  | 210 W      | 4 / 0.05  = 80/s          |
    """
    rows = [(1, 1000, 0.04, 100), (1, 2000, 0.02, 150), (4, 1000, 0.08, 140), (4, 2000, 0.04, 210)]
    document: dict[str, Any] = {
        "kind": "measured",
        "gpu": {
            "name": "tiny",
            "power_limit_watts": 300,
            "idle_floor_watts": 20,
            "loaded_idle_watts": 50,
            "clock_levels_mhz": [1000, 2000],
            "default_clock_mhz": 2000,
            "batch_sizes": [1, 4],
            "clock_change_s": 0.005,
            "reload_s": 1.0,
            "power_noise_watts": noise_watts,
            "power_jitter_fraction": jitter_fraction,
        },
        "workloads": [
            {
                "dnn": "toy",
                "dataset": "tensor",
                "points": [
                    {"batch": b, "clock_mhz": c, "latency_s": lat, "prep_s": 0.01, "busy_watts": w}
                    for b, c, lat, w in rows
                ],
            }
        ],
    }
    return parse_profile_set(yaml.safe_load(yaml.safe_dump(document)), "tiny", "tiny.yaml")
