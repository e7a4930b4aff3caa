"""Pure power-cap controllers: observations in, knob settings out, time passed in."""

from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.policies.registry import POLICY_NAMES, make_policy

__all__ = [
    "POLICY_NAMES",
    "Decision",
    "Knobs",
    "Observation",
    "Policy",
    "PowerSettings",
    "make_policy",
]
