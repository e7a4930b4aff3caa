"""What the control loop needs from the GPU and from Triton: its ports.

Pure (no NVML, no gRPC), so every side can implement them: the NVML and Triton adapters in
the pod, and the simulated GPU and Triton of :mod:`capinfer_sidecar.sim.world` in the
benchmark, which runs the same :class:`~capinfer_sidecar.loop.ControlLoop` on virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class PowerMeter(Protocol):
    """The GPU side the loop needs: readings and the clock knob."""

    def power_watts(self) -> float: ...

    def energy_joules(self) -> float: ...

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None: ...

    def reset_sm_clock(self) -> None: ...


@dataclass(frozen=True)
class ServerCounters:
    """Cumulative counters of the controlled model, from Triton's statistics."""

    inferences: int
    batches: int
    queue_depth: int | None = None
    p99_latency_ms: float | None = None
    """The model's p99 request latency in the server over its recent window; None when the
    server does not measure it."""


class InferenceServer(Protocol):
    """The Triton side the loop needs."""

    async def counters(self) -> ServerCounters: ...

    async def apply_max_batch_size(self, batch_size: int) -> None: ...

    async def max_batch_size(self) -> int:
        """The max batch size the server has in effect (read back after an outage)."""
        ...
