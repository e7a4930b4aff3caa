"""Who may steer which GPU: the agent's pure decisions over TokenReview, pods and allocations."""

from __future__ import annotations

from typing import Any

import pytest

from capinfer_node_agent.auth import (
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    Caller,
    PodInfo,
    RefusedError,
    caller_from_review,
    check_gpus,
    check_pod,
)
from capinfer_node_agent.ledger import Claim, Ledger, Owner, stale_claims

AUDIENCE = "capinfer-node-agent"


def review(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "authenticated": True,
        "audiences": [AUDIENCE],
        "user": {
            "username": "system:serviceaccount:ml:resnet-capinfer-sidecar",
            "extra": {POD_NAME_EXTRA: ["resnet-abc"], POD_UID_EXTRA: ["uid-1"]},
        },
    }
    status.update(changes)
    return status


def pod(**changes: Any) -> PodInfo:
    fields = {
        "namespace": "ml", "name": "resnet-abc", "uid": "uid-1", "node": "n0",
        "service_account": "resnet-capinfer-sidecar", "phase": "Running",
    }  # fmt: skip
    fields.update(changes)
    return PodInfo(**fields)


def test_a_pod_bound_token_names_its_pod() -> None:
    assert caller_from_review(review(), AUDIENCE) == Caller(
        "ml", "resnet-capinfer-sidecar", "resnet-abc", "uid-1"
    )


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (review(authenticated=False, error="expired"), "expired"),
        (review(audiences=["https://kubernetes.default.svc"]), "audience"),
        (review(user={"username": "alice"}), "not a ServiceAccount"),
        (
            review(user={"username": "system:serviceaccount:ml:x", "extra": {}}),
            "not bound to a pod",
        ),
    ],
)
def test_other_tokens_are_refused(status: dict[str, Any], why: str) -> None:
    with pytest.raises(RefusedError, match=why):
        caller_from_review(status, AUDIENCE)


@pytest.mark.parametrize(
    ("found", "why"),
    [
        (None, "does not run on node n0"),
        (pod(uid="uid-2"), "does not run on node n0"),  # same name, another pod
        (pod(node="n1"), "runs on node n1"),
        (pod(phase="Succeeded"), "has finished"),
        (pod(service_account="default"), "does not run as ServiceAccount"),
    ],
)
def test_the_pod_must_run_here_with_the_tokens_account(found: PodInfo | None, why: str) -> None:
    caller = caller_from_review(review(), AUDIENCE)
    with pytest.raises(RefusedError, match=why):
        check_pod(caller, found, "n0")


def test_only_allocated_and_managed_gpus_are_allowed() -> None:
    check_gpus(["GPU-a"], {"GPU-a", "GPU-b"}, {"GPU-a", "GPU-b", "GPU-c"}, "ml/p")
    with pytest.raises(RefusedError, match="does not hold GPU-c"):
        check_gpus(["GPU-a", "GPU-c"], {"GPU-a"}, {"GPU-a", "GPU-c"}, "ml/p")
    with pytest.raises(RefusedError, match="does not manage GPU-z"):
        check_gpus(["GPU-z"], {"GPU-z"}, {"GPU-a"}, "ml/p")
    with pytest.raises(RefusedError, match="no GPU"):
        check_gpus([], {"GPU-a"}, {"GPU-a"}, "ml/p")


def test_claims_are_stale_when_the_pod_is_gone_or_lost_the_gpu() -> None:
    alive, gone = Owner("ml", "a", "uid-a"), Owner("ml", "b", "uid-b")
    claims = {"GPU-1": Claim(alive, 900), "GPU-2": Claim(gone, 900), "GPU-3": Claim(alive)}
    allocations = {("ml", "a"): {"GPU-1"}}
    assert stale_claims(claims, {"uid-a"}, allocations) == {
        "GPU-2": "pod ml/b is gone",
        "GPU-3": "pod ml/a no longer holds GPU-3",
    }
    # The kubelet unreachable: the pods alone decide.
    assert stale_claims(claims, {"uid-a"}, None) == {"GPU-2": "pod ml/b is gone"}


def test_the_ledger_survives_a_restart(tmp_path: Any) -> None:
    ledger = Ledger.load(tmp_path / "ledger.json")
    ledger.claim_for("GPU-1", Owner("ml", "a", "uid-a")).clock_mhz = 1200
    ledger.claim_for("GPU-1", Owner("ml", "a", "uid-a")).limit_watts = 150.0
    ledger.save()
    again = Ledger.load(tmp_path / "ledger.json")
    assert again.claims == {"GPU-1": Claim(Owner("ml", "a", "uid-a"), 1200, 150.0)}
    again.release("GPU-1")
    assert Ledger.load(tmp_path / "ledger.json").claims == {}
