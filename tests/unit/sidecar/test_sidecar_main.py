"""The daemon's glue: the power file as a source, and what the status entry says."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from test_metrics import SNAPSHOT

from capinfer_sidecar.main import Sidecar, build_parser, power_file_changes
from capinfer_sidecar.settings import InvalidPowerSpecError


async def test_an_unreadable_power_file_is_yielded_as_its_error(tmp_path: Path) -> None:
    power_file = tmp_path / "power.yaml"
    power_file.write_text("capWatts: 150\npolicy: Adaptive\n")
    args = build_parser().parse_args(["--model", "m", "--power-file", str(power_file)])
    polls = 0

    async def sleep(_: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 1:
            power_file.write_text("capWatts: [150\n")  # broken YAML
        elif polls == 2:
            power_file.write_text("capWatts: 120\npolicy: Adaptive\n")
        os.utime(power_file, ns=(polls * 10**9, polls * 10**9))  # a new mtime, whatever the FS
        await asyncio.sleep(0)

    changes = power_file_changes(args, sleep=sleep)
    first, second, third = [await anext(changes) for _ in range(3)]
    assert first == {"capWatts": 150, "policy": "Adaptive"}
    assert isinstance(second, InvalidPowerSpecError) and "power.yaml" in str(second)
    assert third == {"capWatts": 120, "policy": "Adaptive"}


async def test_the_status_entry_names_a_failing_task_and_a_rejected_spec() -> None:
    args = build_parser().parse_args(["--model", "m", "--cap-watts", "150", "--pod-name", "p"])
    sidecar = Sidecar.create(args)
    assert sidecar.status_entry(["GPU-1"], None) is None  # nothing true to say yet
    sidecar.health.sampled(None)
    assert sidecar.health.ready() == (True, "ok")

    sidecar.spec_status.problem = "spec.power not applied: unknown policy 'Adptive'"
    entry = sidecar.status_entry(["GPU-1"], SNAPSHOT)
    assert entry["problem"] == sidecar.spec_status.problem
    assert "failedTask" not in entry

    async def fails() -> None:
        raise OSError("NVML timeout")

    third_failure = asyncio.Event()
    backoffs = 0

    async def backoff(_: float) -> None:
        nonlocal backoffs
        backoffs += 1
        if backoffs == 3:
            third_failure.set()
            await asyncio.Event().wait()  # stays in its backoff

    sidecar.supervisor.sleep = backoff
    task = sidecar.supervisor.start("control-loop", fails)
    await third_failure.wait()
    assert sidecar.publish_now.is_set()  # a failure is published at once
    task.cancel()
    entry = sidecar.status_entry(["GPU-1"], None)
    assert entry["failedTask"] == "control-loop"
    assert entry["problem"].startswith("control-loop keeps failing")
    assert "unknown policy" in entry["problem"]
    ready, why = sidecar.health.ready()
    assert not ready and why.startswith("control-loop keeps failing")
