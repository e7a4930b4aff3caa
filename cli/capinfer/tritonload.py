"""Closed-loop inference load against a ``simbatch`` model, counting every failure.

Each of ``concurrency`` workers sends a request, checks the answer (``OUTPUT0`` must be
``2 * INPUT0``) and sends the next one at once, so the server always has ``concurrency``
requests in flight: enough for the dynamic batcher to form batches. Used by the tests that
change batching under load and by the demo's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import tritonclient.http.aio as triton_http

from capinfer.testmodels import SIMBATCH_INPUT, SIMBATCH_OUTPUT

_KEPT_ERRORS = 10


@dataclass
class LoadCounts:
    """Live counters of a running load; read them while it runs."""

    succeeded: int = 0
    failed: int = 0
    """Requests the server answered with an error, or that never got an answer."""
    wrong: int = 0
    """Requests answered with an output that is not ``2 * INPUT0``."""
    errors: list[str] = field(default_factory=list)
    """The first few failure messages, for the assertion message."""
    failures_sent_s: list[float] = field(default_factory=list)
    """When each failed request was sent (``time.monotonic()``): fault tests tell failures
    during an outage from later ones."""
    last_errors: list[str] = field(default_factory=list)
    """The last few failure messages."""

    @property
    def completed(self) -> int:
        return self.succeeded + self.failed + self.wrong

    def record_failure(self, message: str, sent_s: float) -> None:
        self.failed += 1
        self.failures_sent_s.append(sent_s)
        if len(self.errors) < _KEPT_ERRORS:
            self.errors.append(message)
        self.last_errors = [*self.last_errors[1 - _KEPT_ERRORS :], message]


class ClosedLoopLoad:
    """``concurrency`` workers sending requests back to back until :meth:`stop`."""

    def __init__(
        self,
        http_address: str,
        model_name: str,
        *,
        concurrency: int,
        rows_per_request: int = 1,
        row_width: int = 16,
        request_timeout_s: float = 60.0,
    ) -> None:
        self._client = triton_http.InferenceServerClient(
            http_address, conn_limit=concurrency, conn_timeout=request_timeout_s
        )
        self._model_name = model_name
        self._concurrency = concurrency
        self._rows = rows_per_request
        self._row_width = row_width
        self._stopping = asyncio.Event()
        self._progress = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.counts = LoadCounts()

    async def __aenter__(self) -> ClosedLoopLoad:
        self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._worker(seed)) for seed in range(self._concurrency)
        ]

    async def stop(self) -> LoadCounts:
        """Let every in-flight request finish, then close the client."""
        self._stopping.set()
        try:
            await asyncio.gather(*self._workers)
        finally:
            await self._client.close()
        return self.counts

    async def wait_for_completed(self, count: int, timeout_s: float = 120.0) -> None:
        """Return once ``count`` more requests have completed (succeeded or not)."""
        target = self.counts.completed + count
        async with asyncio.timeout(timeout_s):
            while self.counts.completed < target:
                self._progress.clear()
                await self._progress.wait()

    async def _worker(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stopping.is_set():
            data = rng.random((self._rows, self._row_width), dtype=np.float32)
            request = triton_http.InferInput(SIMBATCH_INPUT, list(data.shape), "FP32")
            request.set_data_from_numpy(data)
            sent_s = time.monotonic()
            try:
                result = await self._client.infer(self._model_name, [request])
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure is what the caller counts
                self.counts.record_failure(f"{type(error).__name__}: {error}", sent_s)
                self._progress.set()
                # Do not spin on a dead server; a failure is already on the books.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=0.05)
                continue
            output = result.as_numpy(SIMBATCH_OUTPUT)
            if output is not None and np.allclose(output, data * 2):
                self.counts.succeeded += 1
            else:
                self.counts.wrong += 1
            self._progress.set()
