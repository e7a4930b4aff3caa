"""The kubelet's pod-resources API (``k8s.io/kubelet/pkg/apis/podresources/v1``).

The stubs in ``v1/`` are generated from the kubelet's published ``api.proto`` by
``node/gen_podresources.py`` and committed. :class:`PodResourcesClient` is the typed edge
the agent uses: which devices of one resource each pod's containers hold.
"""

from __future__ import annotations

from collections import defaultdict

import grpc

from capinfer_node_agent.podresources.v1 import api_pb2, api_pb2_grpc

KUBELET_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
GPU_RESOURCE = "nvidia.com/gpu"

Allocations = dict[tuple[str, str], set[str]]
"""(namespace, pod) -> device IDs (GPU UUIDs for NVIDIA's device plugin)."""


class PodResourcesClient:
    """``List`` over the kubelet's Unix socket; the device IDs of ``resource`` per pod."""

    def __init__(
        self, socket_path: str = KUBELET_SOCKET, resource: str = GPU_RESOURCE, timeout_s: float = 5
    ) -> None:
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]
        self._resource = resource
        self._timeout_s = timeout_s

    def allocations(self) -> Allocations:
        response = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout_s)
        found: Allocations = defaultdict(set)
        for pod in response.pod_resources:
            for container in pod.containers:
                for devices in container.devices:
                    if devices.resource_name == self._resource:
                        found[(pod.namespace, pod.name)].update(devices.device_ids)
        return dict(found)

    def close(self) -> None:
        self._channel.close()
