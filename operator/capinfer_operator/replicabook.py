"""What the operator knows of each object's Deployment, so the last status write is the newest.

Two handlers carry a Deployment's state into its owner's status (replica counts and the
Ready condition): ``reconcile``, right after it applies the Deployment, and the Deployment's
own watch events. They run on different threads, each with what it saw at its own moment.
Written blindly, an older view could land last: ``reconcile`` reporting the two replicas it
saw while applying a scale-down, after the event of the scale-down already wrote one, and
nothing would correct it until some unrelated event came along.

So every such write goes through one record per object, under its lock, and writes what the
record holds, never what the caller happened to see:

- the Deployment's state as the watch last delivered it (the watch delivers one object's
  events in order), or the state an apply returned when that is certainly later;
- the object's spec as last handled: its generation, the replicas it asks for, and a
  refusal of that generation if there was one (an invalid spec stays reported);
- what was last written, so an unchanged status is not written again.

Whichever handler writes last writes the newest state the process has seen; the watch
event of any later change comes after it and writes again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from capinfer_operator.status import (
    Condition,
    DeploymentState,
    readiness,
    updated_conditions,
    without_time,
)

ObjectKey = tuple[str, str]
"""(namespace, name) of a PowerCappedInference."""


@dataclass(frozen=True)
class SpecSeen:
    """The part of an object's spec that readiness depends on, at one generation."""

    generation: int
    replicas: int
    refusal: Condition | None = None
    """The Ready=False the operator reported for this generation (invalid, rejected)."""


@dataclass
class ReplicaRecord:
    spec: SpecSeen | None = None
    deployment: DeploymentState | None = None
    written: dict[str, Any] | None = None
    """The replica status last written, transition time aside."""

    def learn_spec(self, spec: SpecSeen, *, handled: bool) -> None:
        """``handled``: the spec the operator just acted on (authoritative for its
        generation); otherwise a copy seen elsewhere, taken only when it is newer."""
        if (
            self.spec is None
            or spec.generation > self.spec.generation
            or (handled and spec.generation == self.spec.generation)
        ):
            self.spec = spec

    def learn_deployment(self, state: DeploymentState, *, from_watch: bool) -> None:
        """The watch's view replaces the last one (it comes in order); another view (an
        apply's answer) only when it is certainly later."""
        if self.deployment is None or from_watch or state.later_than(self.deployment):
            self.deployment = state

    def status_due(
        self, existing_conditions: Sequence[Mapping[str, Any]], now: str
    ) -> dict[str, Any] | None:
        """The replica status to write now, or None when it is unknown or already written.

        No Deployment seen (not created yet, or refused) counts as none."""
        if self.spec is None:
            return None
        counts, ready = readiness(self.deployment, self.spec.replicas, self.spec.generation, now)
        if self.spec.refusal is not None:
            ready = self.spec.refusal
        wanted = {**counts, "ready": without_time(ready)}
        if wanted == self.written:
            return None
        return {**counts, "conditions": updated_conditions(existing_conditions, [ready])}

    def mark_written(self, update: Mapping[str, Any]) -> None:
        (ready,) = update["conditions"]
        counts = {k: v for k, v in update.items() if k != "conditions"}
        self.written = {**counts, "ready": without_time(ready)}


class ReplicaBook:
    """One :class:`ReplicaRecord` per object, each used under its own lock."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._records: dict[ObjectKey, tuple[threading.Lock, ReplicaRecord]] = {}

    @contextmanager
    def holding(self, key: ObjectKey) -> Iterator[ReplicaRecord]:
        """The object's record, locked against every other handler until the block ends."""
        with self._guard:
            if key not in self._records:
                self._records[key] = (threading.Lock(), ReplicaRecord())
            lock, record = self._records[key]
        with lock:
            yield record

    def forget(self, key: ObjectKey) -> None:
        with self._guard:
            self._records.pop(key, None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._records)
