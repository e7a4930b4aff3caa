"""Following ``spec.power``: each new version is applied to the running loop, or rejected.

A version is checked whole before anything changes: parsed, its policy built, its
settings derived. One the sidecar cannot apply (an unknown policy, a value out of range,
an unreadable power file) is rejected with one error in the log, counted
(:attr:`SpecStatus.rejected_total`) and described (:attr:`SpecStatus.problem`, which the
status entry carries); the last good settings stay in force. The next valid version
clears the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from capinfer_sidecar.loop import ControlLoop
from capinfer_sidecar.policies.base import Policy, PowerSettings
from capinfer_sidecar.settings import (
    InvalidPowerSpecError,
    PowerSpec,
    parse_power_spec,
    policy_options,
)

log = logging.getLogger(__name__)

PowerVersion = Mapping[str, Any] | InvalidPowerSpecError
"""What a power source yields: ``spec.power``'s fields, or why they could not be read."""


@dataclass
class SpecStatus:
    """Whether the latest ``spec.power`` is in force; read by metrics and the status entry."""

    rejected_total: int = 0
    problem: str | None = None
    """Why the latest version is not in force; None when it is."""


class SpecFollower:
    """Applies each new ``spec.power`` to ``control``, all or nothing."""

    def __init__(
        self,
        control: ControlLoop,
        spec: PowerSpec,
        make_policy: Callable[[PowerSpec], Policy],
        make_settings: Callable[[PowerSpec], PowerSettings],
        *,
        status: SpecStatus | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.control = control
        self.spec = spec
        """The spec in force."""
        self.status = status if status is not None else SpecStatus()
        self._make_policy = make_policy
        self._make_settings = make_settings
        self._on_change = on_change
        self._pending: PowerVersion | None = None

    def apply(self, version: PowerVersion) -> bool:
        """Apply one version; False (the last good settings kept) when it is rejected."""
        try:
            if isinstance(version, InvalidPowerSpecError):
                raise version
            new = parse_power_spec(version)
            rebuild = new.policy != self.spec.policy or policy_options(new) != policy_options(
                self.spec
            )
            policy = self._make_policy(new) if rebuild else None
            settings = self._make_settings(new)
        except ValueError as error:  # InvalidPowerSpecError, or settings out of range
            self.status.rejected_total += 1
            self.status.problem = f"spec.power not applied, the last good settings stay: {error}"
            log.error(
                "spec.power rejected (%s); keeping cap %.0f W, policy %s",
                error, self.spec.cap_watts, self.spec.policy,
            )  # fmt: skip
            self._on_change()
            return False
        if policy is not None:
            self.control.switch_policy(policy)
        self.control.sample_interval_s = new.sample_interval_s
        self.control.set_latency_slo_ms(new.p99_slo_ms)
        self.control.update_settings(settings)
        if new != self.spec:
            log.info("spec.power applied: cap %.0f W, policy %s", new.cap_watts, new.policy)
        self.spec = new
        self.status.problem = None
        self._on_change()
        return True

    async def follow(self, versions: asyncio.Queue[PowerVersion]) -> None:
        """Apply versions as they come. A version whose application raised is tried again
        first when this runs again (under a supervisor), so no change is lost."""
        while True:
            if self._pending is None:
                self._pending = await versions.get()
            self.apply(self._pending)
            self._pending = None
