"""Following spec.power: a version that cannot be applied leaves the last good one in force."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from loop_fakes import FakeGpu, FakeServer, FakeTime, ScriptedPolicy, make_loop

from capinfer_sidecar.follower import PowerVersion, SpecFollower, SpecStatus
from capinfer_sidecar.policies import make_policy
from capinfer_sidecar.policies.base import Knobs, Policy, PowerSettings
from capinfer_sidecar.settings import (
    InvalidPowerSpecError,
    PowerSpec,
    parse_power_spec,
    to_power_settings,
)

CLOCKS_MHZ = (600, 900, 1200)


def policy_for(spec: PowerSpec) -> Policy:
    try:
        return make_policy(spec.policy)
    except ValueError as error:
        raise InvalidPowerSpecError(f"spec.power.policy: {error}") from error


def settings_for(spec: PowerSpec) -> PowerSettings:
    return to_power_settings(spec, CLOCKS_MHZ, True)


def follower(changes: list[str] | None = None) -> tuple[SpecFollower, SpecStatus]:
    spec = parse_power_spec({"capWatts": 200, "policy": "Static"})
    loop, _ = make_loop(ScriptedPolicy(Knobs(4, 900)), FakeGpu([150.0]), FakeServer(), FakeTime())
    loop.update_settings(settings_for(spec))
    status = SpecStatus()
    on_change = (lambda: changes.append("published")) if changes is not None else (lambda: None)
    follows = SpecFollower(loop, spec, policy_for, settings_for, status=status, on_change=on_change)
    return follows, status


async def test_an_unknown_policy_is_rejected_and_later_changes_still_apply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published: list[str] = []
    f, status = follower(published)
    assert not f.apply({"capWatts": 120, "policy": "Adptive"})
    assert f.control.settings.cap_watts == 200  # the last good settings stay
    assert f.spec.policy == "Static" and f.control.policy.name == "scripted"
    assert status.rejected_total == 1
    assert status.problem is not None and "Adptive" in status.problem
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Adptive" in errors[0].getMessage()
    assert published == ["published"]  # the problem reaches the status at once

    assert f.apply({"capWatts": 120, "policy": "Adaptive"})
    assert f.control.settings.cap_watts == 120
    assert f.control.policy.name == "Adaptive"
    assert status.problem is None and status.rejected_total == 1


@pytest.mark.parametrize(
    "version",
    [
        {"capWatts": -5},
        {"capWatts": 150, "band": 1.5},
        {"capWatts": 150, "batchSizes": [8, 4]},
        {"capWatts": 150, "clockControl": {"minMHz": 2000, "maxMHz": 1000}},
        InvalidPowerSpecError("power.yaml: mapping values are not allowed here"),
    ],
)
def test_bad_values_are_rejected_whole(version: PowerVersion) -> None:
    f, status = follower()
    before = f.control.settings
    assert not f.apply(version)
    assert f.control.settings == before
    assert status.rejected_total == 1 and status.problem is not None


async def test_follow_survives_a_bad_version_in_the_stream() -> None:
    f, status = follower()
    both_seen = asyncio.Event()
    seen: list[bool] = []

    def on_change() -> None:
        seen.append(True)
        if len(seen) == 2:
            both_seen.set()

    f._on_change = on_change
    versions: asyncio.Queue[PowerVersion] = asyncio.Queue()
    for version in ({"capWatts": 150, "policy": "Adptive"}, {"capWatts": 140, "policy": "DVFS"}):
        versions.put_nowait(version)
    task = asyncio.create_task(f.follow(versions))
    await asyncio.wait_for(both_seen.wait(), timeout=5)
    task.cancel()
    assert f.control.settings.cap_watts == 140 and f.control.policy.name == "DVFS"
    assert status.rejected_total == 1 and status.problem is None


async def test_a_version_whose_application_raised_is_retried_on_restart() -> None:
    f, _ = follower()
    calls: list[Any] = []
    original = f.control.update_settings

    def flaky(settings: PowerSettings) -> None:
        calls.append(settings)
        if len(calls) == 1:
            raise RuntimeError("a policy bug")
        original(settings)

    f.control.update_settings = flaky  # type: ignore[method-assign]
    versions: asyncio.Queue[PowerVersion] = asyncio.Queue()
    versions.put_nowait({"capWatts": 130, "policy": "Static"})
    with pytest.raises(RuntimeError):
        await f.follow(versions)
    # A supervisor starts it again: the same version comes first.
    task = asyncio.create_task(f.follow(versions))
    await asyncio.sleep(0)
    task.cancel()
    assert f.control.settings.cap_watts == 130 and len(calls) == 2
