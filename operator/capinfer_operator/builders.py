"""Pure builders: a PowerCappedInference in, the Kubernetes objects it needs out.

No I/O and no kopf here: the handlers parse, build, adopt and apply. What goes into the pod
template is chosen so that a change of ``spec.power`` never rolls the pods (the sidecars
watch the object and apply it live, ``clockControl.enabled`` included), while anything that
changes what the containers run does. The Deployment carries a hash of its pod template
(``capinfer.io/template-hash``) so the operator can tell a user when a change rolls pods.

Least privilege, whatever the object says: no container is privileged or holds a
capability. The sidecar runs as UID 65532 with every capability dropped; the privileged GPU
knobs (locked clocks, the board power limit) belong to the node agent, which the sidecar
reaches at the address the operator was given (``--node-agent-address``; never a field of
the object) with a ServiceAccount token projected for the agent's audience alone. Triton
gets no token at all: ``automountServiceAccountToken`` is off for the pod and the sidecar
alone mounts a projected token volume. Every container meets the PodSecurity ``restricted``
profile (non-root, no privilege escalation, all capabilities dropped, RuntimeDefault
seccomp); Triton runs as UID 1000, the ``triton-server`` user of NVIDIA's images.

How the sidecar reaches Triton's GPUs: the device plugin injects the GPUs it allocated
into the container that requested them (Triton) only, and the sidecar must not request
GPUs of its own. So the sidecar asks the NVIDIA container runtime for every GPU of the node
with ``NVIDIA_VISIBLE_DEVICES=all`` and the ``utility`` capability alone (NVML, no compute),
then picks Triton's GPUs by the ``gpu_uuid`` labels of Triton's own metrics. This needs the
NVIDIA runtime as the node's default runtime and the device plugin's default of accepting
that variable from unprivileged containers (the GPU Operator's defaults); where a node
refuses it, the sidecar finds none of Triton's GPUs and stops with a message that says so.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP = "capinfer.io"
VERSION = "v1alpha1"
PLURAL = "powercappedinferences"
KIND = "PowerCappedInference"

TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
SIDECAR_METRICS_PORT = 9400
MODEL_MOUNT = "/models"
SIDECAR_UID = 65532
TRITON_UID = 1000
"""The ``triton-server`` user of NVIDIA's Triton images; the model repository must be
readable by it."""
API_TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
AGENT_TOKEN_MOUNT = "/var/run/secrets/capinfer.io/node-agent"
NODE_AGENT_AUDIENCE = "capinfer-node-agent"
"""The audience of the sidecar's token for the node agent: no other server accepts it."""
AGENT_TOKEN_EXPIRY_S = 600
API_TOKEN_EXPIRY_S = 3607
"""The kubelet refreshes both tokens at 80 % of their life; the sidecar rereads them."""
DEFAULT_SIDECAR_RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}}
DEFAULT_STARTUP_TIMEOUT_S = 600
"""spec.triton.startupTimeoutSeconds when unset: big TensorRT models load for minutes."""
STARTUP_PROBE_PERIOD_S = 10
STARTUP_PROBE_MARGIN_S = 30
TEMPLATE_HASH_ANNOTATION = f"{GROUP}/template-hash"
DEVICE_ENV = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
"""Variables the NVIDIA runtime reads to expose GPUs: an object must not pick its own."""

Manifest = dict[str, Any]


class SpecError(ValueError):
    """A spec the schema accepted but the operator cannot honour (names the field)."""


@dataclass(frozen=True)
class Target:
    """Who the children belong to."""

    name: str
    namespace: str

    @property
    def child_name(self) -> str:
        return self.name

    @property
    def sidecar_account(self) -> str:
        return f"{self.name}-capinfer-sidecar"

    def labels(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "triton",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/managed-by": "capinfer",
            "capinfer.io/inference": self.name,
        }

    def selector(self) -> dict[str, str]:
        return {"capinfer.io/inference": self.name}


def _metadata(target: Target, name: str, component: str) -> Manifest:
    return {
        "name": name,
        "namespace": target.namespace,
        "labels": {**target.labels(), "app.kubernetes.io/component": component},
    }


# -- the model repository -------------------------------------------------------------------
def _repository(spec: Mapping[str, Any]) -> tuple[str, list[Manifest], list[Manifest]]:
    """``--model-repository`` value, volumes and Triton's volume mounts."""
    repo = spec["triton"]["modelRepository"]
    mount: Manifest = {"name": "models", "mountPath": MODEL_MOUNT, "readOnly": True}
    if "uri" in repo:
        return str(repo["uri"]), [], []
    if "persistentVolumeClaim" in repo:
        claim = repo["persistentVolumeClaim"]
        if claim.get("subPath"):
            mount["subPath"] = claim["subPath"]
        volume = {
            "name": "models",
            "persistentVolumeClaim": {"claimName": claim["claimName"], "readOnly": True},
        }
        return MODEL_MOUNT, [volume], [mount]
    if "volume" in repo:
        source = dict(repo["volume"])
        if "hostPath" in source:
            raise SpecError(
                "spec.triton.modelRepository.volume: hostPath would give the pod the node's"
                " files; use a persistentVolumeClaim (a hostPath PersistentVolume is the"
                " cluster administrator's choice)"
            )
        if "name" in source or len(source) != 1:
            raise SpecError(
                "spec.triton.modelRepository.volume: give exactly one volume source"
                " (e.g. nfs, csi, configMap) and no name"
            )
        return MODEL_MOUNT, [{**source, "name": "models"}], [mount]
    raise SpecError("spec.triton.modelRepository: set one of uri, persistentVolumeClaim, volume")


TRITON_SUMMARY_LATENCIES_ARG = "--metrics-config=summary_latencies=true"

OWN_TRITON_FLAGS = (
    "--model-repository",
    "--model-control-mode",
    "--load-model",
    "--http-port",
    "--grpc-port",
    "--metrics-port",
)


def triton_args(spec: Mapping[str, Any], repository: str) -> list[str]:
    extra = [str(a) for a in spec["triton"].get("args", [])]
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in OWN_TRITON_FLAGS:
            raise SpecError(
                f"spec.triton.args: {flag} is set by capinfer (explicit model control of"
                f" {spec['triton']['model']!r} is how the batch size is changed); remove it"
            )
    return [
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        f"--load-model={spec['triton']['model']}",
        f"--http-port={TRITON_HTTP_PORT}",
        f"--grpc-port={TRITON_GRPC_PORT}",
        f"--metrics-port={TRITON_METRICS_PORT}",
        # The sidecar reads the model's p99 latency from these summaries (spec.latencySLO);
        # always on, so that setting or changing an SLO never restarts a pod.
        TRITON_SUMMARY_LATENCIES_ARG,
        *extra,
    ]


# -- the sidecar ----------------------------------------------------------------------------
def clock_control_enabled(spec: Mapping[str, Any]) -> bool:
    return bool(spec["power"].get("clockControl", {}).get("enabled", True))


def restricted_security_context(uid: int) -> Manifest:
    """What the PodSecurity ``restricted`` profile asks of a container, and a fixed UID."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def sidecar_security_context() -> Manifest:
    """The sidecar only reads: NVML readings, its object, Triton. Nothing else, ever."""
    return {**restricted_security_context(SIDECAR_UID), "readOnlyRootFilesystem": True}


def token_volumes() -> list[Manifest]:
    """The sidecar's credentials, projected for it alone (Triton mounts neither)."""
    return [
        {
            "name": "capinfer-api-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "path": "token",
                            "expirationSeconds": API_TOKEN_EXPIRY_S,
                        }
                    },
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ]
            },
        },
        {
            "name": "capinfer-node-agent-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "path": "token",
                            "audience": NODE_AGENT_AUDIENCE,
                            "expirationSeconds": AGENT_TOKEN_EXPIRY_S,
                        }
                    }
                ]
            },
        },
    ]


def _field_env(name: str, path: str) -> Manifest:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def startup_timeout_s(spec: Mapping[str, Any]) -> int:
    """``spec.triton.startupTimeoutSeconds``: from start to control, model load included."""
    return int(spec["triton"].get("startupTimeoutSeconds", DEFAULT_STARTUP_TIMEOUT_S))


def startup_probe_failures(timeout_s: int) -> int:
    """Failures the startup probe allows: the timeout plus a margin for the sidecar to say
    why it gives up before the kubelet kills it."""
    return math.ceil((timeout_s + STARTUP_PROBE_MARGIN_S) / STARTUP_PROBE_PERIOD_S)


def sidecar_container(
    target: Target, spec: Mapping[str, Any], default_image: str, node_agent: str = ""
) -> Manifest:
    sidecar = spec.get("sidecar", {})
    image = sidecar.get("image") or default_image
    if not image:
        raise SpecError(
            "spec.sidecar.image: not set, and the operator has no default sidecar image"
            " (set CAPINFER_SIDECAR_IMAGE or --sidecar-image on the operator)"
        )
    container: Manifest = {
        "name": "capinfer-sidecar",
        "image": image,
        "command": ["capinfer-sidecar"],
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("NODE_NAME", "spec.nodeName"),
            {"name": "CAPINFER_OBJECT_NAME", "value": target.name},
            {"name": "CAPINFER_MODEL", "value": str(spec["triton"]["model"])},
            {"name": "CAPINFER_TRITON_GRPC", "value": f"127.0.0.1:{TRITON_GRPC_PORT}"},
            {
                "name": "CAPINFER_TRITON_METRICS",
                "value": f"http://127.0.0.1:{TRITON_METRICS_PORT}/metrics",
            },
            {"name": "CAPINFER_METRICS_ADDRESS", "value": f"0.0.0.0:{SIDECAR_METRICS_PORT}"},
            # The node agent sets clocks and the board limit; empty: batch size alone.
            {"name": "CAPINFER_NODE_AGENT", "value": node_agent},
            {"name": "CAPINFER_NODE_AGENT_TOKEN", "value": f"{AGENT_TOKEN_MOUNT}/token"},
            {"name": "CAPINFER_LOG_LEVEL", "value": str(sidecar.get("logLevel", "INFO"))},
            {"name": "CAPINFER_STARTUP_TIMEOUT_S", "value": str(startup_timeout_s(spec))},
            # The device plugin hands GPUs to the Triton container only; the sidecar sees
            # the node's GPUs (NVML only, no compute) and picks Triton's by UUID.
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
        ],
        "ports": [{"name": "sidecar-metrics", "containerPort": SIDECAR_METRICS_PORT}],
        # Until the control loop took its first sample (Triton loading the model may take
        # minutes) only the startup probe runs; the sidecar gives up by itself at the same
        # timeout, with a message, a little before the probe would.
        "startupProbe": {
            "httpGet": {"path": "/startupz", "port": "sidecar-metrics"},
            "periodSeconds": STARTUP_PROBE_PERIOD_S,
            "failureThreshold": startup_probe_failures(startup_timeout_s(spec)),
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "sidecar-metrics"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "sidecar-metrics"},
            "periodSeconds": 5,
        },
        "resources": sidecar.get("resources") or DEFAULT_SIDECAR_RESOURCES,
        "securityContext": sidecar_security_context(),
        "volumeMounts": [
            {"name": "capinfer-api-token", "mountPath": API_TOKEN_MOUNT, "readOnly": True},
            {"name": "capinfer-node-agent-token", "mountPath": AGENT_TOKEN_MOUNT, "readOnly": True},
        ],
    }
    if sidecar.get("imagePullPolicy"):
        container["imagePullPolicy"] = sidecar["imagePullPolicy"]
    return container


def triton_container(spec: Mapping[str, Any], repository: str, mounts: list[Manifest]) -> Manifest:
    triton = spec["triton"]
    gpus = str(spec.get("gpusPerReplica", 1))
    resources = dict(triton.get("resources") or {})
    limits = dict(resources.get("limits") or {})
    if "nvidia.com/gpu" in limits or "nvidia.com/gpu" in (resources.get("requests") or {}):
        raise SpecError("spec.triton.resources: do not set nvidia.com/gpu; use gpusPerReplica")
    limits["nvidia.com/gpu"] = gpus
    resources["limits"] = limits
    container: Manifest = {
        "name": "triton",
        "image": triton["image"],
        "command": ["tritonserver"],
        "args": triton_args(spec, repository),
        "ports": [
            {"name": "http", "containerPort": TRITON_HTTP_PORT},
            {"name": "grpc", "containerPort": TRITON_GRPC_PORT},
            {"name": "metrics", "containerPort": TRITON_METRICS_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": resources,
        "securityContext": restricted_security_context(TRITON_UID),
        "volumeMounts": mounts,
    }
    if triton.get("env"):
        for variable in triton["env"]:
            if str(variable.get("name", "")) in DEVICE_ENV:
                raise SpecError(
                    f"spec.triton.env: {variable.get('name')} is set by the device plugin (it"
                    " picks the GPUs Triton may use); request GPUs with gpusPerReplica"
                )
        container["env"] = list(triton["env"])
    if triton.get("imagePullPolicy"):
        container["imagePullPolicy"] = triton["imagePullPolicy"]
    return container


# -- the objects ----------------------------------------------------------------------------
def template_hash(template: Manifest) -> str:
    """A short stable digest of a pod template: it changes exactly when pods would roll."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def build_deployment(
    target: Target, spec: Mapping[str, Any], default_image: str, node_agent: str = ""
) -> Manifest:
    repository, volumes, mounts = _repository(spec)
    pod_spec: Manifest = {
        "serviceAccountName": target.sidecar_account,
        # No container gets a token by default: the sidecar mounts its own, Triton none.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": int(spec.get("terminationGracePeriodSeconds", 60)),
        "containers": [
            triton_container(spec, repository, mounts),
            sidecar_container(target, spec, default_image, node_agent),
        ],
        "volumes": [*volumes, *token_volumes()],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if spec.get(key):
            pod_spec[key] = spec[key]
    template: Manifest = {
        "metadata": {"labels": {**target.labels(), "app.kubernetes.io/component": "inference"}},
        "spec": pod_spec,
    }
    metadata = _metadata(target, target.child_name, "inference")
    metadata["annotations"] = {TEMPLATE_HASH_ANNOTATION: template_hash(template)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": int(spec.get("replicas", 1)),
            "selector": {"matchLabels": target.selector()},
            "template": template,
        },
    }


def build_service(target: Target) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(target, target.child_name, "inference"),
        "spec": {
            "selector": target.selector(),
            "ports": [
                {"name": "http", "port": TRITON_HTTP_PORT, "targetPort": "http"},
                {"name": "grpc", "port": TRITON_GRPC_PORT, "targetPort": "grpc"},
                {"name": "metrics", "port": TRITON_METRICS_PORT, "targetPort": "metrics"},
                {
                    "name": "sidecar-metrics",
                    "port": SIDECAR_METRICS_PORT,
                    "targetPort": "sidecar-metrics",
                },
            ],
        },
    }


def build_service_account(target: Target) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(target, target.sidecar_account, "sidecar"),
    }


def build_role(target: Target) -> Manifest:
    """Exactly what a sidecar needs: read and watch its own object, patch its status."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(target, target.sidecar_account, "sidecar"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [PLURAL],
                "resourceNames": [target.name],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [target.name],
                "verbs": ["get", "patch"],
            },
        ],
    }


def build_role_binding(target: Target) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(target, target.sidecar_account, "sidecar"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": target.sidecar_account,
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": target.sidecar_account,
                "namespace": target.namespace,
            }
        ],
    }


def build_children(
    target: Target, spec: Mapping[str, Any], default_image: str, node_agent: str = ""
) -> list[Manifest]:
    """Every child, in the order they are applied.

    The ServiceAccount first: a pod naming an account that does not exist is refused. Then
    the Deployment, as early as it can be. The sidecar's Role and RoleBinding follow (a
    sidecar starting before them retries its watch), and the Service comes last: the API
    server allocates ClusterIPs one at a time, so under a burst a Service is the slowest
    child by far and must not hold back the pods.

    ``node_agent`` is where sidecars reach the node agent (the operator's setting, never
    the object's); empty: no agent, the sidecars control the batch size alone.
    """
    return [
        build_service_account(target),
        build_deployment(target, spec, default_image, node_agent),
        build_role(target),
        build_role_binding(target),
        build_service(target),
    ]
