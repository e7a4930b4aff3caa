"""Watching a :class:`~capinfer.localpod.LocalPod` while a fault runs: metrics and readiness.

:class:`PodWatch` scrapes the sidecar's ``/metrics`` and ``/readyz`` every ``period_s`` in
the background, so a test can ask what the sidecar said at every moment of a fault (was it
ever degraded, when did readiness turn red), not only at the moments it looked itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from capinfer.localpod import LocalPod, SidecarSample


@dataclass(frozen=True)
class Seen:
    """One look at the sidecar: its metrics and its readiness (status code and reason)."""

    sample: SidecarSample
    ready_code: int
    ready_text: str

    @property
    def at_s(self) -> float:
        return self.sample.at_s

    @property
    def ready(self) -> bool:
        return self.ready_code == 200


class PodWatch:
    def __init__(self, pod: LocalPod, period_s: float = 0.05) -> None:
        self._pod = pod
        self._period_s = period_s
        self.seen: list[Seen] = []
        self.unanswered = 0
        """Looks that got no answer at all (the sidecar's HTTP server did not respond)."""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PodWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _look(self) -> Seen | None:
        try:
            sample = self._pod.scrape()
            code, text = self._pod.probe("/readyz")
        except (urllib.error.URLError, OSError):
            return None
        return Seen(sample, code, text)

    async def _run(self) -> None:
        while True:
            seen = await asyncio.to_thread(self._look)
            if seen is None:
                self.unanswered += 1
            else:
                self.seen.append(seen)
            await asyncio.sleep(self._period_s)

    def since(self, start_s: float) -> list[Seen]:
        return [s for s in self.seen if s.at_s >= start_s]

    async def wait_for(
        self, what: str, check: Callable[[Seen], bool], since_s: float, timeout_s: float = 60
    ) -> Seen:
        """The first look since ``since_s`` that passes ``check``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for seen in self.since(since_s):
                if check(seen):
                    return seen
            if time.monotonic() > deadline:
                last = self.seen[-1] if self.seen else None
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last}")
            await asyncio.sleep(self._period_s)


def log_since(path: Path, offset: int) -> str:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


async def wait_for_log(path: Path, offset: int, text: str, timeout_s: float = 30) -> str:
    """The log written since ``offset``, once it holds ``text``."""
    deadline = time.monotonic() + timeout_s
    while text not in (written := log_since(path, offset)):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} never appeared in {path} within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
    return written


def over_cap_between(first: SidecarSample, last: SidecarSample) -> float:
    """Seconds the sidecar measured over the cap between two scrapes."""
    assert first.over_cap_seconds is not None and last.over_cap_seconds is not None
    return last.over_cap_seconds - first.over_cap_seconds


def mean_power_between(first: SidecarSample, last: SidecarSample) -> float:
    """Mean GPU power between two scrapes, from the GPU's own energy counter."""
    assert first.energy_joules is not None and last.energy_joules is not None
    return (last.energy_joules - first.energy_joules) / (last.at_s - first.at_s)
