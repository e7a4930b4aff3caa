"""The log scan the integration tests use to fail on any refusal by the API server."""

from __future__ import annotations

from apirefusals import refusals_in

STAMP = "2026-11-23 03:11:42,403 level=DEBUG"
OK_PATCH = (
    f'{STAMP} logger=urllib3.connectionpool https://127.0.0.1:40329 "PATCH '
    "/apis/apps/v1/namespaces/ns-403/deployments/forbidden-x?fieldManager=capinfer-operator"
    '&force=True HTTP/1.1" 200 None'
)


def test_numbers_and_names_that_look_like_refusals_are_not() -> None:
    lines = [
        OK_PATCH,
        f"{STAMP} logger=kopf.objects [ns-403/forbidden] applied Deployment/forbidden-403",
        f"{STAMP} logger=capinfer_sidecar listening on 127.0.0.1:40403",
        "2026-11-23 03:11:42,001 level=DEBUG logger=urllib3.connectionpool "
        'https://127.0.0.1:6443 "GET /api/v1/namespaces/a/pods?limit=403 HTTP/1.1" 200 None',
    ]
    assert refusals_in("\n".join(lines)) == []


def test_a_request_answered_403_or_401_is_a_refusal() -> None:
    forbidden = OK_PATCH.replace('HTTP/1.1" 200', 'HTTP/1.1" 403')
    unauthorized = OK_PATCH.replace('HTTP/1.1" 200', 'HTTP/1.1" 401')
    assert refusals_in("\n".join([OK_PATCH, forbidden, unauthorized])) == [forbidden, unauthorized]


def test_the_api_servers_rbac_wording_and_kopfs_messages_are_refusals() -> None:
    rbac = (
        f"{STAMP} logger=kopf.objects Handler 'reconcile' failed temporarily: applying Role x:"
        ' not permitted (roles.rbac.authorization.k8s.io "x" is forbidden: User'
        ' "system:serviceaccount:a:b" cannot patch resource "roles"); check the ClusterRole'
    )
    kopf_watch = (
        f"{STAMP} logger=kopf._core.reactor.observation Not enough permissions to watch for"
        " resources: changes (creation/deletion/updates) will not be noticed"
    )
    kopf_error = f"{STAMP} kopf._cogs.clients.errors.APIForbiddenError: ('forbidden', {{}})"
    kopf_repr = f"{STAMP} Unexpected error: APIForbiddenError('x', status=403)"
    sidecar = f"{STAMP} logger=capinfer_sidecar.kube status update refused: 403 Forbidden"
    text = "\n".join([rbac, kopf_watch, kopf_error, kopf_repr, sidecar, OK_PATCH])
    assert refusals_in(text) == [rbac, kopf_watch, kopf_error, kopf_repr, sidecar]


def test_a_namespace_being_deleted_is_not_a_refusal() -> None:
    request = (
        f'{STAMP} logger=urllib3.connectionpool https://127.0.0.1:1 "PATCH '
        '/api/v1/namespaces/gone-1/services/x?force=True HTTP/1.1" 403 None'
    )
    note = f"{STAMP} logger=kopf.objects namespace gone-1 is being deleted: nothing to apply"
    event = (
        f"{STAMP} logger=kopf.objects Failed to post an event. Code: 403. Message: events is"
        " forbidden: unable to create new content in namespace gone-1 because it is being"
        " terminated"
    )
    assert refusals_in("\n".join([request, note, event])) == []
    # The same 403 in a namespace nobody said is going is a refusal.
    elsewhere = request.replace("gone-1", "alive-2")
    assert refusals_in("\n".join([elsewhere, note])) == [elsewhere]
