"""How long one budget split takes: ``allocate`` and ``next_caps`` over N members.

Members are random but fixed by the seed: 1-8 GPUs each, bounds between 100 and 700 W,
eight-point concave-ish curves from random measurements, one in ten without a curve. The
figure is the median wall-clock time of repeated calls (after one warm-up), for each split
policy, at a budget that binds (60% of what the members could use).

    .venv/bin/python bench/core/allocate.py --members 1000
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from functools import partial

from capinfer_core.budget import (
    BudgetMember,
    SplitPolicy,
    allocate,
    curve_from_measurements,
    next_caps,
)

TARGET_MS = 100.0


def fleet(count: int, seed: int) -> list[BudgetMember]:
    rng = random.Random(seed)
    members = []
    for index in range(count):
        low = rng.uniform(100.0, 200.0)
        high = rng.uniform(300.0, 700.0)
        curve = None
        if rng.random() >= 0.1:
            points = []
            for _ in range(rng.randint(20, 60)):
                watts = rng.uniform(low * 0.8, high)
                points.append((watts, 1000.0 * (1 - 2.0 ** (-watts / rng.uniform(80, 300)))))
            curve = curve_from_measurements(points, uncapped_watts=high)
        members.append(
            BudgetMember(
                key=f"member-{index:05d}",
                gpus=rng.randint(1, 8),
                min_watts=low,
                max_watts=high,
                priority=rng.randint(0, 3),
                curve=curve,
                demand_watts=rng.uniform(low, high),
            )
        )
    return members


def median_ms(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(times)


def report(count: int, seed: int, repeats: int) -> None:
    members = fleet(count, seed)
    budget = 0.6 * sum(m.useful_watts * m.gpus for m in members)
    gpus = sum(m.gpus for m in members)
    print(f"{count} members, {gpus} GPUs, budget {budget / 1000:.1f} kW:")
    for policy in SplitPolicy:
        ms = median_ms(partial(allocate, budget, members, policy), repeats)
        verdict = "within" if ms < TARGET_MS else "OVER"
        print(f"  allocate {policy.value:<14} {ms:8.2f} ms  ({verdict} {TARGET_MS:g} ms)")
    first = allocate(budget, members, SplitPolicy.EQUAL).caps_watts
    second = allocate(budget, members).caps_watts
    counts = {m.key: m.gpus for m in members}
    ms = median_ms(partial(next_caps, second, first, first, budget, counts), repeats)
    print(f"  next_caps                {ms:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for count in args.members:
        report(count, args.seed, args.repeats)


if __name__ == "__main__":
    main()
