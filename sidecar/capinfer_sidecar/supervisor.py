"""Supervised background tasks: nothing dies in a log line while the pod looks healthy.

Each long-lived task of the sidecar (the control loop, the cap follower, the status
publisher, the watch of the object) runs under :meth:`Supervisor.supervise`. An
unexpected error is logged with its traceback, counted, and the task started again after
a backoff that doubles per failure in a row, up to ``max_backoff_s``. A task that failed
``failing_after`` times in a row, without running ``healthy_after_s`` in between, is
*failing*: :meth:`Supervisor.problem` names it and its last error, which turns ``/readyz``
red and goes into the pod's status entry. A task that returns has finished (the control
loop after a stop, a power source with nothing more to say) and is not started again.

Time and sleep are passed in, so the whole policy runs on virtual time in tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class TaskState:
    """What the supervisor knows about one task."""

    name: str
    restarts: int = 0
    """Times the task was started again after a failure."""
    failures_in_a_row: int = 0
    """Failures without a healthy run in between."""
    last_error: str | None = None
    started_s: float | None = None
    """When the current attempt started."""
    retry_at_s: float | None = None
    """While waiting to start again: when; None while the task runs."""
    finished: bool = False


@dataclass(frozen=True)
class Problem:
    """A task that keeps failing, and why."""

    task: str
    message: str


@dataclass
class Supervisor:
    monotonic: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    failing_after: int = 3
    """Failures in a row after which a task counts as failing."""
    healthy_after_s: float = 10.0
    """A task that ran this long since its last start has recovered."""
    on_failure: Callable[[str], None] = lambda _: None
    """Called with the task's name after each failure (e.g. to publish the status now)."""

    def __post_init__(self) -> None:
        self._tasks: dict[str, TaskState] = {}

    # -- running -----------------------------------------------------------------------------
    async def supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` until it returns; start it again after each failure."""
        state = self._tasks.setdefault(name, TaskState(name))
        while True:
            state.started_s = self.monotonic()
            state.retry_at_s = None
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay_s = self._failed(state, error)
                log.error(
                    "task %s failed (%d in a row); starting it again in %.1f s",
                    name, state.failures_in_a_row, delay_s, exc_info=error,
                )  # fmt: skip
                self.on_failure(name)
                await self.sleep(delay_s)
                state.restarts += 1
                continue
            state.finished = True
            state.failures_in_a_row = 0
            log.info("task %s finished", name)
            return

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """:meth:`supervise` as an asyncio task of the same name."""
        self._tasks.setdefault(name, TaskState(name))
        return asyncio.create_task(self.supervise(name, factory), name=name)

    def _failed(self, state: TaskState, error: Exception) -> float:
        now = self.monotonic()
        if self._ran_long_enough(state, now):
            state.failures_in_a_row = 0  # a new run of failures, not the old one going on
        state.failures_in_a_row += 1
        state.last_error = f"{type(error).__name__}: {error}"
        delay_s = min(
            self.initial_backoff_s * 2.0 ** (state.failures_in_a_row - 1), self.max_backoff_s
        )
        state.retry_at_s = now + delay_s
        return delay_s

    def _ran_long_enough(self, state: TaskState, now: float) -> bool:
        return state.started_s is not None and now - state.started_s >= self.healthy_after_s

    # -- reading -----------------------------------------------------------------------------
    @property
    def tasks(self) -> list[TaskState]:
        return list(self._tasks.values())

    def failing(self, name: str) -> bool:
        """Whether the task keeps failing (and has not since run ``healthy_after_s``)."""
        state = self._tasks.get(name)
        if state is None or state.failures_in_a_row < self.failing_after:
            return False
        running = state.retry_at_s is None
        return not (running and self._ran_long_enough(state, self.monotonic()))

    def restarting(self, name: str) -> bool:
        """Whether the task is waiting out its backoff after a failure."""
        state = self._tasks.get(name)
        return state is not None and state.retry_at_s is not None

    def problem(self) -> Problem | None:
        """The first failing task (in the order they were started), with its last error."""
        for state in self._tasks.values():
            if self.failing(state.name):
                return Problem(
                    state.name,
                    f"{state.name} keeps failing ({state.failures_in_a_row} times in a row):"
                    f" {state.last_error}",
                )
        return None
