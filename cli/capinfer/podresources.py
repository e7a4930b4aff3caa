"""A stand-in for the kubelet's pod-resources API, for clusters whose nodes have no kubelet.

kwok's nodes have no kubelet, so nothing serves ``/var/lib/kubelet/pod-resources``. This
server implements ``PodResourcesLister`` from the kubelet's published proto (the stubs the
node agent uses, generated from ``k8s.io/kubelet``'s ``api.proto``) on a Unix socket, with
the allocations the caller declares -- what a kubelet with NVIDIA's device plugin would
answer: GPU UUIDs under ``nvidia.com/gpu`` for each container. The node agent's tests and
the demo use it; a real node's kubelet replaces it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from capinfer_node_agent.podresources import GPU_RESOURCE
from capinfer_node_agent.podresources.v1 import api_pb2, api_pb2_grpc


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, owner: PodResourcesServer) -> None:
        self._owner = owner

    def List(self, request: Any, context: Any) -> Any:  # noqa: N802 (the proto's name)
        return self._owner.list_response()


class PodResourcesServer:
    """``List`` over a Unix socket; :meth:`assign` and :meth:`release` change the answer."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(  # type: ignore[no-untyped-call]
            _Lister(self), self._server
        )

    def assign(self, namespace: str, pod: str, container: str, gpus: Sequence[str]) -> None:
        with self._lock:
            self._pods.setdefault((namespace, pod), {})[container] = list(gpus)

    def release(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._pods.pop((namespace, pod), None)

    def list_response(self) -> Any:
        with self._lock:
            return api_pb2.ListPodResourcesResponse(
                pod_resources=[
                    api_pb2.PodResources(
                        name=name,
                        namespace=namespace,
                        containers=[
                            api_pb2.ContainerResources(
                                name=container,
                                devices=[
                                    api_pb2.ContainerDevices(
                                        resource_name=GPU_RESOURCE, device_ids=gpus
                                    )
                                ],
                            )
                            for container, gpus in containers.items()
                        ],
                    )
                    for (namespace, name), containers in self._pods.items()
                ]
            )

    def start(self) -> PodResourcesServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self._server.add_insecure_port(f"unix://{self.socket_path}")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> PodResourcesServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
