"""A real tritonserver changes ``max_batch_size`` by a reload under load, dropping nothing.

This is the fact the batch knob rests on: a ``load`` with a ``config`` override swaps the
model while the old one keeps serving, so no request fails.

Measured here (tritonserver 2.51, 2 cores): a load requested over HTTP often stops the HTTP
frontend from taking new inference requests until the load is done (~1.4 s with no request
completing); nothing fails, the requests wait. A load requested over gRPC leaves inference
flowing, which is why capinfer's sidecar reloads over gRPC. Both are tested; only the gRPC
one is held to "requests keep completing during the reload".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc.aio as triton_grpc
import tritonclient.http.aio as triton_http

from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad
from capinfer.tritonlocal import LocalTritonServer

pytestmark = pytest.mark.triton

CONCURRENCY = 16


def executed_batches(report_path: Path, since_s: float) -> list[int]:
    """Sizes of the batches the model started at or after ``since_s`` (CLOCK_MONOTONIC)."""
    sizes = []
    for line in report_path.read_text().splitlines():
        size, start_s, _end_s = line.split()
        if float(start_s) >= since_s:
            sizes.append(int(size))
    return sizes


def executed_batch_sizes(statistics: dict[str, Any]) -> dict[int, int]:
    """Batch size → number of executions, from Triton's own statistics."""
    (model,) = statistics["model_stats"]
    return {
        int(entry["batch_size"]): int(entry["compute_infer"]["count"])
        for entry in model["batch_stats"]
    }


def with_max_batch_size(config: dict[str, Any], max_batch_size: int) -> dict[str, Any]:
    changed = json.loads(json.dumps(config))
    changed["max_batch_size"] = max_batch_size
    changed["dynamic_batching"]["preferred_batch_size"] = [max_batch_size]
    return changed


async def load_over(
    protocol: str, server: LocalTritonServer, model: str, config: dict[str, Any]
) -> None:
    """``POST v2/repository/models/<model>/load`` with a ``config`` override, or its gRPC twin."""
    if protocol == "http":
        async with triton_http.InferenceServerClient(server.http_address) as http_client:
            await http_client.load_model(model, config=json.dumps(config))
    else:
        grpc_client = triton_grpc.InferenceServerClient(server.grpc_url)
        try:
            await grpc_client.load_model(model, config=json.dumps(config))
        finally:
            await grpc_client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_max_batch_size_reload_under_load_drops_no_request(
    triton_server: LocalTritonServer,
    simbatch_spec: SimBatchSpec,
    batch_report_path: Path,
    protocol: str,
) -> None:
    model = simbatch_spec.name
    async with triton_http.InferenceServerClient(triton_server.http_address) as client:
        original = await client.get_model_config(model)
        assert original["max_batch_size"] == 8

        load = ClosedLoopLoad(triton_server.http_address, model, concurrency=CONCURRENCY)
        load.start()
        try:
            await load.wait_for_completed(100)
            for max_batch_size in (4, 16):
                before_reload = load.counts.completed
                await load_over(
                    protocol, triton_server, model, with_max_batch_size(original, max_batch_size)
                )
                if protocol == "grpc":
                    # The old model kept serving while the new one loaded.
                    assert load.counts.completed > before_reload, "no request completed"
                in_effect = await client.get_model_config(model)
                assert in_effect["max_batch_size"] == max_batch_size
                assert in_effect["dynamic_batching"]["preferred_batch_size"] == [max_batch_size]
                # Everything else is the config we started from.
                assert in_effect["input"] == original["input"]
                assert in_effect["parameters"] == original["parameters"]
                await load.wait_for_completed(100)
        finally:
            counts = await load.stop()
        assert counts.failed == 0, counts.errors
        assert counts.wrong == 0
        assert counts.succeeded >= 300

        # Every request before this instant has been answered, so every batch that starts
        # later holds only new requests, which the reloaded model (max 16) serves.
        quiet_s = time.monotonic()
        async with ClosedLoopLoad(
            triton_server.http_address, model, concurrency=CONCURRENCY * 2
        ) as burst:
            await burst.wait_for_completed(400)
        assert burst.counts.failed == 0, burst.counts.errors
        sizes = executed_batches(batch_report_path, since_s=quiet_s)
        assert max(sizes) <= 16
        assert max(sizes) > 8, f"batches never grew past the old maximum: {sorted(set(sizes))}"

        batch_counts = executed_batch_sizes(await client.get_inference_statistics(model))
        assert any(size > 1 and count > 0 for size, count in batch_counts.items()), batch_counts


async def test_changed_max_batch_size_bounds_the_batches(
    triton_server: LocalTritonServer, simbatch_spec: SimBatchSpec, batch_report_path: Path
) -> None:
    """After a reload to a smaller maximum, no batch is larger than it."""
    model = simbatch_spec.name
    async with triton_http.InferenceServerClient(triton_server.http_address) as client:
        original = await client.get_model_config(model)
        await client.load_model(model, config=json.dumps(with_max_batch_size(original, 2)))
    since_s = time.monotonic()
    async with ClosedLoopLoad(triton_server.http_address, model, concurrency=CONCURRENCY) as load:
        await load.wait_for_completed(200)
    assert load.counts.failed == 0, load.counts.errors
    sizes = executed_batches(batch_report_path, since_s=since_s)
    assert set(sizes) <= {1, 2}
    assert 2 in sizes
