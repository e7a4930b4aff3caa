"""The README and the --help texts stay true to the code."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from capinfer_sidecar.follower import SpecStatus
from capinfer_sidecar.loop import LoopSnapshot
from capinfer_sidecar.metrics import SnapshotCollector, SupervisionCollector
from capinfer_sidecar.supervisor import Supervisor

README = Path(__file__).parents[2] / "README.md"


def exposed_metric_names() -> set[str]:
    registry = CollectorRegistry()
    collector = SnapshotCollector({"model": "m", "pod": "p"}).register(registry)
    collector.update(
        LoopSnapshot(
            now_s=1,
            cap_watts=150,
            power_watts=140,
            mean_power_watts=130,
            energy_joules=10,
            batch_size=16,
            requested_batch_size=16,
            sm_clock_mhz=1300,
            inferences_per_second=3,
            seconds_over_cap=0,
            violations=0,
            reloads=1,
            reload_failures=0,
            policy="Adaptive",
            policy_state="settled",
            reason="r",
            clock_control=True,
            degraded=None,
            quarantined_batch_sizes=(32,),
        )
    )
    supervisor = Supervisor(monotonic=lambda: 0.0)

    async def finishes() -> None:
        return None

    asyncio.run(supervisor.supervise("control-loop", finishes))
    SupervisionCollector(supervisor, SpecStatus(), {"model": "m", "pod": "p"}).register(registry)
    text = generate_latest(registry).decode()
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_exposed_metric_is_documented_in_the_readme() -> None:
    readme = README.read_text()
    missing = sorted(name for name in exposed_metric_names() if name not in readme)
    assert missing == []


@pytest.mark.parametrize(
    "module", ["capinfer.cli", "capinfer_sidecar.main", "capinfer_operator.main"]
)
def test_entry_points_answer_help(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text() and "make test" in ci
