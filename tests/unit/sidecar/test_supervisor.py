"""The task supervisor, on virtual time: restarts, backoff, failing tasks, recovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from capinfer_sidecar.supervisor import Supervisor


class VirtualTime:
    def __init__(self) -> None:
        self.now_s = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds
        await asyncio.sleep(0)


def failing_then(
    failures: list[Exception], then: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """A task factory whose first attempts raise the given errors, then runs ``then``."""
    remaining = list(failures)

    async def attempt() -> None:
        if remaining:
            raise remaining.pop(0)
        await then()

    return attempt


async def returns() -> None:
    return None


def make(time: VirtualTime, **options: float) -> Supervisor:
    return Supervisor(
        monotonic=time.monotonic,
        sleep=time.sleep,
        initial_backoff_s=0.5,
        max_backoff_s=4.0,
        failing_after=3,
        healthy_after_s=10.0,
        **options,  # type: ignore[arg-type]
    )


async def test_a_failing_task_is_logged_with_its_traceback_counted_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = VirtualTime()
    supervisor = make(time)
    failed: list[str] = []
    supervisor.on_failure = failed.append
    factory = failing_then([RuntimeError("NVML timeout"), KeyError("x")], returns)
    await supervisor.supervise("control-loop", factory)
    (state,) = supervisor.tasks
    assert state.restarts == 2 and state.finished
    assert time.sleeps == [0.5, 1.0]
    assert failed == ["control-loop", "control-loop"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and errors[0].exc_info is not None
    assert "control-loop failed" in errors[0].getMessage()
    assert supervisor.problem() is None


async def test_backoff_doubles_up_to_its_cap() -> None:
    time = VirtualTime()
    supervisor = make(time)
    await supervisor.supervise("status", failing_then([ValueError()] * 6, returns))
    assert time.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_a_task_that_keeps_failing_is_reported_until_it_runs_long_enough() -> None:
    time = VirtualTime()
    supervisor = make(time)
    running, release = asyncio.Event(), asyncio.Event()

    async def run_until_released() -> None:
        running.set()
        await release.wait()

    errors: list[Exception] = [OSError("one"), OSError("two"), OSError("GPU is lost")]
    factory = failing_then(errors, run_until_released)
    task = asyncio.create_task(supervisor.supervise("control-loop", factory))
    await running.wait()  # the fourth attempt, after three failures
    assert len(time.sleeps) == 3
    assert not supervisor.restarting("control-loop")
    problem = supervisor.problem()
    assert problem is not None and problem.task == "control-loop"
    assert "3 times in a row" in problem.message and "GPU is lost" in problem.message
    time.now_s += 9.9
    assert supervisor.failing("control-loop")
    time.now_s += 0.2
    assert supervisor.problem() is None
    release.set()
    await task


async def test_one_failure_is_not_yet_a_failing_task() -> None:
    time = VirtualTime()
    supervisor = make(time)
    sleeping, gate = asyncio.Event(), asyncio.Event()

    async def sleep_until_gate(seconds: float) -> None:
        time.sleeps.append(seconds)
        sleeping.set()
        await gate.wait()
        time.now_s += seconds

    supervisor.sleep = sleep_until_gate
    task = asyncio.create_task(supervisor.supervise("watch", failing_then([OSError()], returns)))
    await sleeping.wait()
    assert supervisor.restarting("watch")
    assert not supervisor.failing("watch") and supervisor.problem() is None
    gate.set()
    await task


async def test_a_failure_after_a_healthy_run_starts_a_new_count() -> None:
    time = VirtualTime()
    supervisor = make(time)
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts in (1, 2):
            raise RuntimeError("early")
        if attempts == 3:
            time.now_s += 60  # a long healthy run, then another failure
            raise RuntimeError("late")

    await supervisor.supervise("control-loop", flaky)
    assert time.sleeps == [0.5, 1.0, 0.5]
    assert supervisor.tasks[0].restarts == 3


async def test_cancelling_stops_supervision_without_a_restart() -> None:
    time = VirtualTime()
    supervisor = make(time)
    forever = asyncio.Event()
    task = supervisor.start("status", forever.wait)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert supervisor.tasks[0].restarts == 0 and time.sleeps == []
    assert task.get_name() == "status"
