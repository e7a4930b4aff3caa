"""``capinfer demo``: the whole loop on this machine, with a plot at the end."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from capinfer.demo import Demo, default_plan, plot, print_summary, write_samples


def _say(message: str) -> None:
    print(message, flush=True)


def _run(args: argparse.Namespace) -> int:
    plan = default_plan(args.duration, None)
    out = Path(args.out).resolve()
    started = time.monotonic()
    demo = Demo(out, plan, _say, cluster_name=args.cluster_name)
    result = demo.run()
    print_summary(result, plan, _say)
    picture = plot(result, plan, out / "demo.png")
    samples = write_samples(result, out / "samples.json")
    _say(f"plot: {picture}")
    _say(f"samples: {samples}")
    _say(f"logs: {out}/operator.log, {out}/pod/sidecar.log, {out}/pod/triton/tritonserver.log")
    _say(f"demo finished in {time.monotonic() - started:.0f} s; everything it started is stopped")
    failed = result.load is None or result.load.failed or result.load.wrong
    return 1 if failed or not result.cleaned_up else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run capinfer end to end on this machine (local cluster, virtual GPU)",
        description=(
            "Local cluster with fake GPU nodes, the operator, a sample PowerCappedInference;"
            " the pod's Triton and sidecar run here on a virtual GPU under load while the"
            " cap is lowered and raised with kubectl patch. Prints live progress, a summary"
            " and writes a plot. Ctrl-C stops everything it started."
        ),
    )
    parser.add_argument("--out", default="demo-output", help="folder for the plot and logs")
    parser.add_argument(
        "--duration", type=float, help="seconds of load (default 135; cap changes scale with it)"
    )
    parser.add_argument("--cluster-name", default="demo", help="local cluster name (default demo)")
    parser.set_defaults(handler=_run)
