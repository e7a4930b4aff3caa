"""``LocalTritonServer`` runs the wheel's real tritonserver and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http.aio as triton_http

from capinfer.testmodels import (
    SIMBATCH_INPUT,
    SIMBATCH_OUTPUT,
    SimBatchSpec,
    write_model_repository,
)
from capinfer.tritonlocal import LocalTritonServer, TritonStartError, process_group_members

pytestmark = pytest.mark.triton


async def infer_once(server: LocalTritonServer, model: str) -> np.ndarray:
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    request = triton_http.InferInput(SIMBATCH_INPUT, [1, 16], "FP32")
    request.set_data_from_numpy(data)
    async with triton_http.InferenceServerClient(server.http_address) as client:
        result = await client.infer(model, [request])
    output = result.as_numpy(SIMBATCH_OUTPUT)
    assert output is not None
    return output


async def test_serves_the_python_backend_model(triton_server: LocalTritonServer) -> None:
    output = await infer_once(triton_server, "simbatch")
    assert output.tolist() == [[2.0 * i for i in range(16)]]
    assert triton_server.pid is not None
    # The server and at least one Python-backend stub, all in the server's own group.
    assert len(process_group_members(triton_server.pid)) >= 2
    assert triton_server.shared_memory_regions()
    assert "Started HTTPService at 127.0.0.1" in triton_server.log_path.read_text()


async def test_killed_server_leaves_nothing_and_restarts_at_the_same_address(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "models"
    write_model_repository(repository, SimBatchSpec())
    server = LocalTritonServer(repository, tmp_path / "triton", load_models=["simbatch"])
    server.start()
    try:
        pgid = server.pid
        assert pgid is not None
        address = server.http_address
        server.kill()
        assert process_group_members(pgid) == []
        assert server.shared_memory_regions() == []
        assert not server.is_running()

        server.start()
        assert server.http_address == address
        assert (await infer_once(server, "simbatch"))[0, 1] == 2.0
    finally:
        pgid = server.pid
        server.stop()
    assert pgid is not None
    assert process_group_members(pgid) == []
    assert server.shared_memory_regions() == []


def test_a_model_that_fails_to_load_fails_the_start_with_the_reason(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model_repository(repository, SimBatchSpec(max_batch_size=8, max_supported_batch_size=4))
    server = LocalTritonServer(repository, tmp_path / "triton", load_models=["simbatch"])
    with pytest.raises(TritonStartError, match="exceeds what this model supports"):
        server.start()
    assert not server.is_running()
    assert server.shared_memory_regions() == []


def test_not_ready_in_time_fails_with_the_log_and_stops_the_server(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model_repository(repository, SimBatchSpec())
    server = LocalTritonServer(
        repository, tmp_path / "triton", load_models=["simbatch"], ready_timeout_s=0.0
    )
    with pytest.raises(TritonStartError, match="not ready after") as raised:
        server.start()
    assert str(server.log_path) in str(raised.value)
    assert not server.is_running()
    assert server.shared_memory_regions() == []
