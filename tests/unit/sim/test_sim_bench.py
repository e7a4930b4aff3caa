"""The benchmark logic and ``capinfer bench`` end to end on a tiny workload."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from capinfer import bench as bench_module
from capinfer.bench import (
    PolicySpec,
    geometric_mean,
    parse_policy_list,
    parse_policy_spec,
    render_markdown,
    run_bench,
)
from capinfer.cli import main
from capinfer_sidecar.policies.base import Decision, Knobs, Observation, Policy, PowerSettings
from capinfer_sidecar.sim.workloads import Job, load_workload
from capinfer_sidecar.sim.yamlread import SpecError

TINY = """
    name: tiny
    description: Two short jobs for tests.
    defaults: {profile: p40, duration_s: 15}
    jobs:
      - {name: steady, dnn: Res50, dataset: caltech, cap_watts: 170, seed: 1}
      - name: drop
        dnn: MobV1
        dataset: caltech
        cap_watts: 150
        cap_changes: [{at_s: 8, cap_watts: 100}]
        seed: 2
        plot: true
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(dedent(TINY))
    return path


def test_policy_specs_parse_with_clear_errors() -> None:
    assert parse_policy_spec("Static:64@1303").options == (("batch_size", 64), ("clock_mhz", 1303))
    assert parse_policy_spec("Static:64").options == (("batch_size", 64),)
    assert parse_policy_spec("BatchSizer").options == ()
    with pytest.raises(SpecError, match=r"unknown policy 'Magic' \(known: Adaptive"):
        parse_policy_spec("Magic")
    with pytest.raises(SpecError, match="only Static takes arguments"):
        parse_policy_spec("DVFS:3")
    with pytest.raises(SpecError, match="expected Static:BATCH or Static:BATCH@MHZ"):
        parse_policy_spec("Static:big")
    with pytest.raises(SpecError, match="listed twice"):
        parse_policy_list("DVFS,DVFS")


def test_batchsizer_gets_the_offline_cutoff_from_the_profile(tiny: Path) -> None:
    job = load_workload(tiny).jobs[0]
    policy = parse_policy_spec("BatchSizer").build(job)
    assert policy.name == "BatchSizer"
    assert policy._max_beneficial_batch == job.config.profile.max_beneficial_batch()  # type: ignore[attr-defined]


def test_geometric_mean() -> None:
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert geometric_mean([]) is None
    assert geometric_mean([1.0, 0.0]) is None


def test_run_bench_compares_policies_with_dvfs_and_the_oracle(tiny: Path) -> None:
    workload = load_workload(tiny)
    seen: list[tuple[int, int, str, str]] = []
    bench = run_bench(
        workload,
        parse_policy_list("DVFS,BatchSizer,Static:256"),
        progress=lambda *args: seen.append(args),
    )
    assert seen[0] == (0, 8, "steady", "oracle")
    assert seen[-1][:2] == (8, 8)
    steady, drop = bench.jobs
    assert steady.versus("DVFS", "DVFS") == 1.0
    for outcome in bench.jobs:
        for policy in ("DVFS", "BatchSizer"):
            ratio = outcome.versus_oracle(policy)
            assert ratio is not None and 0.3 < ratio < 1.02
    # Static at the largest batch and top clock ignores the cap: it is over it.
    static = steady.metrics("Static:256")
    assert static is not None and static.over_cap_fraction > 0.5
    assert len(drop.metrics("BatchSizer").settling) == 1  # type: ignore[union-attr]
    summary = {s.policy: s for s in bench.summaries()}
    assert summary["DVFS"].geomean_vs_dvfs == pytest.approx(1.0)
    assert summary["BatchSizer"].cap_changes == 1
    assert bench.simulator_speedup > 1.0
    report = render_markdown(bench, [("A figure", "a.png")], command="capinfer bench ...")
    for heading in ("## Summary", "## Per job", "## Settling after each cap change",
                    "## BatchSizer against DVFS", "![A figure](a.png)"):  # fmt: skip
        assert heading in report
    assert "Targets for Adaptive" not in report  # Adaptive did not run


class Exploding(Policy):
    name = "Exploding"

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        raise RuntimeError("boom")

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        raise RuntimeError("boom")

    def step(self, observation: Observation) -> Decision:
        raise RuntimeError("boom")


def test_a_failing_policy_is_reported_and_the_others_still_run(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = PolicySpec.build

    def build(self: PolicySpec, job: Job) -> Policy:
        return Exploding() if self.name == "BatchDVFS" else original(self, job)

    monkeypatch.setattr(bench_module.PolicySpec, "build", build)
    bench = run_bench(load_workload(tiny), parse_policy_list("DVFS,BatchDVFS"))
    for outcome in bench.jobs:
        assert outcome.runs["BatchDVFS"].error == "RuntimeError: boom (after 0.0 s)"
        assert outcome.metrics("DVFS") is not None
    report = render_markdown(bench)
    assert "## Runs that failed" in report
    assert "steady / BatchDVFS: `RuntimeError: boom" in report


def test_capinfer_bench_writes_a_report_with_figures(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["bench", "--workload", str(tiny), "--out", str(out),
                 "--policies", "DVFS,BatchSizer,Adaptive"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[bench] 8/8 runs" in captured.err  # progress on stderr (not a terminal here)
    assert "BatchSizer" in captured.out and "faster than real time" in captured.out
    report = (out / "report.md").read_text()
    assert report.startswith("# capinfer benchmark: tiny")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["batch_size.png", "throughput_vs_dvfs.png", "throughput_vs_oracle.png",
                    "timeline_drop.png"]  # fmt: skip
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 300_000
        assert f"]({name})" in report
    results = json.loads((out / "results.json").read_text())
    assert [job["job"] for job in results["jobs"]] == ["steady", "drop"]
    assert results["jobs"][0]["policies"]["DVFS"]["vs_dvfs"] == 1.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--workload", "{missing}"], "missing.yaml: no such file"),
        (["--workload", "{tiny}", "--policies", "DVFS,Magic"], "unknown policy 'Magic'"),
        (["--workload", "{tiny}", "--jobs", "steady,nope"], "no job 'nope'"),
    ],
)
def test_capinfer_bench_bad_input_is_one_clear_line(
    tiny: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    paths = {"missing": str(tmp_path / "missing.yaml"), "tiny": str(tiny)}
    argv = ["bench", "--out", str(tmp_path / "out")] + [a.format(**paths) for a in arguments]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("capinfer: error: ") and message in err
    assert err.count("\n") == 1


FAULTY = """
    name: faulty
    defaults: {profile: p40, duration_s: 30}
    jobs:
      - name: refused
        dnn: Res50
        dataset: caltech
        cap_watts: 170
        cap_changes: [{at_s: 10, cap_watts: 120}]
        seed: 4
        faults:
          reloads: {probability: 1.0}
          power_errors: [{at_s: 20, duration_s: 4}]
"""


def test_faults_reach_the_report(tmp_path: Path) -> None:
    path = tmp_path / "faulty.yaml"
    path.write_text(dedent(FAULTY))
    bench = run_bench(load_workload(path), parse_policy_list("DVFS,BatchSizer"))
    (outcome,) = bench.jobs
    sizer = outcome.metrics("BatchSizer")
    assert sizer is not None and sizer.reload_failures > 0  # every load fails
    assert sizer.failsafe_s == pytest.approx(2.0, abs=0.3)  # 4 s of errors, stale after 2
    assert outcome.oracle.metrics.failsafe_s == 0.0
    summary = {s.policy: s for s in bench.summaries()}
    assert summary["BatchSizer"].failed_loads_per_minute == pytest.approx(
        sizer.reload_failures * 2.0
    )
    # DVFS never moves the batch size, but the failsafe does: it asks for the smallest.
    dvfs = outcome.metrics("DVFS")
    assert dvfs is not None and (dvfs.reloads, dvfs.reload_failures) == (1, 1)
    report = render_markdown(bench)
    assert "| failed loads / min | time in failsafe |" in report
    assert "## Faults" in report
    assert "any load fails with p = 1; power reads fail (transient) 20–24 s" in report
    assert f"ran at **{bench.slowest_speedup:.0f}×** real time" in report


class RaisesLater(Policy):
    name = "RaisesLater"

    def start(self, settings: PowerSettings, now_s: float) -> Decision:
        return Decision(Knobs(settings.batch_sizes[0], None), "start")

    def update_settings(self, settings: PowerSettings, now_s: float) -> Decision:
        return self.start(settings, now_s)

    def step(self, observation: Observation) -> Decision:
        if observation.now_s > 5.0:
            raise RuntimeError("bad step")
        return Decision(observation.applied, "steady")


def test_a_loop_that_raised_is_a_failed_run(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = PolicySpec.build

    def build(self: PolicySpec, job: Job) -> Policy:
        return RaisesLater() if self.name == "BatchDVFS" else original(self, job)

    monkeypatch.setattr(bench_module.PolicySpec, "build", build)
    bench = run_bench(load_workload(tiny), parse_policy_list("DVFS,BatchDVFS"))
    run = bench.jobs[0].runs["BatchDVFS"]
    assert run.metrics is None and run.result is not None
    assert run.error is not None and "started again by its supervisor" in run.error
    assert "RuntimeError: bad step" in run.error


INFEASIBLE = """
    name: infeasible
    defaults: {profile: p40, duration_s: 20, dnn: Res50, dataset: caltech}
    jobs:
      - {name: fits, cap_watts: 170, seed: 5}
      - {name: below-the-floor, cap_watts: 40, seed: 6}
"""


def test_an_infeasible_job_is_marked_and_left_out_of_the_means(tmp_path: Path) -> None:
    path = tmp_path / "infeasible.yaml"
    path.write_text(dedent(INFEASIBLE))
    bench = run_bench(load_workload(path), parse_policy_list("Adaptive"))
    fits, below = bench.jobs
    assert not fits.infeasible and below.infeasible
    summary = bench.summaries()[0]
    assert summary.infeasible_jobs == 1
    assert summary.geomean_vs_oracle == pytest.approx(fits.versus_oracle("Adaptive"))
    below_metrics = below.metrics("Adaptive")
    fits_metrics = fits.metrics("Adaptive")
    assert below_metrics is not None and fits_metrics is not None
    assert below_metrics.over_cap_fraction > 0.5  # nothing fits: over the cap, held
    assert summary.over_cap_percent == pytest.approx(100 * fits_metrics.over_cap_fraction)
    report = render_markdown(bench)
    assert "Infeasible jobs" in report and "1 of 2 (below-the-floor)" in report
    assert "(cap unreachable)" in report


def test_capinfer_bench_generate_writes_both_halves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "generated"
    assert main(["bench", "--generate", "6", "--seed", "3", "--out", str(out)]) == 0
    tuning = load_workload(out / "generated-tuning.yaml")
    held_out = load_workload(out / "generated-heldout.yaml")
    assert len(tuning.jobs) + len(held_out.jobs) == 6
    assert all(job.config.seed % 2 == 0 for job in tuning.jobs)
    assert all(job.config.seed % 2 == 1 for job in held_out.jobs)
    assert "generated-heldout.yaml: " in capsys.readouterr().out
    assert main(["bench", "--generate", "6", "--workload", "x.yaml", "--out", str(out)]) == 2
