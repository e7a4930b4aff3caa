"""What the Events say when a spec changes."""

from __future__ import annotations

from typing import Any

from capinfer_operator.changes import (
    changed_fields,
    is_live,
    live_change_message,
    rolling_change_message,
)

OLD: dict[str, Any] = {
    "replicas": 2,
    "triton": {"image": "tritonserver:24.08", "model": "resnet50"},
    "power": {"capWatts": 180, "policy": "Adaptive", "clockControl": {"enabled": True}},
}


def with_changes(**sections: dict[str, Any]) -> dict[str, Any]:
    new = {key: dict(value) if isinstance(value, dict) else value for key, value in OLD.items()}
    for section, values in sections.items():
        new[section] = {**new[section], **values}
    return new


def test_changed_fields_are_dotted_leaves() -> None:
    new = with_changes(power={"capWatts": 120, "band": 0.9})
    assert changed_fields(OLD, new) == ["spec.power.band", "spec.power.capWatts"]
    assert changed_fields(OLD, OLD) == []


def test_every_power_field_is_live() -> None:
    assert is_live("spec.power.capWatts")
    assert is_live("spec.power.clockControl.maxMHz")
    assert is_live("spec.power.clockControl.enabled")  # no longer a privilege change
    assert not is_live("spec.triton.image")
    assert not is_live("spec.powerline")


def test_a_cap_change_is_announced_with_old_and_new_values() -> None:
    message = live_change_message(OLD, with_changes(power={"capWatts": 120}))
    assert message is not None
    assert "spec.power.capWatts 180 -> 120" in message
    assert "no pod restarts" in message
    assert live_change_message(OLD, with_changes(triton={"image": "x"})) is None


def test_a_rollout_names_what_changed() -> None:
    new = with_changes(triton={"image": "tritonserver:24.09"}, power={"capWatts": 90})
    message = rolling_change_message(OLD, new)
    assert "spec.triton.image" in message
    assert "capWatts" not in message
    assert "pods are being replaced" in rolling_change_message(None, new)
