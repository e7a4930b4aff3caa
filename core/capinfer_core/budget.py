"""Power budgets: split a rack's or a service's watts across many GPUs.

One import for everything a budget controller needs:

- :class:`ThroughputCurve` and :func:`curve_from_measurements` (:mod:`capinfer_core.curve`):
  what a member's GPUs deliver under each per-GPU cap, from what its policy measured;
- :func:`allocate` (:mod:`capinfer_core.allocator`): the per-GPU caps of every member under
  a :class:`SplitPolicy`, never summing over the budget;
- :func:`next_caps` (:mod:`capinfer_core.transit`): the caps to publish on the way to an
  allocation, so that the budget holds in transit too.
"""

from capinfer_core.allocator import Allocation, BudgetMember, SplitPolicy, allocate
from capinfer_core.curve import MAX_CURVE_POINTS, ThroughputCurve, curve_from_measurements
from capinfer_core.transit import CapLedger, counted_watts, next_caps

__all__ = [
    "MAX_CURVE_POINTS",
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
