"""The p99 latency the sidecar holds ``spec.latencySLO`` against, read from a real tritonserver.

tritonserver 2.51 keeps request-duration quantiles only with
``--metrics-config=summary_latencies=true`` (the operator always renders it); without it the
sidecar has no p99 to report. The ``simbatch`` model sleeps a known time per batch, so the
p99 is bounded on both sides whatever the machine's speed: no request can take less than
the model's sleep, and none takes longer in the server than its round trip at the client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http

from capinfer.testmodels import SimBatchSpec
from capinfer.tritonlocal import LocalTritonServer, TritonNotInstalledError
from capinfer_sidecar.triton import SUMMARY_LATENCIES_ARG, TritonModel, open_client

pytestmark = pytest.mark.triton

REQUESTS = 60


@pytest.fixture
def summarised_server(
    tmp_path: Path, triton_model_repository: Path, simbatch_spec: SimBatchSpec
) -> Iterator[LocalTritonServer]:
    server = LocalTritonServer(
        triton_model_repository,
        tmp_path / "triton",
        load_models=[simbatch_spec.name],
        stop_timeout_s=6.0,
        extra_args=[SUMMARY_LATENCIES_ARG],
    )
    try:
        server.start()
    except TritonNotInstalledError as error:
        pytest.fail(f"no usable tritonserver: {error}")
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def model_of(server: LocalTritonServer) -> AsyncIterator[TritonModel]:
    client = open_client(server.grpc_url)
    try:
        yield TritonModel(
            client, "simbatch", request_timeout_s=10.0, metrics_url=server.metrics_url
        )
    finally:
        await client.close()


def one_by_one(server: LocalTritonServer, count: int) -> list[float]:
    """Round trips of ``count`` requests sent one after another, in seconds."""
    client = triton_http.InferenceServerClient(server.http_address)
    rows = triton_http.InferInput("INPUT0", [1, 16], "FP32")
    rows.set_data_from_numpy(np.ones([1, 16], dtype=np.float32))
    round_trips = []
    for _ in range(count):
        sent = time.monotonic()
        client.infer("simbatch", [rows])
        round_trips.append(time.monotonic() - sent)
    client.close()
    return round_trips


async def test_p99_is_bounded_by_the_models_sleep_and_the_clients_round_trips(
    summarised_server: LocalTritonServer, simbatch_spec: SimBatchSpec
) -> None:
    async with model_of(summarised_server) as model:
        before = await model.counters()
        assert before.p99_latency_ms is None, "no request yet: Triton's quantiles are NaN"
        round_trips = one_by_one(summarised_server, REQUESTS)
        p99_ms = (await model.counters()).p99_latency_ms
        assert p99_ms is not None
        # Each request is a batch of one: the model sleeps base + one item before answering.
        sleep_ms = simbatch_spec.base_latency_ms + simbatch_spec.per_item_latency_ms
        assert p99_ms >= sleep_ms
        assert p99_ms <= max(round_trips) * 1000


async def test_without_the_summary_option_there_is_no_p99(
    triton_server: LocalTritonServer,
) -> None:
    async with model_of(triton_server) as model:
        one_by_one(triton_server, 5)
        counters = await model.counters()
        assert counters.inferences == 5
        assert counters.p99_latency_ms is None
