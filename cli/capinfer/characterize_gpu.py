"""``capinfer characterize`` on a real GPU: a PyTorch runner, an NVML meter, the options.

PyTorch and torchvision are not dependencies of capinfer: they are imported only when a
sweep starts, and their absence is one clear error. This module does not import the rest of
the command line (which needs the Triton client), so a GPU machine with PyTorch and NVML but
without Triton runs it directly: ``python -m capinfer.characterize_gpu --model resnet50 …``.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capinfer.characterize import (
    DEFAULT_BATCH_SIZES,
    GpuFacts,
    IdleResult,
    OutOfMemoryError,
    PointResult,
    Reading,
    SweepResult,
    SweepSettings,
    clock_sweep,
    measure_idle,
    profile_document,
    render_summary,
    sweep,
    write_figures,
    write_profile,
    write_rows,
)
from capinfer.errors import UserError

MODELS = ("resnet50", "mobilenet_v2")
TORCH_MISSING = "capinfer characterize needs PyTorch and torchvision: pip install torch torchvision"
CLOCK_SWEEP_REFUSED = (
    "--clock-sweep locks the GPU's SM clocks through NVML: use it only on a GPU you own, "
    "and say so with --i-own-this-gpu"
)


def import_torch() -> tuple[Any, Any]:
    """``(torch, torchvision)``, or the one-line error that says how to get them."""
    try:
        # Not dependencies of capinfer, and without type information: imported by name.
        torch = importlib.import_module("torch")
        torchvision = importlib.import_module("torchvision")
    except ImportError:
        raise UserError(TORCH_MISSING) from None
    return torch, torchvision


class TorchRunner:
    """A torchvision model with random weights (no download), random inputs on the device."""

    def __init__(self, torch: Any, torchvision: Any, model: str, device: str) -> None:
        self._torch = torch
        self._device = torch.device(device)
        torch.backends.cudnn.benchmark = True  # the fastest kernels per shape, as a server has
        builder = getattr(torchvision.models, model)
        self._model = builder(weights=None).eval().to(self._device)
        self._inputs: dict[int, Any] = {}

    def run_batch(self, batch_size: int) -> None:
        torch = self._torch
        try:
            inputs = self._inputs.get(batch_size)
            if inputs is None:
                self._inputs.clear()  # one size at a time: the last one's memory goes back
                inputs = torch.randn(batch_size, 3, 224, 224, device=self._device)
                self._inputs[batch_size] = inputs
            with torch.inference_mode():
                self._model(inputs)
            torch.cuda.synchronize(self._device)
        except torch.cuda.OutOfMemoryError as error:
            self._inputs.clear()
            torch.cuda.empty_cache()
            raise OutOfMemoryError(str(error).splitlines()[0]) from None


class NvmlMeter:
    """The NVML device's readings as the sweep wants them."""

    def __init__(self, gpu: Any) -> None:
        self._gpu = gpu
        self._utilization = True

    def read(self) -> Reading:
        return Reading(
            instant_watts=self._gpu.power_watts(),
            average_watts=self._gpu.average_power_watts(),
            sm_utilization_percent=self._sm_utilization_percent(),
            sm_clock_mhz=float(self._gpu.sm_clock_mhz()),
        )

    def _sm_utilization_percent(self) -> float:
        from capinfer_sidecar.gpu import GpuNotSupportedError  # noqa: PLC0415

        if self._utilization:
            try:
                return float(self._gpu.sm_utilization_percent())
            except GpuNotSupportedError:
                self._utilization = False  # said once in the summary as nan, not per sample
        return float("nan")

    def energy_joules(self) -> float:
        return float(self._gpu.energy_joules())

    def memory_used_bytes(self) -> int:
        return int(self._gpu.memory_used_bytes())


def nvml_uuid(torch: Any, device: str, visible_uuids: Sequence[str]) -> str:
    """The NVML UUID of the torch device (indices differ when CUDA_VISIBLE_DEVICES is set)."""
    index = torch.device(device).index or 0
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return text if text.startswith("GPU-") else f"GPU-{text}"
    if index >= len(visible_uuids):
        raise UserError(f"--device {device}: NVML sees only {len(visible_uuids)} GPU(s)")
    return visible_uuids[index]


def pick_clocks(supported_mhz: Sequence[int], count: int) -> tuple[int, ...]:
    """``count`` clocks spread evenly from half the top clock to the top, ascending."""
    top = max(supported_mhz)
    usable = sorted(c for c in set(supported_mhz) if c >= top / 2)
    if count >= len(usable):
        return tuple(usable)
    if count == 1:
        return (top,)
    step = (len(usable) - 1) / (count - 1)
    return tuple(sorted({usable[round(i * step)] for i in range(count)}))


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(word) for word in text.split(",") if word.strip())
    except ValueError:
        raise UserError(f"--batch-sizes {text!r}: expected comma-separated integers") from None
    if not sizes or any(s <= 0 for s in sizes) or list(sizes) != sorted(set(sizes)):
        raise UserError(f"--batch-sizes {text!r}: expected positive integers, ascending")
    return sizes


def _print_point(point: PointResult) -> None:
    clock = "" if point.locked_clock_mhz is None else f" @ {point.locked_clock_mhz} MHz"
    print(
        f"[characterize] batch {point.batch_size:>4}{clock}: {point.throughput_ips:9.1f} inf/s, "
        f"p99 {point.latency_p99_ms:7.2f} ms, peak {point.instant_power_peak_watts:6.1f} W, "
        f"{point.energy_per_inference_joules:.4f} J/inf",
        file=sys.stderr,
        flush=True,
    )


def _command_line(args: argparse.Namespace) -> str:
    words = ["capinfer", "characterize", "--model", args.model, "--device", args.device]
    words += ["--batch-sizes", args.batch_sizes, "--seconds-per-point", str(args.seconds_per_point)]
    words += ["--warmup", str(args.warmup), "--out", str(args.out)]
    if args.clock_sweep:
        words += ["--clock-sweep", "--i-own-this-gpu", "--clock-count", str(args.clock_count)]
    return " ".join(shlex.quote(word) for word in words)


def run_characterize(args: argparse.Namespace) -> int:
    """The handler of ``capinfer characterize``."""
    if args.clock_sweep and not args.i_own_this_gpu:
        raise UserError(CLOCK_SWEEP_REFUSED)
    settings = SweepSettings(
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        seconds_per_point=args.seconds_per_point,
        warmup_batches=args.warmup,
    )
    torch, torchvision = import_torch()
    if not torch.cuda.is_available():
        raise UserError("PyTorch sees no CUDA GPU: capinfer characterize measures a real one")
    from capinfer_node_agent.nvml import NvmlControls  # noqa: PLC0415
    from capinfer_sidecar.gpu import GpuError  # noqa: PLC0415 (NVML only for this command)
    from capinfer_sidecar.gpu.nvml import NvmlSession  # noqa: PLC0415

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with NvmlSession() as nvml:
            (gpu,) = nvml.gpus([nvml_uuid(torch, args.device, nvml.uuids())])
            meter = NvmlMeter(gpu)
            supported = gpu.supported_sm_clocks_mhz()
            facts = GpuFacts(gpu.name, gpu.power_limit_watts(), max(supported))
            idle_floor = measure_idle(meter, args.idle_seconds)
            runner = TorchRunner(torch, torchvision, args.model, args.device)
            try:
                runner.run_batch(settings.batch_sizes[0])
            except OutOfMemoryError as error:
                raise UserError(
                    f"batch size {settings.batch_sizes[0]} does not fit: {error}"
                ) from None
            time.sleep(0.5)  # let the last kernels' power fade before the idle reading
            idle = measure_idle(meter, args.idle_seconds)
            if args.clock_sweep:
                clocks = pick_clocks(supported, args.clock_count)
                # The clock sweep runs as root and sets clocks as the node agent does.
                from capinfer_node_agent.nvml import NvmlControls  # noqa: PLC0415

                controls = NvmlControls(gpu)
                result = clock_sweep(
                    runner, meter, controls, clocks, settings, progress=_print_point
                )
            else:
                result = sweep(runner, meter, settings, progress=_print_point)
    except GpuError as error:
        raise UserError(f"NVML: {error}") from None
    _write_outputs(
        args,
        result,
        facts=facts,
        idle=idle,
        idle_floor_watts=idle_floor.mean_watts,
        settings=settings,
    )
    print(f"results: {out_dir / 'summary.md'}")
    return 0


def _write_outputs(
    args: argparse.Namespace,
    result: SweepResult,
    *,
    facts: GpuFacts,
    idle: IdleResult,
    idle_floor_watts: float,
    settings: SweepSettings,
) -> None:
    out_dir: Path = args.out
    document = profile_document(
        result, model=args.model, gpu=facts, idle=idle, idle_floor_watts=idle_floor_watts
    )
    profile_name = f"{args.model}.profile.yaml"
    write_profile(document, out_dir / profile_name)
    meta = {"model": args.model, "gpu": facts.name, "command": _command_line(args)}
    write_rows(result, out_dir / "rows.csv", out_dir / "rows.json", meta)
    files = [
        ("profile (kind: measured)", profile_name),
        ("rows", "rows.csv"),
        ("rows", "rows.json"),
    ]
    if not args.no_plots:
        title = f"{args.model} on {facts.name}"
        figures = write_figures(
            result, out_dir, title=title, power_limit_watts=facts.power_limit_watts
        )
        files += figures
    summary = render_summary(
        result,
        model=args.model,
        gpu=facts,
        idle=idle,
        settings=settings,
        files=files,
        command=_command_line(args),
    )
    (out_dir / "summary.md").write_text(summary, encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODELS, default="resnet50", help="torchvision model")
    parser.add_argument(
        "--batch-sizes",
        default=",".join(str(b) for b in DEFAULT_BATCH_SIZES),
        help="comma-separated ladder, ascending (default %(default)s); stops at the first "
        "size that does not fit in memory",
    )
    parser.add_argument(
        "--seconds-per-point", type=float, default=5.0, help="timed window per batch size"
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per batch size")
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="idle power window")
    parser.add_argument("--device", default="cuda:0", help="the PyTorch device (default cuda:0)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the results")
    parser.add_argument(
        "--clock-sweep",
        action="store_true",
        help="also sweep locked SM clocks: this locks SM clocks via NVML (needs root) and "
        "must only be used on GPUs you own; refused without --i-own-this-gpu",
    )
    parser.add_argument(
        "--i-own-this-gpu", action="store_true", help="confirms --clock-sweep may lock clocks"
    )
    parser.add_argument(
        "--clock-count", type=int, default=5, help="clocks in a --clock-sweep (default 5)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


DESCRIPTION = (
    "Sweep the batch ladder of a torchvision model (random weights) on a real GPU and "
    "record throughput, latency p50/p99, instant and 1 s average power (mean and peak), "
    "energy per inference, SM utilization and memory; write a measured profile for the "
    "simulator, rows.csv/rows.json, PNG figures and summary.md. Needs PyTorch, torchvision "
    "and NVML. Never changes clocks or power limits unless --clock-sweep --i-own-this-gpu."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="capinfer characterize", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_characterize(args)
    except UserError as error:
        print(f"capinfer: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
