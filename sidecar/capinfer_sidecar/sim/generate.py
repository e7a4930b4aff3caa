"""A seeded generator of benchmark workloads, split by seed into a tuning and a held-out half.

Hand-written workloads test what their author thought of; a controller tuned on them can
fit them and fail elsewhere. :func:`generate_jobs` draws jobs at random -- but reproducibly,
from one seed -- over everything a pod may meet:

- every built-in GPU profile and every (DNN, dataset) of it;
- caps anywhere from just above the *floor* (the least peak power any setting of the job
  draws: the smallest batch size at the lowest clock it may use) to above the GPU's power
  limit, and a few below the floor (infeasible: no setting fits, see :func:`cap_floor_watts`);
- caps that stay, drop once, rise once, step down and back up, or hunt between two values;
- saturating load, load ramping from light to more than the GPU serves, bursts, light load;
- clocks controlled, or refused (batch size alone).

Each job carries its own seed (``seed * 1000 + index``); :func:`split_by_seed` puts even
seeds in the tuning half and odd ones in the held-out half, so the split is fixed by the
seeds alone. A policy's constants are tuned on the first half only; the second half is what
the report shows. Jobs are written as ordinary workload files (``bench/workloads/README.md``),
so ``capinfer bench --workload`` runs them like any other.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from capinfer_sidecar.sim.profiles import ProfileSet, builtin_profile_names, load_profile_set

DURATION_S = 120.0
"""Every generated job runs this long: long enough for two or three cap changes."""

CAP_PATTERNS = ("steady", "drop", "rise", "steps", "hunt")
LOADS = ("saturating", "ramp", "bursty", "light")


def cap_floor_watts(profile_set: ProfileSet, dnn: str, dataset: str, clocks: bool) -> float:
    """The least peak power any setting of the job draws: below it no cap can be held."""
    workload = profile_set.workload(dnn, dataset)
    gpu = workload.gpu
    levels: Sequence[int | None] = gpu.clock_levels_mhz if clocks else (None,)
    return min(workload.peak_power_watts(b, c) for b in gpu.batch_sizes for c in levels)


def cap_top_watts(profile_set: ProfileSet, dnn: str, dataset: str) -> float:
    """The most peak power any setting draws (the board limiter included)."""
    workload = profile_set.workload(dnn, dataset)
    gpu = workload.gpu
    return max(
        workload.peak_power_watts(b, c) for b in gpu.batch_sizes for c in gpu.clock_levels_mhz
    )


def _cap(rng: random.Random, floor: float, top: float, limit: float) -> float:
    """A cap: mostly between the floor and the top, with tails at both ends."""
    draw = rng.random()
    if draw < 0.04:
        cap = floor * rng.uniform(0.85, 0.98)  # infeasible: below every setting
    elif draw < 0.20:
        cap = floor * rng.uniform(1.01, 1.12)  # just above the floor
    elif draw < 0.30:
        cap = max(top, limit) * rng.uniform(1.0, 1.1)  # above the power limit
    else:
        cap = rng.uniform(floor * 1.12, max(top, floor * 1.2))
    return float(round(cap))


def _caps(rng: random.Random, floor: float, top: float, limit: float) -> dict[str, Any]:
    pattern = rng.choice(CAP_PATTERNS)
    first = _cap(rng, floor, top, limit)
    if pattern == "steady":
        return {"cap_watts": first}
    if pattern in ("drop", "rise"):
        second = _cap(rng, floor, top, limit)
        low, high = sorted((first, second))
        if low == high:
            high = low + 10
        start, end = (high, low) if pattern == "drop" else (low, high)
        at_s = round(rng.uniform(30, 80))
        return {"cap_watts": start, "cap_changes": [{"at_s": at_s, "cap_watts": end}]}
    if pattern == "steps":
        levels = sorted((_cap(rng, floor, top, limit) for _ in range(3)), reverse=True)
        changes = [{"at_s": 25 * (i + 1), "cap_watts": level} for i, level in enumerate(levels[1:])]
        changes.append({"at_s": 90, "cap_watts": levels[0]})
        return {"cap_watts": levels[0], "cap_changes": _distinct(levels[0], changes)}
    # Hunting: a cap controller oscillating between two values.
    a, b = _cap(rng, floor, top, limit), _cap(rng, floor, top, limit)
    if a == b:
        b = a + 15
    period = rng.choice((10, 15, 20, 30))
    changes = []
    at_s = period
    flip = True
    while at_s < DURATION_S - 5:
        changes.append({"at_s": at_s, "cap_watts": b if flip else a})
        flip = not flip
        at_s += period
    return {"cap_watts": a, "cap_changes": changes}


def _distinct(start: float, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop changes to the cap already in force."""
    kept = []
    current = start
    for change in changes:
        if change["cap_watts"] != current:
            kept.append(change)
            current = change["cap_watts"]
    return kept


def _load(rng: random.Random) -> Any:
    kind = rng.choices(LOADS, weights=(0.4, 0.2, 0.2, 0.2))[0]
    if kind == "saturating":
        return "saturating"
    if kind == "ramp":
        start = round(rng.uniform(0.1, 0.4), 2)
        at_s = round(rng.uniform(30, 70))
        return {
            "kind": "poisson",
            "rate_fraction": start,
            "changes": [{"at_s": at_s, "rate_fraction": round(rng.uniform(0.9, 1.3), 2)}],
        }
    if kind == "bursty":
        return {
            "kind": "bursty",
            "low_fraction": round(rng.uniform(0.05, 0.2), 2),
            "high_fraction": round(rng.uniform(0.8, 1.2), 2),
            "period_s": rng.choice((10, 20, 30)),
            "duty": round(rng.uniform(0.2, 0.5), 2),
        }
    return {"kind": "poisson", "rate_fraction": round(rng.uniform(0.05, 0.3), 2)}


def generate_jobs(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` jobs as workload-file mappings; the same (count, seed), the same jobs."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    profiles = {name: load_profile_set(name) for name in builtin_profile_names()}
    jobs = []
    for index in range(count):
        job_seed = seed * 1000 + index
        rng = random.Random(job_seed)
        profile_name = rng.choice(sorted(profiles))
        profile_set = profiles[profile_name]
        dnn = rng.choice(profile_set.dnns)
        dataset = rng.choice(profile_set.datasets(dnn))
        clocks = "controlled" if rng.random() < 0.85 else "refused"
        floor = cap_floor_watts(profile_set, dnn, dataset, clocks == "controlled")
        top = cap_top_watts(profile_set, dnn, dataset)
        caps = _caps(rng, floor, top, profile_set.gpu.power_limit_watts)
        load = _load(rng)
        job: dict[str, Any] = {
            "name": f"g{job_seed}-{profile_name}-{dnn.lower()}",
            "profile": profile_name,
            "dnn": dnn,
            "dataset": dataset,
            **caps,
            "load": load,
            "clocks": clocks,
            "seed": job_seed,
        }
        jobs.append(job)
    return jobs


def split_by_seed(jobs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], ...]:
    """(tuning, held-out): even seeds tune, odd seeds are held out."""
    tuning = [job for job in jobs if int(job["seed"]) % 2 == 0]
    held_out = [job for job in jobs if int(job["seed"]) % 2 == 1]
    return tuning, held_out


def workload_document(
    name: str, description: str, jobs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A workload file's contents (see ``bench/workloads/README.md``)."""
    return {
        "name": name,
        "description": description,
        "defaults": {"duration_s": DURATION_S},
        "jobs": list(jobs),
    }
