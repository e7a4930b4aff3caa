"""Policies by their CRD names."""

from __future__ import annotations

import pytest

from capinfer_sidecar.policies import POLICY_NAMES, PowerSettings, make_policy
from capinfer_sidecar.policies.adaptive import Adaptive
from capinfer_sidecar.policies.static import Static

SETTINGS = PowerSettings(cap_watts=150.0, batch_sizes=(1, 2, 4, 8), clock_levels_mhz=(500, 900))


def test_names_are_the_crd_enum_with_the_default_first() -> None:
    assert POLICY_NAMES == ("Adaptive", "BatchSizer", "DVFS", "BatchDVFS", "Static")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_name_builds_a_fresh_working_policy(name: str) -> None:
    first, second = make_policy(name), make_policy(name)
    assert first is not second
    assert first.name == name
    decision = first.start(SETTINGS, 0.0)
    assert decision.knobs.batch_size in SETTINGS.batch_sizes
    assert decision.reason


def test_options_reach_the_policy() -> None:
    static = make_policy("Static", batch_size=4, clock_mhz=900)
    assert isinstance(static, Static)
    assert static.start(SETTINGS, 0.0).knobs.batch_size == 4
    adaptive = make_policy("Adaptive", max_beneficial_batch=4, headroom=0.01)
    assert isinstance(adaptive, Adaptive)
    assert adaptive.tuning.max_beneficial_batch == 4


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown policy 'adaptive'.*Adaptive, BatchSizer"):
        make_policy("adaptive")


def test_an_unknown_option_is_refused_with_the_policy_named() -> None:
    with pytest.raises(ValueError, match="policy DVFS: invalid options"):
        make_policy("DVFS", cap=3)
