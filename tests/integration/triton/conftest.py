"""Fixtures for tests against a real ``tritonserver`` (the one in the nvidia-pytriton wheel).

``triton_server`` starts a fresh server per test with the ``simbatch`` Python-backend model
(``simbatch_spec``; override that fixture in a test module to change the model) loaded in
explicit model-control mode, and stops it at teardown. Teardown fails the test if any
process of the server's group or any of its shared-memory regions is left behind. A server
that cannot be found or started fails the test: it is never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capinfer.testmodels import SimBatchSpec, write_model_repository
from capinfer.tritonlocal import LocalTritonServer, TritonNotInstalledError, process_group_members


@pytest.fixture
def batch_report_path(tmp_path: Path) -> Path:
    """Where the ``simbatch`` model appends one ``size start end`` line per executed batch."""
    return tmp_path / "batches.log"


@pytest.fixture
def simbatch_spec(batch_report_path: Path) -> SimBatchSpec:
    return SimBatchSpec(
        name="simbatch",
        max_batch_size=8,
        max_queue_delay_us=5000,
        base_latency_ms=10.0,
        per_item_latency_ms=1.0,
        max_supported_batch_size=64,
        batch_report_path=str(batch_report_path),
    )


@pytest.fixture
def triton_model_repository(tmp_path: Path, simbatch_spec: SimBatchSpec) -> Path:
    repository = tmp_path / "models"
    write_model_repository(repository, simbatch_spec)
    return repository


@pytest.fixture
def triton_server(
    tmp_path: Path, triton_model_repository: Path, simbatch_spec: SimBatchSpec
) -> Iterator[LocalTritonServer]:
    # After a failed reload tritonserver 2.51 counts a phantom live model and waits out its
    # whole exit timeout on SIGTERM; a short grace keeps such tests quick.
    server = LocalTritonServer(
        triton_model_repository,
        tmp_path / "triton",
        load_models=[simbatch_spec.name],
        stop_timeout_s=6.0,
    )
    try:
        server.start()
    except TritonNotInstalledError as error:
        pytest.fail(f"no usable tritonserver: {error}")
    pgid = server.pid
    try:
        yield server
    finally:
        server.stop()
    leftovers = process_group_members(pgid) if pgid is not None else []
    regions = server.shared_memory_regions()
    if leftovers or regions:
        pytest.fail(f"tritonserver left processes {leftovers} and shared memory {regions}")
