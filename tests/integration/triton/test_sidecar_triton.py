"""The sidecar's Triton adapter against a real tritonserver under concurrent load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from capinfer.tritonload import ClosedLoopLoad
from capinfer.tritonlocal import LocalTritonServer
from capinfer_sidecar.triton import (
    Batching,
    ReloadError,
    TritonModel,
    TritonUnavailableError,
    gpu_uuids_in_metrics,
    open_client,
    pending_requests_in_metrics,
    read_metrics,
    throughput_between,
)

pytestmark = pytest.mark.triton

# Three times the largest max batch used here: even on a busy machine, enough requests wait
# for the batcher to fill a batch before its queue delay runs out.
CONCURRENCY = 48


@pytest.fixture
async def model(triton_server: LocalTritonServer) -> AsyncIterator[TritonModel]:
    client = open_client(triton_server.grpc_url)
    try:
        yield TritonModel(client, "simbatch", request_timeout_s=10.0)
    finally:
        await client.close()


@pytest.fixture
async def load(triton_server: LocalTritonServer) -> AsyncIterator[ClosedLoopLoad]:
    running = ClosedLoopLoad(triton_server.http_address, "simbatch", concurrency=CONCURRENCY)
    running.start()
    try:
        await running.wait_for_completed(50)
        yield running
    finally:
        await running.stop()


def assert_no_failed_request(load: ClosedLoopLoad) -> None:
    assert load.counts.failed == 0, load.counts.errors
    assert load.counts.wrong == 0


async def test_reads_the_configuration_in_effect(model: TritonModel) -> None:
    batching = await model.batching()
    assert batching.max_batch_size == 8
    assert batching.dynamic
    config = await model.config()
    assert config["backend"] == "python"
    assert await model.is_ready()


async def test_batch_size_changes_under_load_drop_no_request(
    model: TritonModel, load: ClosedLoopLoad
) -> None:
    for max_batch_size in (4, 16, 2):
        completed_before = load.counts.completed
        result = await model.reload_with_max_batch_size(max_batch_size)
        assert result.applied.max_batch_size == max_batch_size
        assert result.changed
        assert result.duration_s > 0
        # The old model served while the new one loaded.
        assert load.counts.completed > completed_before
        assert (await model.batching()).max_batch_size == max_batch_size
        await load.wait_for_completed(100)
    assert_no_failed_request(load)


async def test_a_larger_maximum_lets_batches_grow_past_the_old_one(
    model: TritonModel, load: ClosedLoopLoad
) -> None:
    # Triton filled in preferred sizes [8] for the model; left there they would cap batches.
    assert (await model.batching()).preferred_batch_sizes == (8,)
    result = await model.reload_with_max_batch_size(16)
    assert result.applied == Batching(16, (16,), dynamic=True)
    await load.wait_for_completed(50)
    before = await model.statistics()
    await load.wait_for_completed(300)
    sample = throughput_between(before, await model.statistics())
    assert max(sample.executions_by_batch_size) > 8, sample.executions_by_batch_size
    assert_no_failed_request(load)


async def test_a_no_op_change_does_not_reload(model: TritonModel) -> None:
    result = await model.reload_with_max_batch_size(8)
    assert not result.changed
    assert result.duration_s == 0.0


async def test_statistics_measure_throughput_and_batching_under_load(
    model: TritonModel, load: ClosedLoopLoad
) -> None:
    before = await model.statistics()
    await load.wait_for_completed(200)
    after = await model.statistics()
    sample = throughput_between(before, after)
    assert not sample.counters_restarted
    assert sample.inferences >= 200 - CONCURRENCY
    assert sample.inferences_per_second > 0
    # 16 clients always in flight, so the batcher forms batches bigger than 1.
    assert sample.mean_batch_size is not None and sample.mean_batch_size > 1.0
    assert max(sample.executions_by_batch_size) <= 8
    assert sample.mean_queue_time_s is not None and sample.mean_queue_time_s > 0
    counters = await model.counters()
    assert counters.inferences >= after.inference_count
    assert counters.batches >= after.execution_count


async def test_statistics_restart_with_a_reload_and_deltas_stay_sane(
    model: TritonModel, load: ClosedLoopLoad
) -> None:
    await load.wait_for_completed(200)
    before = await model.statistics()
    await model.reload_with_max_batch_size(4)
    await load.wait_for_completed(50)
    sample = throughput_between(before, await model.statistics())
    assert sample.counters_restarted
    assert sample.inferences >= 0
    assert max(sample.executions_by_batch_size) <= 4
    assert_no_failed_request(load)


async def test_a_batch_size_the_model_cannot_take_fails_and_the_old_one_serves(
    model: TritonModel, load: ClosedLoopLoad
) -> None:
    # The simbatch model here refuses to load with a max batch size above 64.
    with pytest.raises(ReloadError) as raised:
        await model.reload_with_max_batch_size(128)
    error = raised.value
    assert error.requested_batch_size == 128
    assert error.in_effect_batch_size == 8
    assert not error.rolled_back
    assert "exceeds what this model supports" in error.reason
    assert (await model.batching()).max_batch_size == 8
    assert await model.is_ready()
    completed = load.counts.completed
    await load.wait_for_completed(100)
    assert load.counts.completed > completed
    assert_no_failed_request(load)


async def test_a_bad_config_fails_cleanly_and_the_old_config_stays(
    model: TritonModel, load: ClosedLoopLoad
) -> None:
    config: dict[str, Any] = await model.config()
    bad = dict(config, max_batch_size=16)
    bad["dynamic_batching"] = dict(config["dynamic_batching"], preferred_batch_size=[32])
    with pytest.raises(ReloadError) as raised:
        await model.apply_config(bad, previous=config)
    assert raised.value.in_effect_batch_size == 8
    assert (await model.batching()).max_batch_size == 8
    assert await model.is_ready()
    await load.wait_for_completed(100)
    assert_no_failed_request(load)


async def test_an_unreachable_server_is_reported_and_the_adapter_recovers(
    triton_server: LocalTritonServer, model: TritonModel
) -> None:
    triton_server.kill()
    with pytest.raises(TritonUnavailableError):
        await model.statistics()
    with pytest.raises(TritonUnavailableError):
        await model.reload_with_max_batch_size(4)
    await asyncio.to_thread(triton_server.start)
    # The same client reconnects once the server is back at its address (within its
    # reconnect backoff; the deadline is only there so a broken client cannot hang).
    async with asyncio.timeout(30):
        while True:
            try:
                batching = await model.batching()
                break
            except TritonUnavailableError:
                await asyncio.sleep(0.1)
    assert batching.max_batch_size == 8
    assert (await model.statistics()).inference_count == 0


async def test_queue_depth_and_gpus_come_from_tritons_metrics(
    triton_server: LocalTritonServer, load: ClosedLoopLoad
) -> None:
    client = open_client(triton_server.grpc_url)
    try:
        model = TritonModel(client, "simbatch", metrics_url=triton_server.metrics_url)
        counters = await model.counters()
    finally:
        await client.close()
    assert counters.queue_depth is not None
    assert 0 <= counters.queue_depth <= CONCURRENCY
    text = await read_metrics(triton_server.metrics_url)
    assert pending_requests_in_metrics(text, "simbatch") is not None
    # A CPU-only server exports no per-GPU metric, so no GPU is found.
    assert gpu_uuids_in_metrics(text) == []


async def test_unreadable_metrics_leave_the_queue_depth_unknown(model: TritonModel) -> None:
    with pytest.raises(TritonUnavailableError):
        await read_metrics("http://127.0.0.1:9/metrics", timeout_s=1.0)
    assert (await model.counters()).queue_depth is None
