"""Triton adapter: the batch knob (a model reload with a config override) and the counters.

Triton changes ``max_batch_size`` only by loading the model again with a ``config``
override (explicit model-control mode). The override replaces the whole configuration, so
the adapter reads the configuration in effect, changes the batching fields only and sends
all of it back. The old model serves until the new one is ready; a failed load leaves it in
place. After every load the adapter reads the configuration back: what it reports as
applied is what Triton says is in effect.

Everything goes over gRPC (``tritonclient.grpc.aio``): a load requested over HTTP was seen
to hold back Triton's HTTP inference requests for the whole reload (tritonserver 2.51),
while a load over gRPC leaves inference flowing on both protocols. gRPC's JSON form spells
64-bit integers as strings and leaves out fields at their defaults; the parsers here accept
both that and the HTTP form.

Statistics restart from zero when a model is reloaded; :func:`throughput_between` treats a
counter that went backwards as restarted, so a sample across a reload undercounts a little
instead of going negative.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tritonclient.grpc.aio as triton_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from capinfer_sidecar.loop import ServerCounters

log = logging.getLogger(__name__)

ModelConfig = dict[str, Any]


class TritonError(Exception):
    """Base of the Triton adapter's errors."""


class TritonUnavailableError(TritonError):
    """Triton did not answer (down, restarting, or too slow): try again later."""


class TritonRequestError(TritonError):
    """Triton answered a request with an error."""

    def __init__(self, operation: str, status: str, message: str) -> None:
        super().__init__(f"{operation}: {message} ({status})")
        self.status = status
        self.message = message


class ReloadError(TritonError):
    """A batch-size change did not take; ``in_effect_batch_size`` is what serves now.

    ``in_effect_batch_size`` is None when even restoring the previous configuration failed.
    """

    def __init__(
        self,
        model_name: str,
        requested_batch_size: int,
        in_effect_batch_size: int | None,
        reason: str,
        *,
        rolled_back: bool,
    ) -> None:
        restored = "; the previous configuration was loaded again" if rolled_back else ""
        in_effect = (
            f"max batch size {in_effect_batch_size} is in effect"
            if in_effect_batch_size is not None
            else "the model's state is unknown"
        )
        super().__init__(
            f"model {model_name!r}: max batch size {requested_batch_size} did not take "
            f"({reason}); {in_effect}{restored}"
        )
        self.model_name = model_name
        self.requested_batch_size = requested_batch_size
        self.in_effect_batch_size = in_effect_batch_size
        self.reason = reason
        self.rolled_back = rolled_back


_UNAVAILABLE_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def error_from_triton(operation: str, error: InferenceServerException) -> TritonError:
    """Sort a tritonclient error: no answer (retry later) or an answer that says no."""
    status = str(error.status() or "")
    message = str(error.message() or error)
    if any(code in status for code in _UNAVAILABLE_STATUSES):
        return TritonUnavailableError(f"{operation}: {message} ({status})")
    return TritonRequestError(operation, status, message)


# -- configuration: pure ------------------------------------------------------------------
@dataclass(frozen=True)
class Batching:
    """The batching fields of a model configuration."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    dynamic: bool
    """Whether the model has a dynamic batcher at all."""

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Batching:
        dynamic = config.get("dynamic_batching")
        preferred = () if dynamic is None else dynamic.get("preferred_batch_size", ())
        return cls(
            max_batch_size=int(config.get("max_batch_size", 0)),
            preferred_batch_sizes=tuple(int(size) for size in preferred),
            dynamic=dynamic is not None,
        )


def preferred_sizes_for(
    preferred: tuple[int, ...], old_max_batch_size: int, new_max_batch_size: int
) -> list[int]:
    moved = {new_max_batch_size if size == old_max_batch_size else size for size in preferred}
    return sorted(size for size in moved if size <= new_max_batch_size)


def config_with_max_batch_size(config: Mapping[str, Any], max_batch_size: int) -> ModelConfig:
    """A copy of ``config`` with a new ``max_batch_size`` and everything else kept.

    Preferred batch sizes: one at the old maximum follows the maximum (Triton itself fills
    in ``[max_batch_size]`` when a config names none, and left at the old value it would
    keep batches from growing); those above the new maximum are dropped, since Triton
    refuses to load them; an empty list goes away and Triton fills in the new maximum.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    batching = Batching.of(config)
    if batching.max_batch_size < 1:
        raise ValueError(f"model {config.get('name')!r} does not batch (max_batch_size 0)")
    changed: ModelConfig = copy.deepcopy(dict(config))
    changed["max_batch_size"] = max_batch_size
    if batching.dynamic:
        kept = preferred_sizes_for(
            batching.preferred_batch_sizes, batching.max_batch_size, max_batch_size
        )
        if kept:
            changed["dynamic_batching"]["preferred_batch_size"] = kept
        else:
            changed["dynamic_batching"].pop("preferred_batch_size", None)
    return changed


# -- statistics: pure ---------------------------------------------------------------------
def _count(section: Mapping[str, Any], key: str = "count") -> int:
    # gRPC JSON spells int64 as strings and leaves out zeros.
    return int(section.get(key, 0))


@dataclass(frozen=True)
class StatisticsSnapshot:
    """Triton's cumulative counters of one model, read at ``taken_at_s`` (monotonic)."""

    taken_at_s: float
    inference_count: int
    """Inferences executed (batch rows)."""
    execution_count: int
    """Model executions (batches)."""
    success_count: int
    failure_count: int
    queue_count: int
    queue_ns: int
    executions_by_batch_size: Mapping[int, int]

    @classmethod
    def of(
        cls, statistics: Mapping[str, Any], model_name: str, taken_at_s: float
    ) -> StatisticsSnapshot:
        # Several versions may be loaded at once; their counters add up.
        entries = [m for m in statistics.get("model_stats", ()) if m.get("name") == model_name]

        def total(section: str, key: str = "count") -> int:
            return sum(
                _count(entry.get("inference_stats", {}).get(section, {}), key) for entry in entries
            )

        by_size: dict[int, int] = {}
        for entry in entries:
            for batch in entry.get("batch_stats", ()):
                size = int(batch["batch_size"])
                by_size[size] = by_size.get(size, 0) + _count(batch.get("compute_infer", {}))
        return cls(
            taken_at_s=taken_at_s,
            inference_count=sum(_count(entry, "inference_count") for entry in entries),
            execution_count=sum(_count(entry, "execution_count") for entry in entries),
            success_count=total("success"),
            failure_count=total("fail"),
            queue_count=total("queue"),
            queue_ns=total("queue", "ns"),
            executions_by_batch_size=by_size,
        )


@dataclass(frozen=True)
class ThroughputSample:
    """What the model did between two snapshots."""

    duration_s: float
    inferences: int
    executions: int
    failures: int
    inferences_per_second: float
    mean_batch_size: float | None
    """Inferences per execution; None when nothing ran."""
    mean_queue_time_s: float | None
    """Average time a request waited in the queue; None when no request was queued."""
    executions_by_batch_size: Mapping[int, int]
    counters_restarted: bool
    """A counter went backwards (the model was reloaded): counted from zero."""


def _delta(before: int, after: int) -> tuple[int, bool]:
    return (after, True) if after < before else (after - before, False)


def throughput_between(before: StatisticsSnapshot, after: StatisticsSnapshot) -> ThroughputSample:
    duration_s = after.taken_at_s - before.taken_at_s
    inferences, reset_inferences = _delta(before.inference_count, after.inference_count)
    executions, reset_executions = _delta(before.execution_count, after.execution_count)
    failures, reset_failures = _delta(before.failure_count, after.failure_count)
    queued, reset_queue = _delta(before.queue_count, after.queue_count)
    queue_ns, reset_queue_ns = _delta(before.queue_ns, after.queue_ns)
    restarted = any(
        (reset_inferences, reset_executions, reset_failures, reset_queue, reset_queue_ns)
    )
    by_size = {
        size: count - (0 if restarted else before.executions_by_batch_size.get(size, 0))
        for size, count in after.executions_by_batch_size.items()
    }
    return ThroughputSample(
        duration_s=duration_s,
        inferences=inferences,
        executions=executions,
        failures=failures,
        inferences_per_second=inferences / duration_s if duration_s > 0 else 0.0,
        mean_batch_size=inferences / executions if executions else None,
        mean_queue_time_s=queue_ns / queued / 1e9 if queued else None,
        executions_by_batch_size={size: n for size, n in by_size.items() if n > 0},
        counters_restarted=restarted,
    )


# -- Triton's Prometheus metrics: pure parsing, one blocking read -------------------------
def _samples(metrics_text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics_text)
        if family.name == metric
        for sample in family.samples
        if sample.name == metric
    ]


def gpu_uuids_in_metrics(metrics_text: str) -> list[str]:
    """The GPUs Triton serves on, from the ``gpu_uuid`` labels of its GPU metrics.

    This is how the sidecar learns which GPUs its pod's Triton uses without asking the
    kubelet: Triton labels every per-GPU metric with the UUID. Order of first appearance.
    """
    uuids: list[str] = []
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            uuid = sample.labels.get("gpu_uuid")
            if uuid and uuid not in uuids:
                uuids.append(uuid)
    return uuids


def pending_requests_in_metrics(metrics_text: str, model_name: str) -> int | None:
    """Requests queued for ``model_name`` (all versions); None when Triton does not say."""
    counts = [
        value
        for labels, value in _samples(metrics_text, "nv_inference_pending_request_count")
        if labels.get("model") == model_name
    ]
    return int(sum(counts)) if counts else None


REQUEST_SUMMARY = "nv_inference_request_summary_us"
"""Triton's summary of request durations (queue + compute, in the server), exported with
``--metrics-config=summary_latencies=true``: quantiles over a sliding window."""
SUMMARY_LATENCIES_ARG = "--metrics-config=summary_latencies=true"
"""The tritonserver option that turns the latency summaries on (off by default in 2.51)."""


def p99_latency_ms_in_metrics(metrics_text: str, model_name: str) -> float | None:
    """The model's p99 request latency in the server, in ms, from Triton's summary.

    Every version of the model counts; their p99s cannot be merged exactly, so the highest
    stands (an upper bound). None when the summary is off or has seen no request (Triton
    reports NaN then).
    """
    values = [
        value
        for labels, value in _samples(metrics_text, REQUEST_SUMMARY)
        if labels.get("model") == model_name
        and labels.get("quantile") == "0.99"
        and not math.isnan(value)
    ]
    return max(values) / 1000 if values else None


def _read_url(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return bytes(response.read()).decode()


async def read_metrics(metrics_url: str, timeout_s: float = 2.0) -> str:
    """Triton's ``/metrics`` text; :class:`TritonUnavailableError` when it does not answer."""
    try:
        return await asyncio.to_thread(_read_url, metrics_url, timeout_s)
    except (urllib.error.URLError, OSError) as error:
        raise TritonUnavailableError(f"read {metrics_url}: {error}") from error


# -- the adapter --------------------------------------------------------------------------
RECONNECT_BACKOFF_MS = (100, 1000)
"""gRPC reconnect backoff, first and longest: Triton is local, so once it is back (after a
restart, say) the channel should find it within a second, not after gRPC's default of up
to two minutes."""


def open_client(grpc_url: str) -> triton_grpc.InferenceServerClient:
    """A gRPC client for Triton at ``host:port``; the caller closes it."""
    first_ms, longest_ms = RECONNECT_BACKOFF_MS
    return triton_grpc.InferenceServerClient(
        grpc_url,
        channel_args=[
            ("grpc.initial_reconnect_backoff_ms", first_ms),
            ("grpc.min_reconnect_backoff_ms", first_ms),
            ("grpc.max_reconnect_backoff_ms", longest_ms),
            # Keep the long-lived channel checked, as tritonclient's defaults do.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
        ],
    )


@dataclass(frozen=True)
class ReloadResult:
    previous: Batching
    applied: Batching
    duration_s: float
    """Time the load took (zero when nothing had to change)."""

    @property
    def changed(self) -> bool:
        return self.previous != self.applied


class TritonModel:
    """The controlled model on one Triton server.

    ``client`` is a ``tritonclient.grpc.aio.InferenceServerClient`` the caller owns and
    closes. Reads use ``request_timeout_s``; a load may take ``load_timeout_s`` (big
    TensorRT models take tens of seconds). With ``metrics_url`` (Triton's ``/metrics``)
    :meth:`counters` also reports the queue depth.
    """

    def __init__(
        self,
        client: triton_grpc.InferenceServerClient,
        model_name: str,
        *,
        request_timeout_s: float = 5.0,
        load_timeout_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        metrics_url: str | None = None,
    ) -> None:
        self._client = client
        self._metrics_url = metrics_url
        self.model_name = model_name
        self._request_timeout_s = request_timeout_s
        self._load_timeout_s = load_timeout_s
        self._monotonic = monotonic

    async def config(self) -> ModelConfig:
        try:
            response = await self._client.get_model_config(
                self.model_name, as_json=True, client_timeout=self._request_timeout_s
            )
        except InferenceServerException as error:
            raise error_from_triton(f"read the config of {self.model_name!r}", error) from error
        config: ModelConfig = response["config"]
        return config

    async def batching(self) -> Batching:
        return Batching.of(await self.config())

    async def _batching_if_loaded(self) -> Batching | None:
        """The batching in effect; None when Triton has no configuration for the model."""
        try:
            return await self.batching()
        except TritonRequestError:
            return None

    async def is_ready(self) -> bool:
        try:
            ready = await self._client.is_model_ready(
                self.model_name, client_timeout=self._request_timeout_s
            )
        except InferenceServerException as error:
            raise error_from_triton(f"check that {self.model_name!r} is ready", error) from error
        return bool(ready)

    async def statistics(self) -> StatisticsSnapshot:
        try:
            response = await self._client.get_inference_statistics(
                self.model_name, as_json=True, client_timeout=self._request_timeout_s
            )
        except InferenceServerException as error:
            raise error_from_triton(f"read the statistics of {self.model_name!r}", error) from error
        return StatisticsSnapshot.of(response, self.model_name, self._monotonic())

    async def counters(self) -> ServerCounters:
        """The control loop's view: cumulative inferences and batches, the queue, the p99."""
        snapshot = await self.statistics()
        text = await self._metrics_text()
        name = self.model_name
        return ServerCounters(
            inferences=snapshot.inference_count,
            batches=snapshot.execution_count,
            queue_depth=None if text is None else pending_requests_in_metrics(text, name),
            p99_latency_ms=None if text is None else p99_latency_ms_in_metrics(text, name),
        )

    async def queue_depth(self) -> int | None:
        """Requests waiting for the model; None without a metrics URL or an answer."""
        text = await self._metrics_text()
        return None if text is None else pending_requests_in_metrics(text, self.model_name)

    async def _metrics_text(self) -> str | None:
        if self._metrics_url is None:
            return None
        try:
            return await read_metrics(self._metrics_url, self._request_timeout_s)
        except TritonUnavailableError as error:
            log.debug("Triton's metrics unknown: %s", error)
            return None

    async def _load(self, config: Mapping[str, Any]) -> None:
        try:
            await self._client.load_model(
                self.model_name,
                config=json.dumps(config),
                client_timeout=self._load_timeout_s,
            )
        except InferenceServerException as error:
            raise error_from_triton(f"load {self.model_name!r}", error) from error

    async def apply_max_batch_size(self, batch_size: int) -> None:
        """The control loop's batch knob: :meth:`reload_with_max_batch_size`."""
        await self.reload_with_max_batch_size(batch_size)

    async def max_batch_size(self) -> int:
        """The max batch size in effect, as Triton reports it."""
        return (await self.batching()).max_batch_size

    async def reload_with_max_batch_size(self, max_batch_size: int) -> ReloadResult:
        """Reload the model with ``max_batch_size``; confirm it, or restore and raise.

        Raises :class:`ReloadError` when Triton refuses the new configuration (the old one
        keeps serving) and :class:`TritonUnavailableError` when Triton does not answer.
        """
        current = await self.config()
        changed = config_with_max_batch_size(current, max_batch_size)
        return await self.apply_config(changed, previous=current)

    async def apply_config(
        self, config: Mapping[str, Any], previous: Mapping[str, Any] | None = None
    ) -> ReloadResult:
        """Load ``config`` as an override and confirm its max batch size is in effect.

        On failure the model is checked: if it is not ready, or serves another max batch
        size than ``previous``, ``previous`` is loaded again.
        """
        previous = previous if previous is not None else await self.config()
        before, wanted = Batching.of(previous), Batching.of(config)
        if wanted == before:
            return ReloadResult(before, before, 0.0)
        started_s = self._monotonic()
        failure: TritonRequestError | None = None
        try:
            await self._load(config)
        except TritonRequestError as error:
            failure = error
        duration_s = self._monotonic() - started_s
        in_effect = await self._batching_if_loaded()
        # The knob took when Triton serves the new maximum; preferred sizes may differ
        # where Triton filled in its default.
        if failure is None and in_effect and in_effect.max_batch_size == wanted.max_batch_size:
            log.info(
                "model %s reloaded in %.2f s: max batch size %d -> %d",
                self.model_name, duration_s, before.max_batch_size, wanted.max_batch_size,
            )  # fmt: skip
            return ReloadResult(before, in_effect, duration_s)
        reason = failure.message if failure is not None else f"Triton reports {in_effect}"
        if (
            in_effect is not None
            and in_effect.max_batch_size == before.max_batch_size
            and await self.is_ready()
        ):
            raise ReloadError(
                self.model_name, wanted.max_batch_size, before.max_batch_size, reason,
                rolled_back=False,
            )  # fmt: skip
        log.warning("model %s: %s; loading the previous configuration", self.model_name, reason)
        try:
            await self._load(previous)
            restored = await self.batching()
        except TritonRequestError as error:
            raise ReloadError(
                self.model_name, wanted.max_batch_size, None,
                f"{reason}; restoring the previous configuration failed too: {error.message}",
                rolled_back=False,
            ) from error  # fmt: skip
        raise ReloadError(
            self.model_name, wanted.max_batch_size, restored.max_batch_size, reason,
            rolled_back=True,
        )  # fmt: skip
