"""Bounds on Triton reloads, whatever a policy asks for: :class:`ReloadGovernor`.

A batch-size change is a model reload (seconds of work for Triton, a config override it
may refuse). A policy that keeps asking for a size Triton refuses must not turn into a
reload storm, so the control loop asks the governor before each reload:

* **backoff per size**: after a failed load of size *b*, *b* is not tried again for
  ``base_backoff_s``, doubling per failure in a row, up to ``max_backoff_s``;
* **quarantine**: after ``quarantine_after`` failures in a row, *b* is not tried for
  ``quarantine_s``; each later failure quarantines it again. A success forgets it all;
* **global rate**: at most ``max_failures_per_window`` failed loads in any
  ``window_s``, over all sizes together;
* **timeout**: a load that takes longer than :meth:`ReloadGovernor.timeout_s` counts as
  failed; the limit is ``timeout_factor`` times the slowest load that worked (at least
  ``min_timeout_s``), or ``first_timeout_s`` before any load worked.

Pure: time is passed in, nothing is done, only decided.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _SizeRecord:
    failures_in_a_row: int = 0
    retry_at_s: float = 0.0
    quarantined_until_s: float | None = None
    last_reason: str = ""


@dataclass(frozen=True)
class FailureOutcome:
    """What a failure led to: when the size may be tried again, and whether it is now
    quarantined (for the log, the metrics and the status)."""

    retry_at_s: float
    quarantined: bool


@dataclass
class ReloadGovernor:
    base_backoff_s: float = 5.0
    max_backoff_s: float = 120.0
    quarantine_after: int = 3
    quarantine_s: float = 1800.0
    max_failures_per_window: int = 5
    window_s: float = 60.0
    first_timeout_s: float = 300.0
    """A generous limit before any load worked (big TensorRT engines take minutes to
    build); the Triton adapter's own gRPC deadline for a load is the same."""
    min_timeout_s: float = 30.0
    timeout_factor: float = 4.0
    remembered_durations: int = 20
    _sizes: dict[int, _SizeRecord] = field(default_factory=dict, init=False)
    _failures: deque[float] = field(default_factory=deque, init=False)
    _durations_s: deque[float] = field(default_factory=deque, init=False)

    # -- asking ------------------------------------------------------------------------------
    def blocked(self, batch_size: int, now_s: float) -> str | None:
        """Why a load of ``batch_size`` may not start now; None when it may."""
        record = self._sizes.get(batch_size)
        if record is not None:
            if record.quarantined_until_s is not None and now_s < record.quarantined_until_s:
                return (
                    f"batch size {batch_size} is quarantined for another"
                    f" {record.quarantined_until_s - now_s:.0f} s after"
                    f" {record.failures_in_a_row} failed loads ({record.last_reason})"
                )
            if now_s < record.retry_at_s:
                return (
                    f"batch size {batch_size} failed to load {record.failures_in_a_row} times"
                    f" in a row; next try in {record.retry_at_s - now_s:.0f} s"
                )
        self._forget_old_failures(now_s)
        if len(self._failures) >= self.max_failures_per_window:
            wait_s = self._failures[0] + self.window_s - now_s
            return (
                f"{len(self._failures)} failed loads in the last {self.window_s:.0f} s;"
                f" no load for another {wait_s:.0f} s"
            )
        return None

    def timeout_s(self) -> float:
        """How long a load may take before it counts as failed."""
        if not self._durations_s:
            return self.first_timeout_s
        return max(self.min_timeout_s, self.timeout_factor * max(self._durations_s))

    def quarantined(self, now_s: float) -> tuple[int, ...]:
        """Batch sizes in quarantine now, ascending."""
        return tuple(
            sorted(
                size
                for size, record in self._sizes.items()
                if record.quarantined_until_s is not None and now_s < record.quarantined_until_s
            )
        )

    def refused(self) -> frozenset[int]:
        """Batch sizes whose last load failed (none loaded since)."""
        return frozenset(self._sizes)

    # -- telling -----------------------------------------------------------------------------
    def succeeded(self, batch_size: int, duration_s: float) -> None:
        self._sizes.pop(batch_size, None)
        self._durations_s.append(duration_s)
        while len(self._durations_s) > self.remembered_durations:
            self._durations_s.popleft()

    def failed(self, batch_size: int, now_s: float, reason: str) -> FailureOutcome:
        record = self._sizes.setdefault(batch_size, _SizeRecord())
        record.failures_in_a_row += 1
        record.last_reason = reason
        backoff_s = min(
            self.base_backoff_s * 2.0 ** (record.failures_in_a_row - 1), self.max_backoff_s
        )
        record.retry_at_s = now_s + backoff_s
        quarantined = record.failures_in_a_row >= self.quarantine_after
        if quarantined:
            record.quarantined_until_s = now_s + self.quarantine_s
            record.retry_at_s = max(record.retry_at_s, record.quarantined_until_s)
        self._failures.append(now_s)
        self._forget_old_failures(now_s)
        return FailureOutcome(record.retry_at_s, quarantined)

    def _forget_old_failures(self, now_s: float) -> None:
        while self._failures and now_s - self._failures[0] >= self.window_s:
            self._failures.popleft()
