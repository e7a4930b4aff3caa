"""``simbatch``: a Triton Python-backend model that simulates a GPU model's batch latency.

This file is the model's ``model.py``: :func:`capinfer.testmodels.write_model_repository`
copies it into a model repository, and Triton's Python-backend stub runs it. It never runs
inside capinfer itself.

Each ``execute`` call is one batch formed by Triton's dynamic batcher. The model sleeps for
``base_latency_ms + per_item_latency_ms * size`` (config parameters) and returns
``OUTPUT0 = 2 * INPUT0``, so clients can check every answer.

Batch report: when the config parameter ``batch_report_path`` (or else the environment
variable ``CAPINFER_BATCH_REPORT``) names a path, the model reports every executed batch as
one line ``"<size> <start_s> <end_s>\\n"``: the number of rows in the batch and its start and
end on ``CLOCK_MONOTONIC`` in seconds (``time.monotonic()``, which is system-wide on Linux,
so another process on the host can compare it with its own clock). A UNIX datagram socket
at that path (or any path ending in ``.sock``, bound now or later) gets one datagram per
batch; any other path is a file the line is appended to.
A report that cannot be delivered never fails an inference.

Start reports: a socket also gets ``"S <size> <start_s>\n"`` when a batch begins, so a
virtual GPU can draw the batch's power while it runs, not only after it ended.

Latency table: when the parameter ``latency_table_path`` (or the environment variable
``CAPINFER_LATENCY_TABLE``) names a JSON file ``{"batch_sizes": [...], "latency_s": [...]}``,
a batch sleeps for the latency interpolated from it (the virtual GPU rewrites it when its
SM clock changes); the file is re-read when it changes. Otherwise the fixed formula holds.

Load-time check: ``max_supported_batch_size`` (default 1024) stands for what a real model
supports (a TensorRT engine's largest profile, say); loading with a larger
``max_batch_size`` fails in ``initialize``, the way such a model fails to load.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

REPORT_ENV = "CAPINFER_BATCH_REPORT"
LATENCY_TABLE_ENV = "CAPINFER_LATENCY_TABLE"


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return str(value) if value != "" else default


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


class _BatchReporter:
    """Delivers ``size start end`` lines to a datagram socket or appends them to a file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._socket: socket.socket | None = None
        self._fd: int | None = None
        self._failed = False
        # A ".sock" path is a datagram socket that may be bound after this model loads
        # (the sidecar and Triton start together); until then reports are dropped.
        if path.endswith(".sock") or _is_socket(path):
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        else:
            # O_APPEND: one write per line, so concurrent instances never interleave lines.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def report_start(self, size: int, start_s: float) -> None:
        if self._socket is not None:
            self._send(f"S {size} {start_s:.6f}\n".encode())

    def report(self, size: int, start_s: float, end_s: float) -> None:
        self._send(f"{size} {start_s:.6f} {end_s:.6f}\n".encode())

    def _send(self, line: bytes) -> None:
        try:
            if self._socket is not None:
                self._socket.sendto(line, self._path)
            elif self._fd is not None:
                os.write(self._fd, line)
        except OSError as error:
            if not self._failed:
                self._failed = True
                print(f"simbatch: cannot report batches to {self._path}: {error}", flush=True)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._fd is not None:
            os.close(self._fd)


class _LatencyTable:
    """Batch latency by size from a JSON file another process rewrites atomically."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._mtime_ns = -1
        self._sizes: list[int] = []
        self._latencies_s: list[float] = []

    def latency_s(self, size: int) -> float | None:
        try:
            mtime_ns = os.stat(self._path).st_mtime_ns
            if mtime_ns != self._mtime_ns:
                with open(self._path) as handle:
                    table = json.load(handle)
                self._sizes = [int(s) for s in table["batch_sizes"]]
                self._latencies_s = [float(x) for x in table["latency_s"]]
                self._mtime_ns = mtime_ns
        except (OSError, ValueError, KeyError):
            pass  # keep the last table; with none yet, the caller's formula holds
        if not self._sizes:
            return None
        return float(np.interp(size, self._sizes, self._latencies_s))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config: dict[str, Any] = json.loads(args["model_config"])
        self._base_latency_s = float(_parameter(config, "base_latency_ms", "5")) / 1000.0
        self._per_item_latency_s = float(_parameter(config, "per_item_latency_ms", "0.5")) / 1000.0
        max_supported = int(_parameter(config, "max_supported_batch_size", "1024"))
        max_batch_size = int(config.get("max_batch_size", 0))
        if max_batch_size > max_supported:
            raise ValueError(
                f"max_batch_size {max_batch_size} exceeds what this model supports "
                f"({max_supported})"
            )
        report_path = _parameter(config, "batch_report_path", os.environ.get(REPORT_ENV, ""))
        self._reporter = _BatchReporter(report_path) if report_path else None
        table_path = _parameter(config, "latency_table_path", os.environ.get(LATENCY_TABLE_ENV, ""))
        self._table = _LatencyTable(table_path) if table_path else None

    def _latency_s(self, size: int) -> float:
        from_table = self._table.latency_s(size) if self._table is not None else None
        if from_table is not None:
            return from_table
        return self._base_latency_s + self._per_item_latency_s * size

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        size = sum(int(array.shape[0]) for array in inputs)
        start_s = time.monotonic()
        if self._reporter is not None:
            self._reporter.report_start(size, start_s)
        time.sleep(self._latency_s(size))
        end_s = time.monotonic()
        responses = [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", (array * 2).astype(np.float32))]
            )
            for array in inputs
        ]
        if self._reporter is not None:
            self._reporter.report(size, start_s, end_s)
        return responses

    def finalize(self) -> None:
        if self._reporter is not None:
            self._reporter.close()
