"""The workload generator: reproducible, covering, split by seed, and parsed like any file."""

from __future__ import annotations

import itertools
from typing import Any

from capinfer_sidecar.sim.generate import (
    cap_floor_watts,
    generate_jobs,
    split_by_seed,
    workload_document,
)
from capinfer_sidecar.sim.profiles import builtin_profile_names, load_profile_set
from capinfer_sidecar.sim.workloads import parse_workload

JOBS = generate_jobs(300, seed=1)


def _caps(job: dict[str, Any]) -> list[float]:
    return [job["cap_watts"], *(c["cap_watts"] for c in job.get("cap_changes", []))]


def test_the_same_seed_gives_the_same_jobs_and_another_seed_others() -> None:
    assert generate_jobs(300, seed=1) == JOBS
    assert generate_jobs(300, seed=2) != JOBS


def test_every_profile_and_dnn_is_covered() -> None:
    for name in builtin_profile_names():
        profile_set = load_profile_set(name)
        covered = {job["dnn"] for job in JOBS if job["profile"] == name}
        assert covered == set(profile_set.dnns), name


def test_caps_loads_and_clocks_span_what_a_pod_meets() -> None:
    kinds = {job["load"] if isinstance(job["load"], str) else job["load"]["kind"] for job in JOBS}
    assert kinds == {"saturating", "poisson", "bursty"}
    ramps = [j for j in JOBS if isinstance(j["load"], dict) and "changes" in j["load"]]
    assert ramps
    assert {job["clocks"] for job in JOBS} == {"controlled", "refused"}
    changes = [len(job.get("cap_changes", [])) for job in JOBS]
    assert 0 in changes and 1 in changes and max(changes) >= 5  # steady, single, hunting
    rises = drops = 0
    below_floor = above_limit = near_floor = 0
    profiles = {name: load_profile_set(name) for name in builtin_profile_names()}
    for job in JOBS:
        caps = _caps(job)
        rises += any(b > a for a, b in itertools.pairwise(caps))
        drops += any(b < a for a, b in itertools.pairwise(caps))
        profile_set = profiles[job["profile"]]
        floor = cap_floor_watts(
            profile_set, job["dnn"], job["dataset"], job["clocks"] == "controlled"
        )
        below_floor += any(cap < floor for cap in caps)
        near_floor += any(floor <= cap <= 1.12 * floor for cap in caps)
        above_limit += any(cap >= profile_set.gpu.power_limit_watts for cap in caps)
    print(f"rises {rises}, drops {drops}, below the floor {below_floor}, near it {near_floor}")
    assert rises and drops and below_floor and near_floor and above_limit


def test_the_split_is_by_seed_and_each_half_is_a_valid_workload() -> None:
    tuning, held_out = split_by_seed(JOBS)
    assert len(tuning) + len(held_out) == len(JOBS)
    assert all(job["seed"] % 2 == 0 for job in tuning)
    assert all(job["seed"] % 2 == 1 for job in held_out)
    for half in (tuning, held_out):
        workload = parse_workload(workload_document("half", "one half", half), "generated")
        assert len(workload.jobs) == len(half)
