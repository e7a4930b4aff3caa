"""Which pod owns which GPU's knobs, kept on disk so a restarted agent can undo them.

The ledger is written *before* a knob is set (as the sidecar's marker file was): a crash
between the two leaves a claim to reset, never a locked clock or a lowered limit nobody
knows about. Deciding which claims are stale is pure (:func:`stale_claims`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Owner:
    """A pod, by namespace, name and UID (a pod recreated with the same name is another)."""

    namespace: str
    pod: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass
class Claim:
    """What the agent set on one GPU for one pod."""

    owner: Owner
    clock_mhz: int | None = None
    limit_watts: float | None = None


@dataclass
class Ledger:
    """GPU UUID -> claim; saved to ``path`` (when given) after every change."""

    path: Path | None = None
    claims: dict[str, Claim] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> Ledger:
        ledger = cls(path)
        if path is None or not path.exists():
            return ledger
        for gpu, raw in json.loads(path.read_text()).items():
            ledger.claims[gpu] = Claim(
                Owner(**raw["owner"]), raw.get("clock_mhz"), raw.get("limit_watts")
            )
        return ledger

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({gpu: asdict(c) for gpu, c in self.claims.items()}))
        temporary.replace(self.path)

    def claim_for(self, gpu: str, owner: Owner) -> Claim:
        """The claim of ``owner`` on ``gpu``; a previous owner's claim must be reset first."""
        claim = self.claims.get(gpu)
        if claim is None or claim.owner != owner:
            claim = Claim(owner)
            self.claims[gpu] = claim
        return claim

    def release(self, gpu: str) -> None:
        self.claims.pop(gpu, None)
        self.save()


def stale_claims(
    claims: Mapping[str, Claim],
    live_uids: Collection[str],
    allocations: Mapping[tuple[str, str], Collection[str]] | None,
) -> dict[str, str]:
    """GPU -> why its claim is stale: the owner pod is gone, or no longer holds the GPU.

    ``live_uids`` are the UIDs of the pods of this node that still run; ``allocations`` is
    the kubelet's word on who holds which GPU (None when it could not be asked: then only
    the pods decide).
    """
    stale: dict[str, str] = {}
    for gpu, claim in claims.items():
        owner = claim.owner
        if owner.uid not in live_uids:
            stale[gpu] = f"pod {owner} is gone"
        elif allocations is not None and gpu not in allocations.get(
            (owner.namespace, owner.pod), ()
        ):
            stale[gpu] = f"pod {owner} no longer holds {gpu}"
    return stale
