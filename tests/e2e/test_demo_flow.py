"""End to end: the demo's flow, asserted.

The real operator on the local control plane creates the Deployment; kwok marks its pod
Running on a fake GPU node; the pod's own containers (Triton and the sidecar, from the
rendered pod spec) then run here on a virtual GPU under load; the cap is lowered and raised
with a patch of the object. Power must settle under each new cap, the object's status must
follow, no request may fail, and deleting the object must remove everything.

The node agent runs here as well (with the chart's RBAC; the kubelet's pod-resources API
served from its published proto, since kwok has no kubelet): the sidecar's clocks and the
board power limit go through it, the limit follows the cap (clamped at the virtual P40's
125 W minimum, which the status says), and the GPU gets its defaults back once the pod is
gone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capinfer.demo import CapStep, Demo, DemoPlan, phase_summary
from capinfer.localcluster.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.triton]

PLAN = DemoPlan(
    steps=(CapStep(0, 150), CapStep(30, 100), CapStep(60, 180)),
    duration_s=90,
    concurrency=64,
    report_every_s=5,
)


def test_the_demo_flow(cluster: LocalCluster, operator_process: Path, tmp_path: Path) -> None:
    demo = Demo(tmp_path, PLAN, print, cluster=cluster, run_operator=False)
    result = demo.run()

    assert result.pod_name, "no pod became Running on a fake GPU node"
    assert result.load is not None
    assert result.load.failed == 0 and result.load.wrong == 0, result.load.errors
    assert result.status_caps == [150.0, 100.0, 180.0], "the status entry did not follow"
    for row in phase_summary(result, PLAN):
        cap = row["cap_watts"]
        power, rate = row["median_power_watts"], row["median_inferences_per_second"]
        print(
            f"cap {cap:.0f} W: median {power:.1f} W, {row['share_over_cap']:.0%} over, {rate:.0f}/s"
        )
        assert row["median_power_watts"] <= cap
        assert row["median_power_watts"] >= 0.7 * cap, "power settled far below the cap"
        assert row["share_over_cap"] <= 0.1
    assert result.cleaned_up, "children survived the deletion of the object"

    clocks = sorted({s.sm_clock_mhz for s in result.samples if s.sm_clock_mhz is not None})
    print(f"SM clocks locked through the node agent: {clocks}")
    print(f"board limits: {result.power_limits}; notes: {result.backstop_notes}")
    print(f"GPU reset {result.gpu_reset_s} s after the object was deleted")
    assert clocks, "the sidecar never locked a clock through the node agent"
    assert result.power_limits == [150.0, 125.0, 180.0], "the board limit did not follow the cap"
    assert result.backstop_notes[0] is None and result.backstop_notes[2] is None
    assert "below the card's minimum power limit 125 W" in str(result.backstop_notes[1])
    assert result.gpu_reset_s is not None, "the GPU kept the deleted pod's clock or limit"
