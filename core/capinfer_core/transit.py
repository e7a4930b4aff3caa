"""On the way to a new allocation: which caps to publish now so that the budget holds.

A member's GPUs draw up to the cap they *run* under, and a published cap is run under from
some moment the controller does not see: a raise as soon as the sidecar reads it, a
decrease once its policy has moved its settings. What the controller does see is the
sidecar's *confirmation* that it runs under a cap. So a member is *held* at the highest cap
it may be running under -- the cap it last confirmed, or any cap published to it since --
and it counts, per GPU, at the higher of that and its published cap:

    counted = sum over members of max(published, held) * gpus

Publishing never raises ``counted`` above the budget:

- a decrease is published at once (it can only lower what counts);
- an increase is published only as far as the headroom ``budget - counted`` allows, with
  every member still going down counted at its old cap until its sidecar confirms the new
  one. A sidecar that does not confirm (timed out, gone quiet) keeps counting at its old
  cap: time alone proves nothing about the power it draws.

When several members go up and the headroom is short, each gets the same fraction of the
increase it still needs, so all arrive together. Once every decrease is confirmed and the
targets fit the budget, one more step publishes the targets exactly.

:func:`next_caps` is the rule; :class:`CapLedger` keeps what it needs (published caps, and
what each member is held at) from the caps published and the confirmations received.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def counted_watts(
    published: Mapping[str, float], held: Mapping[str, float], gpus: Mapping[str, int]
) -> float:
    """What the budget must hold: each member at max(published, held), all its GPUs."""
    return math.fsum(max(published[key], held[key]) * gpus[key] for key in gpus)


def next_caps(
    targets: Mapping[str, float],
    published: Mapping[str, float],
    held: Mapping[str, float],
    budget_watts: float,
    gpus: Mapping[str, int],
) -> dict[str, float]:
    """The per-GPU caps to publish now on the way to ``targets`` (same keys everywhere).

    ``published``: the caps published so far; ``held``: the highest cap each member may be
    running under (:attr:`CapLedger.held`; for a member that never confirmed a cap, the
    most it may draw, e.g. its uncapped draw). The result never raises
    :func:`counted_watts` above ``budget_watts``; when it already is above (the budget just
    fell), nothing goes up.
    """
    keys = set(gpus)
    for name, mapping in (("targets", targets), ("published", published), ("held", held)):
        if set(mapping) != keys:
            odd = sorted(keys.symmetric_difference(mapping))[0]
            raise ValueError(f"{name} and gpus do not name the same members (e.g. {odd!r})")
    order = sorted(keys)
    result = {key: min(targets[key], published[key]) for key in order}
    rising = [key for key in order if targets[key] > published[key]]
    if not rising:
        return result
    headroom = budget_watts - counted_watts(result, held, gpus)
    # Up to its held cap a member's rise is free: it already counts at that cap.
    for key in rising:
        result[key] = max(result[key], min(targets[key], held[key]))
    wanted = {key: targets[key] - result[key] for key in rising if targets[key] > result[key]}
    if not wanted or headroom <= 0:
        return result
    # Judged by the exact sum, not by ``cost <= headroom``: targets that fill the budget to
    # the last watt would otherwise miss it by a rounding error and never be reached.
    reached = {**result, **{key: targets[key] for key in wanted}}
    if counted_watts(reached, held, gpus) <= budget_watts:
        return reached
    cost = math.fsum(wanted[key] * gpus[key] for key in wanted)
    share = headroom / cost
    base = {key: result[key] for key in wanted}
    # The fractional step is rounded; shrink it until the exact sum holds.
    for _ in range(60):
        for key, rise in wanted.items():
            result[key] = base[key] + share * rise
        if counted_watts(result, held, gpus) <= budget_watts:
            return result
        share *= 1 - 1e-9
    result.update(base)
    return result


class CapLedger:
    """Published caps and what each member is held at, for :func:`next_caps`.

    Each cap published to a member gets the member's next *generation* (0 is the cap it
    started with); its sidecar confirms the generation it runs under. Per member the ledger
    keeps the cap last confirmed and the caps published since; a confirmation drops that
    generation and the ones before it, and the member stays held at the highest cap
    published after it. Generations, not values, because a value can be published twice
    (100 W, 200 W, 100 W): "I run under 100 W" would not say whether 200 W is behind.
    """

    def __init__(self, held: Mapping[str, float], gpus: Mapping[str, int]) -> None:
        """``held``: what each member may be running under now (its current cap, or its
        uncapped draw when unknown), as generation 0; also its published cap until one is
        published."""
        if set(gpus) != set(held):
            raise ValueError("held and gpus must name the same members")
        self.gpus: dict[str, int] = dict(gpus)
        self.published: dict[str, float] = dict(held)
        self.generation: dict[str, int] = {key: 0 for key in held}
        """The generation of each member's published cap."""
        self._confirmed: dict[str, float] = dict(held)
        self._pending: dict[str, list[tuple[int, float]]] = {key: [] for key in held}

    @property
    def held(self) -> dict[str, float]:
        return {
            key: max([self._confirmed[key], *(cap for _, cap in self._pending[key])])
            for key in sorted(self.gpus)
        }

    @property
    def counted_watts(self) -> float:
        return counted_watts(self.published, self.held, self.gpus)

    def step(self, targets: Mapping[str, float], budget_watts: float) -> dict[str, float]:
        """Publish :func:`next_caps` towards ``targets`` and return it."""
        caps = next_caps(targets, self.published, self.held, budget_watts, self.gpus)
        for key, cap in caps.items():
            if cap != self.published[key]:
                self.generation[key] += 1
                self._pending[key].append((self.generation[key], cap))
        self.published = caps
        return dict(caps)

    def confirm(self, key: str, generation: int) -> bool:
        """The member's sidecar runs under the cap of ``generation``. False when that
        changes nothing (already confirmed, or a generation never published)."""
        pending = self._pending[key]
        for index, (published_generation, cap) in enumerate(pending):
            if published_generation == generation:
                self._confirmed[key] = cap
                del pending[: index + 1]
                return True
        return False

    def add(self, key: str, gpus: int, held_watts: float) -> None:
        """A new member, held at what it may be drawing now (its uncapped draw, say)."""
        if key in self.gpus:
            raise ValueError(f"member {key!r} is already in the ledger")
        self.gpus[key] = gpus
        self.published[key] = held_watts
        self.generation[key] = 0
        self._confirmed[key] = held_watts
        self._pending[key] = []

    def remove(self, key: str) -> None:
        """A member gone (its pods ended): it no longer draws."""
        del self.gpus[key], self.published[key], self.generation[key]
        del self._confirmed[key], self._pending[key]
