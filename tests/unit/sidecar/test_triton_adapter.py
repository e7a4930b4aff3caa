"""The Triton adapter's pure parts: config rewriting, statistics parsing and deltas."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from capinfer_sidecar.triton import (
    Batching,
    ReloadError,
    StatisticsSnapshot,
    TritonModel,
    TritonRequestError,
    TritonUnavailableError,
    config_with_max_batch_size,
    error_from_triton,
    gpu_uuids_in_metrics,
    p99_latency_ms_in_metrics,
    pending_requests_in_metrics,
    throughput_between,
)

# As tritonclient.grpc returns it with as_json=True: int64 as strings, defaults left out.
GRPC_CONFIG: dict[str, Any] = {
    "name": "resnet",
    "max_batch_size": 8,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["16"]}],
    "dynamic_batching": {
        "preferred_batch_size": [2, 4, 8],
        "max_queue_delay_microseconds": "2000",
    },
    "instance_group": [{"name": "resnet_0", "count": 2, "kind": "KIND_GPU"}],
    "parameters": {"k": {"string_value": "v"}},
}


def test_changing_max_batch_size_keeps_the_rest_of_the_config() -> None:
    changed = config_with_max_batch_size(GRPC_CONFIG, 16)
    assert changed["max_batch_size"] == 16
    assert changed["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    for key in ("name", "input", "instance_group", "parameters"):
        assert changed[key] == GRPC_CONFIG[key]
    assert set(changed) == set(GRPC_CONFIG)
    assert GRPC_CONFIG["max_batch_size"] == 8, "the input must not be modified"


def test_a_preferred_size_at_the_old_maximum_follows_the_maximum() -> None:
    grown = config_with_max_batch_size(GRPC_CONFIG, 16)
    assert grown["dynamic_batching"]["preferred_batch_size"] == [2, 4, 16]
    # Triton's own default, [max_batch_size], becomes the new maximum.
    default = dict(GRPC_CONFIG, dynamic_batching={"preferred_batch_size": [8]})
    assert config_with_max_batch_size(default, 32)["dynamic_batching"] == {
        "preferred_batch_size": [32]
    }


def test_preferred_sizes_above_the_new_maximum_are_dropped() -> None:
    changed = config_with_max_batch_size(GRPC_CONFIG, 4)
    assert changed["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert GRPC_CONFIG["dynamic_batching"]["preferred_batch_size"] == [2, 4, 8]


def test_preferred_sizes_go_away_when_none_fits() -> None:
    config = dict(GRPC_CONFIG, dynamic_batching={"preferred_batch_size": [2, 4]})
    changed = config_with_max_batch_size(config, 1)
    assert "preferred_batch_size" not in changed["dynamic_batching"]
    assert Batching.of(changed) == Batching(1, (), dynamic=True)


def test_a_model_without_a_dynamic_batcher_keeps_none() -> None:
    config = {"name": "m", "max_batch_size": 4}
    changed = config_with_max_batch_size(config, 2)
    assert changed == {"name": "m", "max_batch_size": 2}
    assert not Batching.of(changed).dynamic


@pytest.mark.parametrize("size", [0, -1])
def test_a_batch_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        config_with_max_batch_size(GRPC_CONFIG, size)


def test_a_model_that_does_not_batch_is_refused() -> None:
    # gRPC leaves out max_batch_size when it is 0.
    with pytest.raises(ValueError, match="does not batch"):
        config_with_max_batch_size({"name": "m"}, 4)


def grpc_statistics(
    inferences: int, executions: int, queue: tuple[int, int], batches: dict[int, int]
) -> dict[str, Any]:
    return {
        "model_stats": [
            {
                "name": "resnet",
                "version": "1",
                "inference_count": str(inferences),
                "execution_count": str(executions),
                "inference_stats": {
                    "success": {"count": str(inferences), "ns": "1000"},
                    "fail": {},
                    "queue": {"count": str(queue[0]), "ns": str(queue[1])},
                },
                "batch_stats": [
                    {"batch_size": str(size), "compute_infer": {"count": str(n), "ns": "5"}}
                    for size, n in batches.items()
                ],
            },
            {"name": "other", "inference_count": "999"},
        ]
    }


def test_statistics_are_read_from_the_grpc_json_form() -> None:
    snapshot = StatisticsSnapshot.of(
        grpc_statistics(24, 4, (24, 48_000_000), {4: 2, 8: 2}), "resnet", taken_at_s=3.0
    )
    assert snapshot.inference_count == 24
    assert snapshot.execution_count == 4
    assert snapshot.failure_count == 0
    assert snapshot.queue_ns == 48_000_000
    assert snapshot.executions_by_batch_size == {4: 2, 8: 2}


def test_a_model_without_statistics_reads_as_zeros() -> None:
    snapshot = StatisticsSnapshot.of({"model_stats": []}, "resnet", taken_at_s=1.0)
    assert snapshot.inference_count == snapshot.execution_count == 0


def test_throughput_comes_from_counter_deltas() -> None:
    before = StatisticsSnapshot.of(
        grpc_statistics(24, 4, (24, 48_000_000), {4: 2, 8: 2}), "resnet", 10.0
    )
    after = StatisticsSnapshot.of(
        grpc_statistics(88, 12, (88, 112_000_000), {4: 2, 8: 10}), "resnet", 12.0
    )
    sample = throughput_between(before, after)
    assert sample.inferences == 64
    assert sample.executions == 8
    assert sample.inferences_per_second == pytest.approx(32.0)
    assert sample.mean_batch_size == pytest.approx(8.0)
    assert sample.mean_queue_time_s == pytest.approx(0.001)
    assert sample.executions_by_batch_size == {8: 8}
    assert not sample.counters_restarted


def test_counters_that_went_backwards_count_from_zero() -> None:
    before = StatisticsSnapshot.of(grpc_statistics(500, 80, (500, 10**9), {8: 80}), "resnet", 1.0)
    after = StatisticsSnapshot.of(grpc_statistics(12, 3, (12, 10**6), {4: 3}), "resnet", 2.0)
    sample = throughput_between(before, after)
    assert sample.counters_restarted
    assert sample.inferences == 12
    assert sample.executions == 3
    assert sample.executions_by_batch_size == {4: 3}


def test_an_idle_interval_has_no_batch_size_or_queue_time() -> None:
    snapshot = StatisticsSnapshot.of(grpc_statistics(5, 1, (5, 10), {}), "resnet", 1.0)
    later = StatisticsSnapshot.of(grpc_statistics(5, 1, (5, 10), {}), "resnet", 2.0)
    sample = throughput_between(snapshot, later)
    assert sample.inferences_per_second == 0.0
    assert sample.mean_batch_size is None
    assert sample.mean_queue_time_s is None


def test_connection_failures_are_unavailable_and_refusals_are_request_errors() -> None:
    down = InferenceServerException("refused", "StatusCode.UNAVAILABLE")
    assert isinstance(error_from_triton("read", down), TritonUnavailableError)
    slow = InferenceServerException("deadline", "StatusCode.DEADLINE_EXCEEDED")
    assert isinstance(error_from_triton("read", slow), TritonUnavailableError)
    refused = error_from_triton("load", InferenceServerException("bad", "StatusCode.INTERNAL"))
    assert isinstance(refused, TritonRequestError)
    assert refused.message == "bad"
    assert refused.status == "StatusCode.INTERNAL"


class DroppingTriton:
    """Stands in for a Triton whose model drops out when a load fails.

    The real server keeps the old model after a failed load (the integration tests show
    it); this covers the path where it did not, which a real server cannot be made to take.
    """

    def __init__(self, config: dict[str, Any], failing_loads: int) -> None:
        self.config = config
        self.loaded = True
        self.failing_loads = failing_loads
        self.loads: list[dict[str, Any]] = []

    async def get_model_config(self, name: str, **_: Any) -> dict[str, Any]:
        if not self.loaded:
            raise InferenceServerException(f"no model {name}", "StatusCode.NOT_FOUND")
        return {"config": self.config}

    async def is_model_ready(self, name: str, **_: Any) -> bool:
        return self.loaded

    async def load_model(self, name: str, config: str, **_: Any) -> None:
        self.loads.append(json.loads(config))
        if self.failing_loads:
            self.failing_loads -= 1
            self.loaded = False
            raise InferenceServerException("backend crashed", "StatusCode.INTERNAL")
        self.config = json.loads(config)
        self.loaded = True


async def test_a_model_lost_in_a_failed_load_is_restored_with_the_old_config() -> None:
    triton = DroppingTriton(dict(GRPC_CONFIG), failing_loads=1)
    model = TritonModel(triton, "resnet")  # type: ignore[arg-type]
    with pytest.raises(ReloadError) as raised:
        await model.reload_with_max_batch_size(16)
    assert raised.value.rolled_back
    assert raised.value.in_effect_batch_size == 8
    assert raised.value.reason == "backend crashed"
    assert [load["max_batch_size"] for load in triton.loads] == [16, 8]
    assert triton.loaded


async def test_a_failed_restore_says_the_state_is_unknown() -> None:
    triton = DroppingTriton(dict(GRPC_CONFIG), failing_loads=2)
    model = TritonModel(triton, "resnet")  # type: ignore[arg-type]
    with pytest.raises(ReloadError, match="state is unknown") as raised:
        await model.reload_with_max_batch_size(16)
    assert raised.value.in_effect_batch_size is None
    assert not raised.value.rolled_back


# Shaped like tritonserver 2.51's /metrics on a two-GPU node.
TRITON_METRICS = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="resnet",version="1"} 5
nv_inference_pending_request_count{model="resnet",version="2"} 2
nv_inference_pending_request_count{model="other",version="1"} 40
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-3f2a"} 251.3
nv_gpu_power_usage{gpu_uuid="GPU-9c01"} 88.0
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-3f2a"} 0.97
nv_gpu_utilization{gpu_uuid="GPU-9c01"} 0.12
"""


def test_gpu_uuids_come_from_tritons_metric_labels() -> None:
    assert gpu_uuids_in_metrics(TRITON_METRICS) == ["GPU-3f2a", "GPU-9c01"]
    assert gpu_uuids_in_metrics("# TYPE nv_cpu_utilization gauge\nnv_cpu_utilization 0\n") == []


def test_queue_depth_adds_up_the_models_versions() -> None:
    assert pending_requests_in_metrics(TRITON_METRICS, "resnet") == 7
    assert pending_requests_in_metrics(TRITON_METRICS, "absent") is None


# As tritonserver 2.51 writes it with --metrics-config=summary_latencies=true (abridged).
SUMMARY_METRICS = """\
# HELP nv_inference_request_summary_us Summary of inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="simbatch",version="1"} 400
nv_inference_request_summary_us_sum{model="simbatch",version="1"} 11559434
nv_inference_request_summary_us{model="simbatch",version="1",quantile="0.5"} 28092
nv_inference_request_summary_us{model="simbatch",version="1",quantile="0.99"} 57460
nv_inference_request_summary_us_count{model="other",version="1"} 0
nv_inference_request_summary_us_sum{model="other",version="1"} 0
nv_inference_request_summary_us{model="other",version="1",quantile="0.99"} NaN
nv_inference_request_summary_us{model="simbatch",version="2",quantile="0.99"} 31000
"""  # noqa: E501


def test_p99_comes_from_tritons_request_summary_in_ms() -> None:
    # Two versions loaded: their p99s cannot be merged, the higher one bounds the model's.
    assert p99_latency_ms_in_metrics(SUMMARY_METRICS, "simbatch") == pytest.approx(57.46)
    assert p99_latency_ms_in_metrics(SUMMARY_METRICS, "other") is None, "no request yet: NaN"
    assert p99_latency_ms_in_metrics("", "simbatch") is None, "summaries off"
