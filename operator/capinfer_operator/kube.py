"""Thin Kubernetes adapter: server-side apply of children and of the object's status."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from capinfer_operator.builders import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Manifest,
)

FIELD_MANAGER = "capinfer-operator"
APPLY = "application/apply-patch+yaml"
REQUEST_TIMEOUT_S = (10, 70)
"""Connect and read timeouts of every request. The API server answers or gives up within
60 s; past that the connection is dead (a cut network), and a call that hung would hold
back every call queued behind it."""
JSON_PATCH = "application/json-patch+json"


class Applier:
    """Applies manifests with one field manager, forcing ownership of what it sets."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._rbac = client.RbacAuthorizationV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    def _patcher(self, manifest: Manifest) -> Callable[..., Any]:
        kind = manifest["kind"]
        patchers: dict[str, Callable[..., Any]] = {
            "Deployment": self._apps.patch_namespaced_deployment,
            "Service": self._core.patch_namespaced_service,
            "ServiceAccount": self._core.patch_namespaced_service_account,
            "Role": self._rbac.patch_namespaced_role,
            "RoleBinding": self._rbac.patch_namespaced_role_binding,
        }
        if kind not in patchers:
            raise ValueError(f"cannot apply a {kind}")
        return patchers[kind]

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Apply, and answer the object as the API server now holds it."""
        metadata = manifest["metadata"]
        response = self._patcher(manifest)(
            metadata["name"],
            metadata["namespace"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
            # Plain JSON: building the client's models from an answer costs more CPU than
            # the whole request.
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        applied: dict[str, Any] = json.loads(response.data)
        return applied

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], concern: str) -> None:
        """Apply status fields under a field manager per concern.

        Server-side apply removes fields a manager owned and no longer sends; one manager
        per concern (spec, replicas, pod reports) lets each send only what it knows.
        """
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        response = self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body,
            field_manager=f"{FIELD_MANAGER}/{concern}", force=True, _content_type=APPLY,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        _drain(response)

    def patch_status(self, namespace: str, name: str, operations: list[dict[str, Any]]) -> None:
        """A JSON patch on the status: removes what other field managers wrote."""
        response = self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, operations,
            field_manager=FIELD_MANAGER, _content_type=JSON_PATCH, _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        _drain(response)

    def read_inference(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PowerCappedInference, or None when it is gone."""
        try:
            found: dict[str, Any] = self._custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found


def _drain(response: Any) -> None:
    """Read an unparsed answer to its end: only then does its connection go back to the
    pool (an unread one is dropped, and the next request pays a new TLS handshake)."""
    response.read()


def is_transient(error: ApiException) -> bool:
    """Conflicts, throttling and server trouble pass; anything else is our mistake."""
    return error.status in (409, 429) or (error.status or 0) >= 500 or error.status is None


def _status_body(error: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def namespace_terminating(error: ApiException) -> bool:
    """The namespace is being deleted: nothing can be created in it any more (a 403 that
    says nothing about permissions)."""
    causes = (_status_body(error).get("details") or {}).get("causes") or []
    return any(cause.get("reason") == "NamespaceTerminating" for cause in causes)


def api_message(error: ApiException) -> str:
    """The API server's own words (they name the field), else the HTTP reason."""
    message = _status_body(error).get("message")
    return str(message) if message else f"{error.status} {error.reason}"
