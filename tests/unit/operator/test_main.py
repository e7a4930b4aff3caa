"""The operator's settings: flags first, then the environment, then the defaults."""

from __future__ import annotations

import pytest

from capinfer_operator.main import build_parser, kopf_options, start_priority


def options(*argv: str, **environ: str) -> dict[str, object]:
    return kopf_options(build_parser().parse_args(list(argv)), environ)


def test_defaults_watch_every_namespace_alone() -> None:
    assert options() == {
        "clusterwide": True,
        "namespaces": [],
        "standalone": True,
        "peering_name": None,
        "liveness_endpoint": None,
    }


def test_namespaces_from_flags_win_over_the_environment() -> None:
    from_env = options(CAPINFER_WATCH_NAMESPACES="ml, team-*")
    assert (from_env["clusterwide"], from_env["namespaces"]) == (False, ["ml", "team-*"])
    flagged = options("-n", "prod", "-n", "staging", CAPINFER_WATCH_NAMESPACES="ml")
    assert flagged["namespaces"] == ["prod", "staging"]
    everywhere = options("--all-namespaces", CAPINFER_WATCH_NAMESPACES="ml")
    assert (everywhere["clusterwide"], everywhere["namespaces"]) == (True, [])


def test_peering_for_high_availability() -> None:
    peered = options("--peering", "capinfer")
    assert (peered["standalone"], peered["peering_name"]) == (False, "capinfer")
    assert options(CAPINFER_PEERING="ha")["peering_name"] == "ha"
    assert options("--standalone", CAPINFER_PEERING="ha")["standalone"] is True


def test_the_replica_started_first_leads() -> None:
    earlier = start_priority(1_800_000_000_000_000_000, 999)
    later = start_priority(1_800_000_000_001_000_000, 0)  # one millisecond later
    assert earlier > later > 0
    assert start_priority(5_000_000, 1) != start_priority(5_000_000, 2)
    assert start_priority(4_102_444_800 * 10**9, 999) < 2**53  # 2100: still exact in JSON


def test_a_peered_replica_gets_a_priority_unless_one_is_given() -> None:
    assert "priority" not in options()
    assert isinstance(options("--peering", "capinfer")["priority"], int)
    assert options("--peering", "x", "--peering-priority", "7")["priority"] == 7


def test_peering_and_standalone_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--peering", "x", "--standalone"])


def test_liveness_endpoint() -> None:
    url = "http://0.0.0.0:8080/healthz"
    assert options("--liveness", url)["liveness_endpoint"] == url
