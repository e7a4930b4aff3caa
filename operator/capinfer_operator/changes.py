"""Pure: what changed between two specs, in words a user reads in ``kubectl describe``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Power fields are all live: the sidecars watch the object. (clockControl.enabled once
# changed the sidecar's privileges; the node agent holds those now.)
TEMPLATE_POWER_FIELDS: tuple[str, ...] = ()


def changed_fields(old: Any, new: Any, path: str = "spec") -> list[str]:
    """Dotted paths of the leaves that differ; lists count as leaves."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            found += changed_fields(old.get(key), new.get(key), f"{path}.{key}")
        return found
    return [] if old == new else [path]


def is_live(path: str) -> bool:
    """A change the sidecars apply in place, without restarting the pods."""
    in_power = path == "spec.power" or path.startswith("spec.power.")
    return in_power and not any(
        path == field or path.startswith(f"{field}.") for field in TEMPLATE_POWER_FIELDS
    )


def _lookup(spec: Any, path: str) -> Any:
    node = spec
    for key in path.split(".")[1:]:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _shown(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def live_change_message(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """``spec.power.capWatts 180 -> 120, ...``; None when no live field changed."""
    paths = [p for p in changed_fields(old, new) if is_live(p)]
    if not paths:
        return None
    parts = [f"{p} {_shown(_lookup(old, p))} -> {_shown(_lookup(new, p))}" for p in paths]
    return f"{', '.join(parts)}: the sidecars apply it live, no pod restarts"


def rolling_change_message(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """Why the pods roll, naming the fields when the old spec is known."""
    if old is None:
        return "the pod template changed: pods are being replaced"
    paths = [p for p in changed_fields(old, new) if not is_live(p) and p != "spec.replicas"]
    named = ", ".join(paths) if paths else "the operator's rendering"
    return f"the pod template changed ({named}): pods are being replaced"
