"""Policies by name, as ``spec.power.policy`` spells them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capinfer_sidecar.policies.adaptive import Adaptive
from capinfer_sidecar.policies.base import Policy
from capinfer_sidecar.policies.batchdvfs import BatchDVFS
from capinfer_sidecar.policies.batchsizer import BatchSizer
from capinfer_sidecar.policies.dvfs import DVFS
from capinfer_sidecar.policies.static import Static

_FACTORIES: dict[str, Callable[..., Policy]] = {
    "Adaptive": Adaptive,
    "BatchSizer": BatchSizer,
    "DVFS": DVFS,
    "BatchDVFS": BatchDVFS,
    "Static": Static,
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
"""Every policy name, the default (Adaptive) first."""


def make_policy(name: str, **options: Any) -> Policy:
    """A fresh policy by its CRD name, with constructor options (e.g. ``batch_size=64``).

    Raises ValueError for an unknown name or options the policy does not take.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(POLICY_NAMES)}")
    try:
        return factory(**options)
    except TypeError as error:
        raise ValueError(f"policy {name}: invalid options {sorted(options)}: {error}") from error
