"""capinfer's control core: pure arithmetic shared by the operator and the sidecar.

Nothing here talks to Kubernetes, NVML or Triton, and nothing here imports the operator,
the sidecar, the node agent or the CLI (import-linter checks both): a budget split is a
function of numbers, testable and benchmarkable alone.
"""

from capinfer_core.budget import (
    Allocation,
    BudgetMember,
    CapLedger,
    SplitPolicy,
    ThroughputCurve,
    allocate,
    counted_watts,
    curve_from_measurements,
    next_caps,
)

__all__ = [
    "Allocation",
    "BudgetMember",
    "CapLedger",
    "SplitPolicy",
    "ThroughputCurve",
    "allocate",
    "counted_watts",
    "curve_from_measurements",
    "next_caps",
]
