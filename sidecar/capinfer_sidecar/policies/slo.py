"""The latency SLO as a constraint beside the cap, the same for every policy.

A policy chooses from the batch-size ladder it is given. :class:`LatencyGuard` shortens that
ladder when the measured p99 latency is over ``spec.latencySLO.p99Ms`` and lengthens it
again once there is slack, so every policy keeps its own logic and simply meets a smaller
ladder (through :meth:`~capinfer_sidecar.policies.base.Policy.update_settings`, the way a
patched ``batchSizes`` reaches it). A smaller batch never draws more power, so the guard
can never push a GPU over its cap. It never touches the clock: a faster clock would cost
power the cap may not have. While the p99 is over the SLO and the guard has nothing left
to do -- the policy holds the clock below its top to keep the cap (the cap wins), or the
smallest batch size is in effect -- :attr:`LatencyGuard.unmet` says why.

A smaller batch only helps while the GPU keeps up with the load: each batch then runs
sooner and shorter. When requests pile up (more waiting than one batch takes), latency is
queueing, and a smaller batch would serve fewer requests per second and make the queue
grow: then the guard gives a rung back at once instead (a reload's time after its last
move), does not go under
it again until the load has eased (slack), and says the load is more than the SLO allows.

Pure: no clock, no I/O. The driver hands it each p99 reading with the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capinfer_sidecar.policies.base import Knobs

RELAX_BELOW = 0.7
"""The ladder grows back only while p99 stays under this fraction of the SLO (slack): a
rung up adds a batch's worth of latency, so it must fit under the SLO."""
TIGHTEN_EVERY_S = 60.0
"""At most one rung down per this many seconds: Triton's p99 is a sliding window (60 s in
2.51), so only after a whole window does it speak of the smaller batch alone; sooner, the
guard would keep stepping down on the old size's latencies."""
BACKLOG_RELAX_EVERY_S = 5.0
"""Under a backlog a rung comes back this soon after the last move (a reload's time): a
queue that grows is worse than any p99 the window shows."""
RELAX_AFTER_S = 60.0
"""One rung up only after this long with slack: a whole window of Triton's p99."""


@dataclass
class LatencyGuard:
    """Caps the batch-size ladder so that p99 latency stays under ``slo_ms`` (cap first)."""

    slo_ms: float
    started_s: float = -1e18
    """When the SLO took effect: the first rung goes only a window later, since until then
    Triton's p99 still holds what happened before (a start, a policy finding its feet)."""
    tighten_every_s: float = TIGHTEN_EVERY_S
    relax_after_s: float = RELAX_AFTER_S
    backlog_relax_every_s: float = BACKLOG_RELAX_EVERY_S
    relax_below: float = RELAX_BELOW
    ceiling: int | None = None
    """The largest batch size the policy may use; None: the whole ladder."""
    p99_ms: float | None = None
    """The latest p99 reading, None until Triton reports one."""
    misses: int = 0
    """Times p99 went over the SLO (each run of samples over it counts once)."""
    seconds_over_slo: float = 0.0
    unmet: str | None = None
    """Why the SLO is missed and the guard cannot help without costing the cap; None when
    the SLO holds or the guard can still act."""
    _last_move_s: float = field(default=-1e18, init=False)
    _floor: int | None = field(default=None, init=False)
    """The smallest ceiling worth trying: under it, requests piled up (until slack)."""
    _slack_since_s: float | None = field(default=None, init=False)
    _over: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.slo_ms <= 0:
            raise ValueError(f"slo_ms must be positive, got {self.slo_ms}")
        self._last_move_s = self.started_s

    def ladder(self, batch_sizes: tuple[int, ...]) -> tuple[int, ...]:
        """The rungs a policy may use now: never empty (the smallest rung always stays)."""
        if self.ceiling is None:
            return batch_sizes
        allowed = tuple(size for size in batch_sizes if size <= self.ceiling)
        return allowed or batch_sizes[:1]

    def observe(
        self,
        p99_ms: float | None,
        *,
        applied: Knobs,
        queue_depth: int | None = None,
        batch_sizes: tuple[int, ...],
        clock_levels_mhz: tuple[int, ...],
        now_s: float,
        interval_s: float,
    ) -> bool:
        """Take one p99 reading; True when the ladder changed."""
        self.p99_ms = p99_ms
        if p99_ms is None:
            self._over = False
            self.unmet = None
            return False
        over = p99_ms > self.slo_ms
        if over:
            self.seconds_over_slo += interval_s
            if not self._over:
                self.misses += 1
        self._over = over
        before = self.ceiling
        backlog = queue_depth is not None and queue_depth > applied.batch_size
        if over and backlog:
            self._slack_since_s = None
            if now_s - self._last_move_s >= self.backlog_relax_every_s:
                self._relax(batch_sizes, now_s)
                above = [size for size in batch_sizes if size > applied.batch_size]
                self._floor = above[0] if above else applied.batch_size
        elif over:
            self._slack_since_s = None
            self._tighten(applied.batch_size, batch_sizes, now_s)
        elif p99_ms < self.relax_below * self.slo_ms:
            if self._slack_since_s is None:
                self._slack_since_s = now_s
            if now_s - self._slack_since_s >= self.relax_after_s:
                self._relax(batch_sizes, now_s)
                self._floor = None
        else:
            self._slack_since_s = None
        self.unmet = self._why_unmet(over, applied, batch_sizes, clock_levels_mhz)
        if over and backlog and self.unmet is None:
            self.unmet = (
                f"p99 {p99_ms:.1f} ms is over the SLO {self.slo_ms:g} ms with {queue_depth}"
                " requests queued: the load is more than the SLO allows (a smaller batch would"
                " serve fewer)"
            )
        return self.ceiling != before

    def _tighten(self, applied_batch: int, batch_sizes: tuple[int, ...], now_s: float) -> None:
        if now_s - self._last_move_s < self.tighten_every_s:
            return
        top = min(applied_batch, self.ceiling if self.ceiling is not None else applied_batch)
        floor = self._floor if self._floor is not None else 0
        lower = [size for size in batch_sizes if floor <= size < top]
        if not lower:
            return
        self.ceiling = lower[-1]
        self._last_move_s = now_s

    def _relax(self, batch_sizes: tuple[int, ...], now_s: float) -> None:
        if self.ceiling is None:
            return
        higher = [size for size in batch_sizes if size > self.ceiling]
        self.ceiling = higher[0] if len(higher) > 1 else None
        self._last_move_s = now_s
        self._slack_since_s = now_s

    def _why_unmet(
        self,
        over: bool,
        applied: Knobs,
        batch_sizes: tuple[int, ...],
        clock_levels_mhz: tuple[int, ...],
    ) -> str | None:
        if not over:
            return None
        p99 = f"p99 {self.p99_ms:.1f} ms is over the SLO {self.slo_ms:g} ms"
        if (
            clock_levels_mhz
            and applied.sm_clock_mhz is not None
            and applied.sm_clock_mhz < clock_levels_mhz[-1]
        ):
            return (
                f"{p99}: the cap holds the SM clock at {applied.sm_clock_mhz} MHz, below"
                f" {clock_levels_mhz[-1]} MHz; the cap wins"
            )
        if applied.batch_size <= batch_sizes[0]:
            return f"{p99} even at the smallest batch size {batch_sizes[0]}"
        return None
