"""Every field of the PowerCappedInference spec does something: none is accepted and ignored.

The spec's fields are read from the CRD itself (every leaf of ``spec`` in the schema), and
each must have an entry here that changes it and shows the change in what capinfer does:

- *operator* fields: the children the operator renders (pure builders) differ;
- *sidecar* fields (``spec.power``, ``spec.latencySLO``): the sidecar, started on one spec and
  handed the changed one live by its :class:`SpecFollower` mid-run (as a patch of the object
  reaches it), then does something else from then on than the same sidecar left alone. The
  sidecar runs its real control loop, policies and settings parsing on virtual time, over a
  small plant whose power and p99 latency follow the knobs in effect (a stand-in for the GPU
  and Triton, which cannot exist here).

A field added to the CRD without an entry fails :func:`test_every_spec_field_has_an_effect`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from capinfer_operator.builders import TRITON_SUMMARY_LATENCIES_ARG, Target, build_children
from capinfer_sidecar.follower import SpecFollower
from capinfer_sidecar.kube import live_settings_of
from capinfer_sidecar.loop import ControlLoop, LoopSnapshot, ServerCounters
from capinfer_sidecar.main import policy_for
from capinfer_sidecar.settings import PowerSpec, parse_power_spec, to_power_settings
from capinfer_sidecar.triton import SUMMARY_LATENCIES_ARG

CRD = Path(__file__).parents[2] / "crds" / "capinfer.io_powercappedinferences.yaml"
SUPPORTED_MHZ = (600, 800, 1000, 1200, 1400)
TARGET = Target(name="resnet", namespace="ml")
BASE: dict[str, Any] = {
    "replicas": 1,
    "gpusPerReplica": 1,
    "triton": {
        "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
        "model": "resnet50",
        "modelRepository": {"persistentVolumeClaim": {"claimName": "models", "subPath": "repo"}},
    },
    "power": {"capWatts": 250},
}


def spec_leaves(schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """Dotted paths of the schema's leaves; an object kept whole (preserve-unknown-fields:
    a core/v1 type such as a volume) or a list of such is one leaf."""
    properties = schema.get("properties")
    if not properties or schema.get("x-kubernetes-preserve-unknown-fields"):
        yield path
        return
    for name, sub in properties.items():
        yield from spec_leaves(sub, f"{path}.{name}" if path else name)


def crd_spec_leaves() -> list[str]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    return sorted(spec_leaves(version["schema"]["openAPIV3Schema"]["properties"]["spec"]))


def with_field(spec: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(dict(spec))
    *parents, leaf = path.split(".")
    node = changed
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value
    return changed


# -- the operator's side: what it renders --------------------------------------------------------
def rendered(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return build_children(TARGET, spec, "capinfer:test", node_agent="unix:///run/agent.sock")


# -- the sidecar's side: a plant whose power and latency follow the knobs ------------------------
class VirtualTime:
    def __init__(self) -> None:
        self.now_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        await asyncio.sleep(0)


@dataclass
class Plant:
    """Power grows with the batch size and the clock; p99 grows with the batch size."""

    batch_size: int = 1
    clock_mhz: int | None = None
    inferences: int = 0
    batches: int = 0
    energy_j: float = 0.0

    def _speed(self) -> float:
        return (self.clock_mhz or SUPPORTED_MHZ[-1]) / SUPPORTED_MHZ[-1]

    # PowerMeter
    def power_watts(self) -> float:
        watts = 60.0 + 200.0 * self._speed() * (self.batch_size / (self.batch_size + 16))
        self.energy_j += watts * 0.02
        return watts

    def energy_joules(self) -> float:
        return self.energy_j

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        self.clock_mhz = clock_mhz

    def reset_sm_clock(self) -> None:
        self.clock_mhz = None

    # InferenceServer
    async def counters(self) -> ServerCounters:
        self.batches += 4
        self.inferences += 4 * self.batch_size
        p99_ms = (5.0 + 0.5 * self.batch_size) / self._speed()
        return ServerCounters(self.inferences, self.batches, queue_depth=8, p99_latency_ms=p99_ms)

    async def apply_max_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size

    async def max_batch_size(self) -> int:
        return self.batch_size


def settings_of(spec: PowerSpec) -> Any:
    return to_power_settings(spec, SUPPORTED_MHZ, clock_control_available=True)


async def _run_sidecar(
    first: Mapping[str, Any], then: Mapping[str, Any] | None, before: int, after: int
) -> list[tuple[Any, ...]]:
    spec = parse_power_spec(live_settings_of({"spec": first}))
    time, plant = VirtualTime(), Plant()
    snapshots: list[LoopSnapshot] = []
    loop = ControlLoop(
        policy=policy_for(spec),
        settings=settings_of(spec),
        gpu=plant,
        server=plant,
        initial_batch_size=1,
        monotonic=time.monotonic,
        sleep=time.sleep,
        sample_interval_s=spec.sample_interval_s,
        latency_slo_ms=spec.p99_slo_ms,
        on_snapshot=snapshots.append,
    )
    follower = SpecFollower(loop, spec, policy_for, settings_of)
    for _ in range(before):
        loop.on_snapshot(await loop.sample_once())
    if then is not None:
        assert follower.apply(live_settings_of({"spec": then})), follower.status.problem
    trajectory = []
    for _ in range(after):
        snapshot = await loop.sample_once()
        await asyncio.sleep(0)  # let a reload finish
        trajectory.append(
            (
                round(snapshot.now_s, 4), snapshot.cap_watts, snapshot.requested_batch_size,
                snapshot.batch_size, snapshot.sm_clock_mhz, snapshot.policy,
                snapshot.slo_batch_ceiling, snapshot.reason,
            )
        )  # fmt: skip
    return trajectory


def sidecar_behaviour(
    first: Mapping[str, Any], then: Mapping[str, Any] | None
) -> list[tuple[Any, ...]]:
    """What the sidecar does after ``then`` reached it live (or with nothing new): 80 s, more
    than the minute the latency SLO waits for Triton's p99 window to speak of it alone."""
    return asyncio.run(_run_sidecar(first, then, before=20, after=800))


# -- one entry per spec field -----------------------------------------------------------------
@dataclass(frozen=True)
class Effect:
    side: str
    """'operator' (the rendered children change) or 'sidecar' (the sidecar acts otherwise)."""
    value: Any
    """The changed value."""
    base: Mapping[str, Any] | None = None
    """The spec the change starts from (default BASE), when the field needs a context."""


ON_URI = with_field(BASE, "triton.modelRepository", {"uri": "s3://bucket/models"})
ON_VOLUME = with_field(BASE, "triton.modelRepository", {"volume": {"nfs": {"server": "a"}}})
STATIC = with_field(BASE, "power.policy", "Static")
BATCH_SIZER = with_field(BASE, "power.policy", "BatchSizer")

EFFECTS: dict[str, Effect] = {
    "replicas": Effect("operator", 3),
    "gpusPerReplica": Effect("operator", 2),
    "triton.image": Effect("operator", "nvcr.io/nvidia/tritonserver:24.09-py3"),
    "triton.imagePullPolicy": Effect("operator", "Always"),
    "triton.model": Effect("operator", "bert"),
    "triton.modelRepository.uri": Effect("operator", "gs://other/models", ON_URI),
    "triton.modelRepository.persistentVolumeClaim.claimName": Effect("operator", "other"),
    "triton.modelRepository.persistentVolumeClaim.subPath": Effect("operator", "elsewhere"),
    "triton.modelRepository.volume": Effect("operator", {"nfs": {"server": "b"}}, ON_VOLUME),
    "triton.startupTimeoutSeconds": Effect("operator", 1200),
    "triton.args": Effect("operator", ["--log-verbose=1"]),
    "triton.env": Effect("operator", [{"name": "OMP_NUM_THREADS", "value": "4"}]),
    "triton.resources.requests": Effect("operator", {"cpu": "2"}),
    "triton.resources.limits": Effect("operator", {"memory": "8Gi"}),
    "sidecar.image": Effect("operator", "registry.example/capinfer:2"),
    "sidecar.imagePullPolicy": Effect("operator", "Always"),
    "sidecar.resources.requests": Effect("operator", {"cpu": "200m"}),
    "sidecar.resources.limits": Effect("operator", {"memory": "256Mi"}),
    "sidecar.logLevel": Effect("operator", "DEBUG"),
    "nodeSelector": Effect("operator", {"gpu": "h100"}),
    "tolerations": Effect("operator", [{"key": "gpu", "operator": "Exists"}]),
    "affinity": Effect("operator", {"nodeAffinity": {}}),
    "priorityClassName": Effect("operator", "inference"),
    "terminationGracePeriodSeconds": Effect("operator", 120),
    "power.capWatts": Effect("sidecar", 150),
    "power.policy": Effect("sidecar", "DVFS"),
    # Adaptive has no band floor (the CRD says so); the band policies honour it.
    "power.band": Effect("sidecar", 0.5, BATCH_SIZER),
    "power.batchSizes": Effect("sidecar", [1, 8, 64]),
    "power.clockControl.enabled": Effect("sidecar", False),
    "power.clockControl.minMHz": Effect("sidecar", 1200),
    "power.clockControl.maxMHz": Effect("sidecar", 800),
    "power.sampleIntervalMs": Effect("sidecar", 250),
    "power.staticBatchSize": Effect("sidecar", 8, STATIC),
    "power.staticClockMHz": Effect("sidecar", 800, STATIC),
    "latencySLO.p99Ms": Effect("sidecar", 12.0),
}


def test_every_spec_field_has_an_effect() -> None:
    missing = sorted(set(crd_spec_leaves()) - set(EFFECTS))
    assert not missing, f"spec fields with no effect shown here (add one): {missing}"
    stale = sorted(set(EFFECTS) - set(crd_spec_leaves()))
    assert not stale, f"entries for fields the CRD does not have: {stale}"


def test_the_walk_sees_the_fields_it_must() -> None:
    leaves = crd_spec_leaves()
    for field in ("power.staticClockMHz", "latencySLO.p99Ms", "triton.modelRepository.volume"):
        assert field in leaves
    assert "triton.modelRepository.volume.hostPath" not in leaves


@pytest.mark.parametrize("field", sorted(k for k, e in EFFECTS.items() if e.side == "operator"))
def test_an_operator_field_changes_what_is_rendered(field: str) -> None:
    effect = EFFECTS[field]
    base = dict(effect.base or BASE)
    assert rendered(with_field(base, field, effect.value)) != rendered(base)


@pytest.mark.parametrize("field", sorted(k for k, e in EFFECTS.items() if e.side == "sidecar"))
def test_a_sidecar_field_changes_what_the_running_sidecar_does(field: str) -> None:
    effect = EFFECTS[field]
    base = dict(effect.base or BASE)
    changed = with_field(base, field, effect.value)
    assert rendered(changed) == rendered(base), "spec.power changes never roll the pods"
    left_alone = sidecar_behaviour(base, None)
    patched = sidecar_behaviour(base, changed)
    assert patched != left_alone, f"{field} reached the running sidecar and changed nothing"


def test_static_holds_the_declared_pair_not_the_top_of_the_ladders() -> None:
    pinned = with_field(with_field(STATIC, "power.staticBatchSize", 8), "power.staticClockMHz", 800)
    last = sidecar_behaviour(BASE, pinned)[-1]
    requested_batch, batch, clock, policy = last[2], last[3], last[4], last[5]
    assert (requested_batch, batch, clock, policy) == (8, 8, 800, "Static")


def test_triton_measures_the_p99_that_latency_slo_is_held_against() -> None:
    (deployment,) = [c for c in rendered(BASE) if c["kind"] == "Deployment"]
    (triton,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"
    ]
    assert TRITON_SUMMARY_LATENCIES_ARG == SUMMARY_LATENCIES_ARG
    assert SUMMARY_LATENCIES_ARG in triton["args"]
