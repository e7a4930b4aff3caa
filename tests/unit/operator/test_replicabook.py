"""The replica book: whatever order two handlers write in, the last write is the newest."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from capinfer_operator.replicabook import ReplicaBook, ReplicaRecord, SpecSeen
from capinfer_operator.status import DeploymentState, condition, readiness

NOW = "2026-11-29T12:00:00Z"


def state(gen: int, observed: int, replicas: int, ready: int, updated: int) -> DeploymentState:
    return DeploymentState(
        replicas=replicas,
        ready_replicas=ready,
        updated_replicas=updated,
        observed=observed >= gen,
        generation=gen,
        observed_generation=observed,
    )


def write(record: ReplicaRecord, log: list[dict[str, Any]]) -> None:
    """What publish_replicas does once it holds the record, the API call being a list."""
    update = record.status_due([], NOW)
    if update is not None:
        log.append(update)
        record.mark_written(update)


def test_an_applys_older_view_never_overwrites_the_watchs_newer_one() -> None:
    # kubectl scale --replicas=1: the scale-down's watch event is handled first, then
    # reconcile finishes with the Deployment as its apply answered (two replicas still).
    record, written = ReplicaRecord(), []
    record.learn_spec(SpecSeen(1, 2), handled=True)
    record.learn_deployment(state(1, 1, 2, 2, 2), from_watch=True)
    write(record, written)
    record.learn_deployment(state(2, 2, 1, 1, 1), from_watch=True)
    write(record, written)
    record.learn_spec(SpecSeen(2, 1), handled=True)
    record.learn_deployment(state(2, 1, 2, 2, 2), from_watch=False)  # the apply's answer
    write(record, written)
    assert written[-1]["replicas"] == 1
    assert written[-1]["conditions"][0]["reason"] == "PodsReady"


def test_an_applys_view_is_taken_when_it_is_certainly_later() -> None:
    record, written = ReplicaRecord(), []
    record.learn_spec(SpecSeen(1, 1), handled=True)
    record.learn_deployment(state(1, 1, 1, 1, 1), from_watch=True)
    record.learn_spec(SpecSeen(2, 1), handled=True)
    record.learn_deployment(state(2, 1, 1, 1, 1), from_watch=False)  # a new template
    write(record, written)
    assert written[-1]["conditions"][0]["reason"] == "RollingOut"


def test_an_older_copy_of_the_spec_does_not_replace_the_handled_one() -> None:
    record = ReplicaRecord()
    record.learn_spec(SpecSeen(3, 1), handled=True)
    record.learn_spec(SpecSeen(2, 4), handled=False)  # the index had not heard of gen 3
    assert record.spec == SpecSeen(3, 1)
    record.learn_spec(SpecSeen(4, 2), handled=False)  # a newer copy is news
    assert record.spec == SpecSeen(4, 2)


def test_a_refused_generation_stays_reported_while_the_deployment_moves() -> None:
    record, written = ReplicaRecord(), []
    refusal = condition("Ready", False, "InvalidSpec", "bad", generation=2, now=NOW)
    record.learn_spec(SpecSeen(2, 1, refusal=refusal), handled=True)
    write(record, written)
    assert written[-1]["replicas"] == 0 and written[-1]["conditions"] == [refusal]
    record.learn_spec(SpecSeen(2, 1), handled=False)  # the same generation, seen elsewhere
    record.learn_deployment(state(1, 1, 1, 1, 1), from_watch=True)
    write(record, written)
    assert written[-1]["replicas"] == 1
    assert written[-1]["conditions"][0]["reason"] == "InvalidSpec"


def test_an_unchanged_status_is_not_written_again() -> None:
    record, written = ReplicaRecord(), []
    record.learn_spec(SpecSeen(1, 1), handled=True)
    record.learn_deployment(state(1, 1, 1, 1, 1), from_watch=True)
    write(record, written)
    write(record, written)
    record.learn_deployment(state(1, 1, 1, 1, 1), from_watch=True)
    write(record, written)
    assert len(written) == 1
    record.learn_deployment(state(1, 1, 1, 0, 1), from_watch=True)
    write(record, written)
    assert len(written) == 2


def test_nothing_is_written_before_the_spec_is_known() -> None:
    record = ReplicaRecord()
    record.learn_deployment(state(1, 1, 1, 1, 1), from_watch=True)
    assert record.status_due([], NOW) is None


deployment_states = st.builds(
    state,
    gen=st.integers(1, 3),
    observed=st.integers(0, 3),
    replicas=st.integers(0, 3),
    ready=st.integers(0, 3),
    updated=st.integers(0, 3),
)


@given(
    watched=st.lists(deployment_states, min_size=1, max_size=8),
    applied=deployment_states,
    reconcile_at=st.integers(0, 8),
)
def test_whatever_the_interleaving_the_last_write_is_the_last_watched_state(
    watched: list[DeploymentState], applied: DeploymentState, reconcile_at: int
) -> None:
    """The watch delivers states in order; reconcile lands between any two of them with an
    apply's answer that is no later than the state the watch delivers after it."""
    watched = sorted(watched, key=lambda s: (s.generation, s.observed_generation))
    reconcile_at = min(reconcile_at, len(watched))
    if reconcile_at < len(watched) and applied.later_than(watched[reconcile_at]):
        applied = watched[reconcile_at]  # an answer cannot be later than what follows it
    record, written = ReplicaRecord(), []
    spec = SpecSeen(5, 2)
    for position, seen in enumerate(watched):
        if position == reconcile_at:
            record.learn_spec(spec, handled=True)
            record.learn_deployment(applied, from_watch=False)
            write(record, written)
        record.learn_spec(SpecSeen(4, 7), handled=False)  # a stale copy from the index
        record.learn_deployment(seen, from_watch=True)
        write(record, written)
    if reconcile_at == len(watched):
        record.learn_spec(spec, handled=True)
        record.learn_deployment(applied, from_watch=False)
        write(record, written)
        last = applied if applied.later_than(watched[-1]) else watched[-1]
    else:
        last = watched[-1]
    counts, ready = readiness(last, spec.replicas, spec.generation, NOW)
    assert written, "something was written"
    final = written[-1]
    assert {k: final[k] for k in counts} == counts
    assert final["conditions"][0]["reason"] == ready["reason"]


def test_one_object_is_used_by_one_thread_at_a_time() -> None:
    book = ReplicaBook()
    inside = 0
    overlaps = []

    def use() -> None:
        nonlocal inside
        for _ in range(200):
            with book.holding(("ns", "a")):
                inside += 1
                overlaps.append(inside)
                inside -= 1

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(overlaps) == 1
    assert len(book) == 1
    book.forget(("ns", "a"))
    assert len(book) == 0
