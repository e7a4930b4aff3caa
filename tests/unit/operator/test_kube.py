"""How the adapter reads the API server's answers (no cluster: errors as the client raises them)."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from capinfer_operator.kube import api_message, is_transient, namespace_terminating


def error(status: int, body: dict[str, object] | None = None) -> ApiException:
    raised = ApiException(status=status, reason="Reason")
    raised.body = json.dumps(body) if body is not None else None
    return raised


TERMINATING = {
    "kind": "Status",
    "message": 'services "x" is forbidden: unable to create new content in namespace t'
    " because it is being terminated",
    "reason": "Forbidden",
    "details": {"causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
    "code": 403,
}


def test_a_terminating_namespace_is_told_apart_from_missing_permissions() -> None:
    assert namespace_terminating(error(403, TERMINATING))
    rbac = {"kind": "Status", "message": 'roles is forbidden: User "x" cannot create', "code": 403}
    assert not namespace_terminating(error(403, rbac))
    assert not namespace_terminating(error(403))


def test_the_api_servers_own_words_name_the_field() -> None:
    invalid = {"message": 'Deployment.apps "x" is invalid: spec.template...path: Required value'}
    assert api_message(error(422, invalid)) == invalid["message"]
    assert api_message(error(500)) == "500 Reason"
    raised = ApiException(status=502, reason="Bad Gateway")
    raised.body = "<html>not json</html>"
    assert api_message(raised) == "502 Bad Gateway"


@pytest.mark.parametrize(
    ("status", "transient"), [(409, True), (429, True), (500, True), (503, True), (422, False),
                              (403, False), (404, False), (400, False)],
)  # fmt: skip
def test_what_is_worth_a_retry(status: int, transient: bool) -> None:
    assert is_transient(error(status)) is transient
