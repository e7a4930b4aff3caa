"""Workload files: the shipped ones parse; bad ones fail with one clear line."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from capinfer_sidecar.sim.config import ClockAccess, PoissonLoad, SaturatingLoad
from capinfer_sidecar.sim.workloads import load_workload, max_throughput_ips
from capinfer_sidecar.sim.yamlread import SpecError

WORKLOADS = Path(__file__).resolve().parents[3] / "bench" / "workloads"
TABLE2_CAPS = [191, 123, 228, 195, 84, 159, 246, 143, 167, 218,
               125, 192, 165, 98, 208, 135, 136, 198, 236, 188]  # fmt: skip


def write(tmp_path: Path, text: str, name: str = "workload.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text))
    return path


def test_the_paper_workload_is_table_2() -> None:
    workload = load_workload(WORKLOADS / "paper-table2.yaml")
    assert [job.config.cap_watts for job in workload.jobs] == TABLE2_CAPS
    assert [job.dataset for job in workload.jobs] == ["imagenet"] * 10 + ["caltech"] * 10
    assert [job.dnn for job in workload.jobs[:10]] == [job.dnn for job in workload.jobs[10:]]
    assert all(isinstance(job.config.load, SaturatingLoad) for job in workload.jobs)
    assert all(job.profile_name == "p40" for job in workload.jobs)


def test_the_cap_change_workload_covers_its_scenarios() -> None:
    workload = load_workload(WORKLOADS / "cap-changes.yaml")
    jobs = {job.name: job for job in workload.jobs}
    assert all(job.config.cap_changes for job in workload.jobs)
    assert any(job.profile_name == "h100" for job in workload.jobs)
    assert jobs["res50-clocks-refused"].config.clocks is ClockAccess.REFUSED
    light = jobs["mobv2-light"].config
    assert isinstance(light.load, PoissonLoad)
    assert light.load.steps[0].rate_ips == pytest.approx(0.2 * max_throughput_ips(light.profile))
    bursty = jobs["res101-bursty"].config.load
    assert isinstance(bursty, PoissonLoad)
    assert [s.at_s for s in bursty.steps[:4]] == [0.0, 6.0, 20.0, 26.0]
    rates = [s.rate_ips for s in bursty.steps[:2]]
    assert rates[0] == pytest.approx(9 * rates[1])
    drops = [c for job in workload.jobs for c in job.config.cap_changes]
    assert any(c.cap_watts < 150 for c in drops) and any(c.cap_watts > 200 for c in drops)


def test_defaults_apply_and_jobs_override_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: {profile: p40, duration_s: 30, seed: 5, band: 0.7}
        jobs:
          - {name: a, dnn: Res50, dataset: caltech, cap_watts: 150}
          - {name: b, dnn: Res50, dataset: imagenet, cap_watts: 120, seed: 9,
             load: {kind: saturating, concurrency: 8}, clocks: none, reload_s: 3}
    """,
    )
    a, b = load_workload(path).jobs
    assert (a.config.seed, a.config.duration_s, a.config.band) == (5, 30.0, 0.7)
    assert (b.config.seed, b.config.clocks, b.config.effective_reload_s) == (9, ClockAccess.NONE,
                                                                             3.0)  # fmt: skip
    assert b.config.load == SaturatingLoad(8)
    assert load_workload(path).name == "workload"


def test_a_profile_file_next_to_the_workload_is_found(tmp_path: Path) -> None:
    builtin = (Path(__file__).resolve().parents[3] / "sidecar" / "capinfer_sidecar" / "sim"
               / "profile_data" / "p40.yaml")  # fmt: skip
    (tmp_path / "mygpu.yaml").write_text(builtin.read_text())
    path = write(
        tmp_path,
        """
        jobs:
          - {name: a, profile: mygpu.yaml, dnn: IncV1, dataset: caltech, cap_watts: 150,
             duration_s: 10}
    """,
    )
    (job,) = load_workload(path).jobs
    assert job.config.profile.gpu.name == "Tesla P40"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobs: []", r"jobs: expected at least one job"),
        (
            "jobs:\n  - {name: a, dnn: Res999, dataset: caltech, cap_watts: 100, duration_s: 10,"
            " profile: p40}",
            r"jobs\[0\]\.dnn: profile 'p40' has no DNN 'Res999' \(known: IncV1",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: coco, cap_watts: 100, duration_s: 10,"
            " profile: p40}",
            r"no dataset 'coco' for Res50",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 100, duration_s: 10,"
            " profile: p40, cap_wats: 3}",
            r"jobs\[0\]: unknown field 'cap_wats'",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: caltech, duration_s: 10, profile: p40}",
            r"jobs\[0\]\.cap_watts: required field is missing",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 100, duration_s: 10,"
            " profile: p40, cap_changes: [{at_s: 20, cap_watts: 90}]}",
            r"cap_changes\[0\]\.at_s: 20 s is not before the end of the run \(10 s\)",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 100, duration_s: 10,"
            " profile: p40, load: {kind: fractal}}",
            r"load\.kind: expected one of saturating",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 100, duration_s: 10,"
            " profile: p40, load: {kind: poisson, rate_ips: 5, rate_fraction: 0.5}}",
            r"load: give exactly one of rate_ips and rate_fraction",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 100, duration_s: 10,"
            " profile: p40, clocks: maybe}",
            r"clocks: expected one of controlled, refused, none",
        ),
        (
            "jobs:\n  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 100, duration_s: 10,"
            " profile: p99}",
            r"jobs\[0\]\.profile: profile 'p99': no such file",
        ),
        (
            "defaults: {profile: p40, duration_s: 10}\njobs:\n"
            "  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 100}\n"
            "  - {name: a, dnn: Res50, dataset: caltech, cap_watts: 120}",
            r"jobs\[1\]\.name: job name 'a' is used twice",
        ),
        ("jobs: [", r"not valid YAML \(line"),
    ],
)
def test_bad_workloads_say_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as caught:
        load_workload(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


def test_a_missing_workload_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: no such file"):
        load_workload(tmp_path / "nope.yaml")


def test_selecting_an_unknown_job_names_the_jobs() -> None:
    workload = load_workload(WORKLOADS / "paper-table2.yaml")
    assert [job.name for job in workload.select(["job19", "job05"])] == ["job05", "job19"]
    with pytest.raises(SpecError, match=r"no job 'job21' \(jobs: job01, job02"):
        workload.select(["job21"])
