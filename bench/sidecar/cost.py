"""The sidecar's steady-state cost: CPU (% of one core) and RSS at 10 Hz sampling.

A real ``capinfer-sidecar`` process (standalone: a power file, no API server) controls a
real tritonserver serving the ``simbatch`` model on the virtual GPU, as ``capinfer demo``
runs it (:class:`capinfer.localpod.LocalPod`, with its local node agent), at the default
``sampleIntervalMs`` of 100 ms. Two scenarios:

- ``loaded``: a closed-loop load keeps Triton busy; every batch the model runs is reported
  to the virtual GPU in the sidecar's process (one datagram per batch);
- ``idle``: no requests; the loop still samples at 10 Hz.

For each, after a warm-up: the sidecar's CPU over the window from ``/proc/<pid>/stat``
(utime + stime), its RSS every second from ``/proc/<pid>/status``, then (with ``py-spy``
installed) a sampling profile of the same process, which splits the CPU between the
virtual GPU (``capinfer_sidecar.gpu.virtual``, ``capinfer_sidecar.sim``) and the rest.
Separately, in a fresh interpreter, the RSS each import of the sidecar adds.

NVML cannot be measured here (no GPU). The figure an NVML sidecar implies is the total
less the virtual GPU's share, plus NVML's own reads (not measured).

    .venv/bin/pip install py-spy   # optional: the CPU split
    .venv/bin/python bench/sidecar/cost.py --seconds 60 --out bench/sidecar/report
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capinfer.localpod import LocalPod
from capinfer.testmodels import SimBatchSpec
from capinfer.tritonload import ClosedLoopLoad

TARGET_CPU_PERCENT = 2.0
TARGET_RSS_MB = 80.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VIRTUAL_GPU_FILES = ("capinfer_sidecar/gpu/virtual.py", "capinfer_sidecar/sim/")
# Imported in this order, each adding what the ones before did not load.
IMPORTS = (
    "yaml",
    "prometheus_client",
    "aiohttp",
    "kubernetes.client",
    "numpy",
    "grpc",
    "tritonclient.grpc.aio",
    "pynvml",
    "capinfer_sidecar.sim.profiles",
    "capinfer_sidecar.gpu.virtual",
    "capinfer_sidecar.main",
)


@dataclass
class Scenario:
    name: str
    seconds: float
    cpu_percent: float
    rss_mb_mean: float
    rss_mb_max: float
    threads: int
    inferences: int | None = None
    profile_samples: int = 0
    virtual_gpu_share: float | None = None
    """Of the profiled on-CPU samples, those with a virtual GPU frame on the stack."""
    top_functions: list[tuple[str, int]] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def status_value(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match, key
    return int(match.group(1))


async def measure(pid: int, seconds: float) -> tuple[float, list[float], int]:
    rss: list[float] = []
    wall, cpu = time.monotonic(), cpu_seconds(pid)
    end = wall + seconds
    while time.monotonic() < end:
        rss.append(status_value(pid, "VmRSS") / 1024)
        await asyncio.sleep(1.0)
    percent = 100 * (cpu_seconds(pid) - cpu) / (time.monotonic() - wall)
    return percent, rss, status_value(pid, "Threads")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def profile(pid: int, seconds: float, out: Path) -> Counter[str] | None:
    py_spy = find_py_spy()
    if py_spy is None:
        print("py-spy is not installed: no CPU split", file=sys.stderr)
        return None
    # --gil: only samples holding the GIL, i.e. Python running, not waiting in epoll.
    command = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--gil",
               "--nonblocking", "--duration", str(int(seconds)), "--format", "raw",
               "--output", str(out)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        print(f"py-spy failed: {stderr.decode()[-500:]}", file=sys.stderr)
        return None
    stacks: Counter[str] = Counter()
    for line in (await asyncio.to_thread(out.read_text)).splitlines():
        stack, _, count = line.rpartition(" ")
        stacks[stack] += int(count)
    return stacks


def attributed_to(stack: str) -> str:
    """The innermost capinfer_sidecar frame of a stack; else its outermost frame."""
    frames = stack.split(";")
    for frame in reversed(frames):
        if "capinfer_sidecar/" in frame:
            return re.sub(r" \(.*capinfer_sidecar/([^:]+):\d+\)", r" (\1)", frame)
    return re.sub(r":\d+\)$", ")", frames[0]) if frames else "?"


def split(stacks: Counter[str]) -> tuple[int, float, list[tuple[str, int]]]:
    total = sum(stacks.values())
    virtual = sum(n for s, n in stacks.items() if any(f in s for f in VIRTUAL_GPU_FILES))
    owners: Counter[str] = Counter()
    for stack, count in stacks.items():
        owners[attributed_to(stack)] += count
    return total, (virtual / total if total else 0.0), owners.most_common(12)


async def run_scenario(
    name: str, seconds: float, warmup_s: float, work: Path, sidecar_source: Path | None
) -> Scenario:
    power_file = work / "power.yaml"
    power_file.write_text("capWatts: 150\npolicy: Adaptive\nsampleIntervalMs: 100\n")
    pod = LocalPod(
        work / "pod",
        ["--power-file", str(power_file), "--log-level", "WARNING"],
        model=SimBatchSpec(max_batch_size=8, max_supported_batch_size=64),
        # Another revision's capinfer_sidecar first on the path, to compare against it.
        env={"PYTHONPATH": str(sidecar_source)} if sidecar_source else {},
    )
    pod.start()
    load = None
    try:
        assert pod.sidecar is not None and pod.triton is not None
        pid = pod.sidecar.pid
        if name == "loaded":
            load = ClosedLoopLoad(pod.triton.http_address, "simbatch", concurrency=16)
            await load.__aenter__()
        await asyncio.sleep(warmup_s)
        cpu, rss, threads = await measure(pid, seconds)
        stacks = await profile(pid, min(seconds, 30), work / "profile.txt")
        inferences = None
        if load is not None:
            counts = await load.stop()
            inferences = counts.succeeded
            load = None
    finally:
        if load is not None:
            await load.stop()
        pod.stop()
    scenario = Scenario(name, seconds, round(cpu, 2), round(statistics.mean(rss), 1),
                        round(max(rss), 1), threads, inferences)  # fmt: skip
    if stacks:
        total, share, top = split(stacks)
        scenario.profile_samples, scenario.virtual_gpu_share = total, round(share, 3)
        scenario.top_functions = top
    return scenario


def import_costs() -> list[tuple[str, float]]:
    """RSS (MB) each import adds, in a fresh interpreter."""
    code = (
        "import re, json, importlib, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "rss = lambda: int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())"
        ".group(1)) / 1024\n"
        f"out = [('python', rss())]\n"
        f"for name in {list(IMPORTS)!r}:\n"
        "    importlib.import_module(name); out.append((name, rss()))\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    levels = json.loads(result.stdout)
    return [(levels[0][0], round(levels[0][1], 1))] + [
        (name, round(after - before, 1))
        for (_, before), (name, after) in itertools.pairwise(levels)
    ]


def report(scenarios: list[Scenario], imports: list[tuple[str, float]]) -> str:
    lines = ["# capinfer-sidecar steady-state cost (10 Hz, virtual GPU, real tritonserver)", ""]
    lines.append(f"Target: <= {TARGET_CPU_PERCENT}% of a core and <= {TARGET_RSS_MB:.0f} MB RSS "
                 "with the NVML device.")  # fmt: skip
    lines += ["", "| scenario | window s | CPU % of a core | RSS MB mean / max | threads "
              "| virtual GPU share of CPU | implied without virtual GPU |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in scenarios:
        share = "n/a" if s.virtual_gpu_share is None else f"{s.virtual_gpu_share:.0%}"
        rest = ("n/a" if s.virtual_gpu_share is None
                else f"{s.cpu_percent * (1 - s.virtual_gpu_share):.2f}%")  # fmt: skip
        lines.append(f"| {s.name} | {s.seconds:.0f} | {s.cpu_percent:.2f} | "
                     f"{s.rss_mb_mean:.1f} / {s.rss_mb_max:.1f} | {s.threads} | {share} | "
                     f"{rest} |")  # fmt: skip
    lines += ["", "RSS each import adds (fresh interpreter, MB):", ""]
    lines += [f"- {name}: {mb}" for name, mb in imports]
    for s in scenarios:
        if s.top_functions:
            lines += ["", f"Where {s.name}'s Python time goes (py-spy --gil, "
                      f"{s.profile_samples} samples, each charged to its innermost "
                      "capinfer_sidecar frame):", ""]  # fmt: skip
            lines += [f"- {count}  {frame}" for frame, count in s.top_functions]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    scenarios = []
    with tempfile.TemporaryDirectory(prefix="capinfer-sidecar-cost-") as folder:
        for name in args.scenario:
            work = Path(folder) / name
            work.mkdir()
            print(f"== {name}: warm-up {args.warmup:.0f} s, window {args.seconds:.0f} s",
                  flush=True)  # fmt: skip
            scenario = await run_scenario(
                name, args.seconds, args.warmup, work, args.sidecar_source
            )
            print(json.dumps(asdict(scenario), indent=1), flush=True)
            scenarios.append(scenario)
    text = report(scenarios, import_costs())
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cost.md").write_text(text)
        (args.out / "cost.json").write_text(
            json.dumps([asdict(s) for s in scenarios], indent=1) + "\n"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before it")
    parser.add_argument("--scenario", action="append", choices=("loaded", "idle"))
    parser.add_argument("--out", type=Path, help="folder for cost.md and cost.json")
    parser.add_argument(
        "--sidecar-source",
        type=Path,
        help="run the sidecar package from this folder (e.g. an older revision's sidecar/, "
        "from `git archive REV sidecar`) instead of the installed one",
    )
    args = parser.parse_args()
    args.scenario = args.scenario or ["loaded", "idle"]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
