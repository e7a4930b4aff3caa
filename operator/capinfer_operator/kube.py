"""Thin Kubernetes adapter: server-side apply of children and of the object's status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from capinfer_operator.builders import GROUP, PLURAL, VERSION, Manifest

FIELD_MANAGER = "capinfer-operator"
APPLY = "application/apply-patch+yaml"


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

    def apply(self, manifest: Manifest) -> None:
        metadata = manifest["metadata"]
        self._patcher(manifest)(
            metadata["name"],
            metadata["namespace"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], concern: str) -> None:
        """Apply status fields under a field manager per concern.

        Server-side apply removes fields a manager owned and no longer sends; one manager
        per concern (spec, replicas, pod reports) lets each send only what it knows.
        """
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PowerCappedInference",
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body,
            field_manager=f"{FIELD_MANAGER}/{concern}", force=True, _content_type=APPLY,
        )  # fmt: skip

    def read_deployment_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            deployment = self._apps.read_namespaced_deployment_status(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        status = deployment.status
        if status is None:
            return None
        return {"replicas": status.replicas, "readyReplicas": status.ready_replicas}


def is_transient(error: ApiException) -> bool:
    """Conflicts, throttling and server trouble pass; anything else is our mistake."""
    return error.status in (409, 429) or (error.status or 0) >= 500 or error.status is None
