"""The faults section of a workload: parsed whole, or refused with one clear line."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from capinfer_sidecar.sim.config import CapChange
from capinfer_sidecar.sim.faults import PowerErrorKind, PowerErrorWindow, ReloadFaults, Window
from capinfer_sidecar.sim.workloads import load_workload
from capinfer_sidecar.sim.yamlread import SpecError

JOB = "{name: a, dnn: Res50, dataset: caltech, cap_watts: 200, duration_s: 60, profile: p40"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faulty.yaml"
    path.write_text(dedent(text))
    return path


def test_every_fault_parses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: {profile: p40, duration_s: 60}
        jobs:
          - name: a
            dnn: Res50
            dataset: caltech
            cap_watts: 200
            cap_changes: [{at_s: 10, cap_watts: 150}]
            faults:
              reloads: {fail_sizes: [128, 256], probability: 0.1, hang_sizes: [64]}
              triton_outages: [{at_s: 5, duration_s: 2}, {at_s: 30, duration_s: 1}]
              power_errors:
                - {at_s: 12, duration_s: 1}
                - {at_s: 20, duration_s: 4, kind: lost}
              clock_errors: [{at_s: 0, duration_s: 3}]
              cap_storms: [{at_s: 40, duration_s: 3, period_s: 1, caps_watts: [100, 180]}]
          - {name: b, dnn: Res50, dataset: caltech, cap_watts: 200}
    """,
    )
    a, b = load_workload(path).jobs
    faults = a.config.faults
    assert faults.reloads == ReloadFaults((128, 256), 0.1, (64,))
    assert faults.triton_outages == (Window(5.0, 2.0), Window(30.0, 1.0))
    assert faults.power_errors == (
        PowerErrorWindow(12.0, 1.0, PowerErrorKind.TRANSIENT),
        PowerErrorWindow(20.0, 4.0, PowerErrorKind.LOST),
    )
    assert faults.clock_errors == (Window(0.0, 3.0),)
    # The storm flips every second, then gives the cap back to what was in force.
    assert a.config.cap_changes == (
        CapChange(10.0, 150.0),
        CapChange(40.0, 100.0),
        CapChange(41.0, 180.0),
        CapChange(42.0, 100.0),
        CapChange(43.0, 150.0),
    )
    assert faults.any and not b.config.faults.any


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ("{reload: {}}", r"faults: unknown field 'reload' \(known: cap_storms, clock_errors"),
        ("{reloads: {fail_sizes: [100]}}", r"fail_sizes: batch size 100 is not on the job's"),
        ("{reloads: {probability: 1.5}}", r"reloads\.probability: expected a probability in"),
        (
            "{reloads: {fail_sizes: [64], hang_sizes: [64]}}",
            r"faults\.reloads: batch size 64 is in both fail_sizes and hang_sizes",
        ),
        ("{reloads: {hang_sizes: [64, 32]}}", r"hang_sizes: expected strictly ascending"),
        (
            "{triton_outages: [{at_s: 70, duration_s: 1}]}",
            r"triton_outages\[0\]\.at_s: 70 s is not before the end of the run \(60 s\)",
        ),
        ("{triton_outages: [{at_s: 5}]}", r"triton_outages\[0\]\.duration_s: required field"),
        ("{clock_errors: [{at_s: 5, duration_s: 0}]}", r"duration_s: expected a positive"),
        (
            "{power_errors: [{at_s: 5, duration_s: 3}, {at_s: 7, duration_s: 1}]}",
            r"power_errors\[1\]\.at_s: windows must be in time order without overlapping",
        ),
        (
            "{power_errors: [{at_s: 5, duration_s: 3, kind: flaky}]}",
            r"power_errors\[0\]\.kind: expected one of transient, lost, got 'flaky'",
        ),
        (
            "{cap_storms: [{at_s: 8, duration_s: 4, period_s: 1, caps_watts: [90]}]}",
            r"cap_storms\[0\]\.at_s: the storm from 8 s to 12 s overlaps a cap change at 10 s",
        ),
        (
            "{cap_storms: [{at_s: 20, duration_s: 1, period_s: 2, caps_watts: [90]}]}",
            r"cap_storms\[0\]\.period_s: a period of 2 s is longer than the storm",
        ),
        (
            "{cap_storms: [{at_s: 50, duration_s: 20, period_s: 1, caps_watts: [90]}]}",
            r"the storm ends at 70 s, not before the end of the run \(60 s\)",
        ),
        (
            "{cap_storms: [{at_s: 20, duration_s: 4, period_s: 1, caps_watts: []}]}",
            r"caps_watts: expected at least one cap",
        ),
        ("[1, 2]", r"faults: expected a mapping, got a list"),
    ],
)
def test_bad_faults_say_what_and_where(tmp_path: Path, faults: str, message: str) -> None:
    path = write(
        tmp_path,
        f"jobs:\n  - {JOB}, cap_changes: [{{at_s: 10, cap_watts: 90}}],\n     faults: {faults}}}\n",
    )
    with pytest.raises(SpecError, match=message) as caught:
        load_workload(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


def test_a_storm_that_ends_on_the_cap_in_force_adds_no_change_back(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        jobs:
          - {JOB},
             faults: {{cap_storms: [{{at_s: 20, duration_s: 2, period_s: 1,
                                     caps_watts: [120, 200]}}]}}}}
    """,
    )
    (job,) = load_workload(path).jobs
    assert job.config.cap_changes == (CapChange(20.0, 120.0), CapChange(21.0, 200.0))
