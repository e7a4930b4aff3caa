"""GPU power/performance profiles: how long a batch takes and how much power it draws.

A *profile set* is one YAML file for one GPU: the GPU itself (power limit, idle power, SM clock
levels, batch-size ladder, how NVML reports power) and the workloads it can run, one per
(DNN, dataset) pair. Two kinds of file exist:

- ``kind: parametric`` -- a physical model with a few constants per DNN family, derived from
  published FLOPs (the built-in ``p40`` and ``h100`` sets; every assumption is written next
  to its number in the file);
- ``kind: measured`` -- a grid of (batch size, clock) points measured on a real GPU
  (latency, host time, busy power), interpolated between them. Measured profiles drop in
  this way without code changes.

The serving cycle both kinds describe (the BatchSizer paper, section 3, Fig. 2): the host
prepares a batch while the GPU waits at its loaded-idle power, then the GPU executes it at
its *busy* power. Power therefore spikes once per batch, and the spike -- the *peak* -- is
what a cap must respect.

The parametric model (``f`` the SM clock, ``b`` the batch size)::

    latency(b, f)  = launch + weights + b * gflops / (rate(f) * u(b))
    rate(f)        = peak_tflops * efficiency * f_eff / f_max
    u(b)           = (b / b_sat) ** gamma                  for b <= b_sat  (SMs filling up)
                   = 1 / (1 + contention * (b / b_sat - 1)) past it       (throughput flat)
    power(b, f)    = loaded_idle + sm_watts * min(1, (b / b_sat) ** rho) * s(f)
                                 + memory_watts * m(b) * f_eff / f_max
    s(f)           = (f_eff / f_max) * (V(f_eff) / V(f_max)) ** 2     (dynamic power ~ f V^2)
    m(b)           = log2(1 + b) / log2(1 + memory_full_batch)   (keeps rising past b_sat)
    prep(b)        = prep_s_per_batch + prep_s_per_image * b   (host, clock-independent)

Throughput and power rise with the batch size at different rates (gamma and rho): a small
batch leaves most SMs idle (low power) while its few busy SMs wait on serial kernel latency
(throughput lower, but not in proportion). ``f_eff`` is the requested clock, lowered by the
GPU's own power limiter when the busy power would exceed the board limit (as the firmware
does). ``b_sat = fill_gflops / gflops`` (work
per batch that fills the GPU), clipped to ``[min_saturation_batch, max_saturation_batch]``.
"""

from __future__ import annotations

import abc
import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from capinfer_sidecar.sim.yamlread import Node, SpecError, load_yaml_file

BUILTIN_PACKAGE = "capinfer_sidecar.sim.profile_data"
"""Where the built-in profile sets live (one ``<name>.yaml`` each)."""


# -- the GPU ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoltageCurve:
    """Core voltage against SM clock: a floor at low clocks, then linear up to the top.

    GPUs hold a minimum voltage below some clock and raise it roughly linearly above, which
    is why the lowest clock levels save little energy per inference and the top ones cost a
    lot (dynamic power ~ f V^2).
    """

    floor_volts: float
    floor_until_mhz: float
    max_volts: float
    max_clock_mhz: float

    def volts(self, clock_mhz: float) -> float:
        if clock_mhz <= self.floor_until_mhz or self.max_clock_mhz <= self.floor_until_mhz:
            return self.floor_volts
        span = (clock_mhz - self.floor_until_mhz) / (self.max_clock_mhz - self.floor_until_mhz)
        return self.floor_volts + (self.max_volts - self.floor_volts) * min(span, 1.0)

    def dynamic_scale(self, clock_mhz: float) -> float:
        """``(f / f_max) * (V(f) / V(f_max)) ** 2``: 1 at the top clock."""
        ratio = self.volts(clock_mhz) / self.volts(self.max_clock_mhz)
        return clock_mhz / self.max_clock_mhz * ratio * ratio


@dataclass(frozen=True)
class GpuSpec:
    """What is true of the GPU whatever it runs."""

    name: str
    power_limit_watts: float
    """The board limit enforced by the GPU itself (firmware lowers clocks above it)."""
    idle_floor_watts: float
    """Power with no CUDA context (lowest P-state); not reached while a model is loaded."""
    loaded_idle_watts: float
    """Power with a model loaded and nothing executing: the floor between batches."""
    clock_levels_mhz: tuple[int, ...]
    """Settable SM clocks, ascending."""
    default_clock_mhz: int
    """The clock when clocks are not locked (boost)."""
    batch_sizes: tuple[int, ...]
    """The batch-size ladder a controller chooses from."""
    clock_change_s: float
    """Time from a clock-lock request to the new clock being in effect."""
    reload_s: float
    """Default Triton reload time for a batch-size change (a workload may override it)."""
    power_noise_watts: float
    """Standard deviation of a power reading around the true power (sensor noise)."""
    power_jitter_fraction: float
    """Input-dependent batch-to-batch variation of busy power: each batch draws within
    ``nominal * (1 +- jitter)``. The upper edge is the peak a cap must respect."""

    @property
    def min_clock_mhz(self) -> int:
        return self.clock_levels_mhz[0]

    @property
    def max_clock_mhz(self) -> int:
        return self.clock_levels_mhz[-1]


# -- one workload: a DNN with an input dataset on the GPU ------------------------------------


class WorkloadProfile(abc.ABC):
    """Latency, throughput and power of one (DNN, dataset) pair on one GPU.

    A clock of None means "not locked": the GPU's default clock. Every function is pure and
    deterministic; noise and jitter are the virtual GPU's business.
    """

    def __init__(self, gpu: GpuSpec, dnn: str, dataset: str, reload_s: float) -> None:
        self.gpu = gpu
        self.dnn = dnn
        self.dataset = dataset
        self.reload_s = reload_s

    @property
    def label(self) -> str:
        return f"{self.dnn}/{self.dataset} on {self.gpu.name}"

    # -- what each kind of profile provides -------------------------------------------------

    @abc.abstractmethod
    def batch_latency_s(self, batch: int, clock_mhz: float | None) -> float:
        """GPU execution time of one batch (the busy part of a cycle)."""

    @abc.abstractmethod
    def prep_s(self, batch: int) -> float:
        """Host time before a batch runs, the GPU at loaded idle (the gap between spikes)."""

    @abc.abstractmethod
    def busy_power_watts(self, batch: int, clock_mhz: float | None) -> float:
        """Nominal power while a batch executes."""

    def effective_clock_mhz(self, batch: int, clock_mhz: float | None) -> float:
        """The clock the SMs really run at (after the board's own power limiter)."""
        del batch
        return float(self.gpu.default_clock_mhz if clock_mhz is None else clock_mhz)

    # -- derived ----------------------------------------------------------------------------

    @property
    def idle_watts(self) -> float:
        """Power between batches: the loaded-idle floor."""
        return self.gpu.loaded_idle_watts

    def cycle_s(self, batch: int, clock_mhz: float | None) -> float:
        """One batch from the start of its preparation to the end of its execution."""
        return self.prep_s(batch) + self.batch_latency_s(batch, clock_mhz)

    def throughput_ips(self, batch: int, clock_mhz: float | None) -> float:
        """Inferences per second with the queue never empty (saturating load)."""
        return batch / self.cycle_s(batch, clock_mhz)

    def peak_power_watts(self, batch: int, clock_mhz: float | None) -> float:
        """The highest power a batch can draw: nominal busy power plus the jitter bound."""
        return self.busy_power_watts(batch, clock_mhz) * (1.0 + self.gpu.power_jitter_fraction)

    def mean_power_watts(self, batch: int, clock_mhz: float | None) -> float:
        """Time-averaged power under saturating load (spikes and gaps together)."""
        busy_s = self.batch_latency_s(batch, clock_mhz)
        prep_s = self.prep_s(batch)
        busy_j = self.busy_power_watts(batch, clock_mhz) * busy_s
        return (busy_j + self.idle_watts * prep_s) / (busy_s + prep_s)

    def max_beneficial_batch(self, clock_mhz: float | None = None, gain: float = 0.01) -> int:
        """The smallest rung past which no rung raises throughput by more than ``gain``.

        BatchSizer's offline cutoff (section 4.2): larger batch sizes only cost power.
        """
        ladder = self.gpu.batch_sizes
        rates = [self.throughput_ips(batch, clock_mhz) for batch in ladder]
        for index, batch in enumerate(ladder):
            if max(rates[index:]) <= rates[index] * (1.0 + gain):
                return batch
        return ladder[-1]


# -- the parametric model -------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyParams:
    """Constants shared by the DNNs of one architecture family on one GPU."""

    efficiency: float
    """Fraction of the GPU's peak FLOP rate reached once the SMs are full."""
    fill_gflops: float
    """Work per batch that fills the SMs: ``b_sat = fill_gflops / gflops_per_image``."""
    utilization_exponent: float
    """gamma: how fast throughput efficiency rises with the batch size below saturation."""
    power_exponent: float
    """rho: how fast SM power activity rises with the batch size below saturation."""
    contention: float
    """Throughput lost per extra ``b_sat`` past saturation (shared-resource contention)."""
    launch_overhead_s: float
    """Per-batch kernel-launch and framework time, independent of clock and batch size."""
    sm_watts: float
    """Busy power above loaded idle from the SMs, at full utilization and the top clock."""
    memory_watts: float
    """Busy power above loaded idle from memory traffic at ``memory_full_batch``."""


@dataclass(frozen=True)
class DnnParams:
    """One DNN as published."""

    key: str
    full_name: str
    family: str
    gflops_per_image: float
    frozen_graph_mb: float
    table1_mflops: float | None


@dataclass(frozen=True)
class DatasetParams:
    """Host-side cost of feeding one input dataset, in series with the GPU."""

    key: str
    prep_s_per_batch: float
    prep_s_per_image: float


@dataclass(frozen=True)
class ModelConstants:
    """GPU-wide constants of the parametric model."""

    peak_tflops: float
    """Peak FLOP rate at the top clock in the precision served."""
    memory_gbps: float
    """Memory bandwidth: weights are read once per batch at this rate."""
    memory_full_batch: int
    """Batch size at which memory-traffic power reaches ``memory_watts``."""
    min_saturation_batch: float
    max_saturation_batch: float
    reload_s_per_mb: float
    """Extra reload time per MB of model: bigger models take longer to load."""


class ParametricWorkload(WorkloadProfile):
    """The physical model of the module docstring for one (DNN, dataset) pair."""

    def __init__(
        self,
        *,
        gpu: GpuSpec,
        voltage: VoltageCurve,
        constants: ModelConstants,
        family: FamilyParams,
        dnn: DnnParams,
        dataset: DatasetParams,
    ) -> None:
        reload_s = gpu.reload_s + constants.reload_s_per_mb * dnn.frozen_graph_mb
        super().__init__(gpu, dnn.key, dataset.key, reload_s)
        self.voltage = voltage
        self.constants = constants
        self.family = family
        self.dnn_params = dnn
        self.dataset_params = dataset
        self.saturation_batch = min(
            max(family.fill_gflops / dnn.gflops_per_image, constants.min_saturation_batch),
            constants.max_saturation_batch,
        )
        self._weights_s = dnn.frozen_graph_mb / (constants.memory_gbps * 1000.0)
        self._rate_gflops_at_top = constants.peak_tflops * 1000.0 * family.efficiency
        self._memory_norm = math.log2(1.0 + constants.memory_full_batch)
        self._clock_cache: dict[tuple[int, float | None], float] = {}

    @property
    def fixed_latency_s(self) -> float:
        """The part of a batch's latency that does not depend on clock or batch size."""
        return self.family.launch_overhead_s + self._weights_s

    def utilization(self, batch: int) -> float:
        """Fraction of the saturated FLOP rate a batch of this size reaches."""
        ratio = batch / self.saturation_batch
        if ratio <= 1.0:
            return float(ratio**self.family.utilization_exponent)
        return 1.0 / (1.0 + self.family.contention * (ratio - 1.0))

    def sm_activity(self, batch: int) -> float:
        ratio = batch / self.saturation_batch
        return float(min(1.0, ratio**self.family.power_exponent))

    def memory_activity(self, batch: int) -> float:
        return math.log2(1.0 + batch) / self._memory_norm

    def raw_power_watts(self, batch: int, clock_mhz: float) -> float:
        """Busy power at exactly ``clock_mhz``, before the board limiter."""
        top = self.gpu.max_clock_mhz
        return (
            self.gpu.loaded_idle_watts
            + self.family.sm_watts * self.sm_activity(batch) * self.voltage.dynamic_scale(clock_mhz)
            + self.family.memory_watts * self.memory_activity(batch) * clock_mhz / top
        )

    def effective_clock_mhz(self, batch: int, clock_mhz: float | None) -> float:
        key = (batch, clock_mhz)
        cached = self._clock_cache.get(key)
        if cached is None:
            cached = self._limit_clock(batch, super().effective_clock_mhz(batch, clock_mhz))
            self._clock_cache[key] = cached
        return cached

    def _limit_clock(self, batch: int, clock_mhz: float) -> float:
        limit = self.gpu.power_limit_watts
        if self.raw_power_watts(batch, clock_mhz) <= limit:
            return clock_mhz
        low = float(min(self.gpu.min_clock_mhz, clock_mhz))
        if self.raw_power_watts(batch, low) >= limit:
            return low
        high = clock_mhz
        for _ in range(40):  # bisection to well under 1 MHz
            middle = 0.5 * (low + high)
            if self.raw_power_watts(batch, middle) > limit:
                high = middle
            else:
                low = middle
        return low

    def batch_latency_s(self, batch: int, clock_mhz: float | None) -> float:
        clock = self.effective_clock_mhz(batch, clock_mhz)
        rate = self._rate_gflops_at_top * clock / self.gpu.max_clock_mhz
        compute_s = batch * self.dnn_params.gflops_per_image / (rate * self.utilization(batch))
        return self.fixed_latency_s + compute_s

    def prep_s(self, batch: int) -> float:
        data = self.dataset_params
        return data.prep_s_per_batch + data.prep_s_per_image * batch

    def busy_power_watts(self, batch: int, clock_mhz: float | None) -> float:
        return self.raw_power_watts(batch, self.effective_clock_mhz(batch, clock_mhz))


# -- the measured kind ---------------------------------------------------------------------


@dataclass(frozen=True)
class MeasuredPoint:
    batch: int
    clock_mhz: int
    latency_s: float
    prep_s: float
    busy_watts: float


class MeasuredWorkload(WorkloadProfile):
    """A full grid of measured points, interpolated linearly in log2(batch) and in clock.

    Outside the measured clocks the nearest one is used (no extrapolation); batch sizes must
    lie within the measured ones.
    """

    def __init__(
        self, gpu: GpuSpec, dnn: str, dataset: str, reload_s: float, points: Sequence[MeasuredPoint]
    ) -> None:
        super().__init__(gpu, dnn, dataset, reload_s)
        self._batches = sorted({p.batch for p in points})
        self._clocks = sorted({p.clock_mhz for p in points})
        grid = {(p.batch, p.clock_mhz): p for p in points}
        missing = [(b, c) for b in self._batches for c in self._clocks if (b, c) not in grid]
        if missing:
            batch, clock = missing[0]
            raise ValueError(
                f"{dnn}/{dataset}: the grid lacks batch {batch} at {clock} MHz "
                f"({len(missing)} points missing); measure every batch at every clock"
            )
        self._grid = grid

    def _interpolate(self, batch: int, clock_mhz: float | None, field: str) -> float:
        if not self._batches[0] <= batch <= self._batches[-1]:
            raise ValueError(
                f"{self.dnn}/{self.dataset}: batch {batch} outside the measured "
                f"{self._batches[0]}..{self._batches[-1]}"
            )
        clock = float(self.gpu.default_clock_mhz if clock_mhz is None else clock_mhz)
        clock = min(max(clock, self._clocks[0]), self._clocks[-1])
        b_low, b_high, b_weight = _bracket(self._batches, batch, log2=True)
        c_low, c_high, c_weight = _bracket(self._clocks, clock, log2=False)

        def at(b: int, c: int) -> float:
            value: float = getattr(self._grid[(b, c)], field)
            return value

        low = at(b_low, c_low) * (1 - c_weight) + at(b_low, c_high) * c_weight
        high = at(b_high, c_low) * (1 - c_weight) + at(b_high, c_high) * c_weight
        return low * (1 - b_weight) + high * b_weight

    def batch_latency_s(self, batch: int, clock_mhz: float | None) -> float:
        return self._interpolate(batch, clock_mhz, "latency_s")

    def prep_s(self, batch: int) -> float:
        return self._interpolate(batch, None, "prep_s")

    def busy_power_watts(self, batch: int, clock_mhz: float | None) -> float:
        return self._interpolate(batch, clock_mhz, "busy_watts")


def _bracket(values: Sequence[int], x: float, *, log2: bool) -> tuple[int, int, float]:
    """The two grid values around ``x`` and the weight of the upper one."""
    index = bisect.bisect_left(values, x)
    if index < len(values) and values[index] == x:
        return values[index], values[index], 0.0
    index = min(max(index, 1), len(values) - 1)
    low, high = values[index - 1], values[index]
    if log2:
        weight = (math.log2(x) - math.log2(low)) / (math.log2(high) - math.log2(low))
    else:
        weight = (x - low) / (high - low)
    return low, high, min(max(weight, 0.0), 1.0)


# -- profile sets (files) ------------------------------------------------------------------


class ProfileSet:
    """One GPU and the workloads defined for it, as loaded from one file."""

    def __init__(self, name: str, source: str, gpu: GpuSpec) -> None:
        self.name = name
        self.source = source
        self.gpu = gpu
        self._workloads: dict[tuple[str, str], WorkloadProfile] = {}

    def add(self, workload: WorkloadProfile) -> None:
        self._workloads[(workload.dnn, workload.dataset)] = workload

    @property
    def dnns(self) -> list[str]:
        return sorted({dnn for dnn, _ in self._workloads})

    def datasets(self, dnn: str) -> list[str]:
        return sorted(dataset for d, dataset in self._workloads if d == dnn)

    def workload(self, dnn: str, dataset: str) -> WorkloadProfile:
        """The profile of a pair; a clear error names what exists when it does not."""
        found = self._workloads.get((dnn, dataset))
        if found is not None:
            return found
        if dnn not in self.dnns:
            raise SpecError(
                f"profile {self.name!r} has no DNN {dnn!r} (known: {', '.join(self.dnns)})"
            )
        raise SpecError(
            f"profile {self.name!r} has no dataset {dataset!r} for {dnn} "
            f"(known: {', '.join(self.datasets(dnn))})"
        )


def builtin_profile_names() -> list[str]:
    root = resources.files(BUILTIN_PACKAGE)
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_profile_set(name_or_path: str | Path, relative_to: Path | None = None) -> ProfileSet:
    """A built-in set by name (``p40``, ``h100``) or any profile file by path.

    A relative path is looked up from ``relative_to`` (the workload file's folder) first.
    """
    text = str(name_or_path)
    if text in builtin_profile_names():
        with resources.as_file(resources.files(BUILTIN_PACKAGE) / f"{text}.yaml") as path:
            return parse_profile_set(load_yaml_file(path), text, f"{text}.yaml")
    path = Path(text)
    if not path.is_absolute() and relative_to is not None and (relative_to / path).exists():
        path = relative_to / path
    if not path.exists():
        raise SpecError(
            f"profile {text!r}: no such file, and not a built-in profile "
            f"(built-in: {', '.join(builtin_profile_names())})"
        )
    return parse_profile_set(load_yaml_file(path), path.stem, str(path))


def parse_profile_set(document: object, name: str, source: str) -> ProfileSet:
    root = Node(document, "", source)
    root.reject_unknown(
        ["kind", "description", "gpu", "voltage", "model", "families", "datasets", "dnns",
         "workloads"]
    )  # fmt: skip
    kind = root.required("kind").choice(["parametric", "measured"])
    gpu = _parse_gpu(root.required("gpu"))
    profiles = ProfileSet(name, source, gpu)
    if kind == "parametric":
        for workload in _parse_parametric(root, gpu):
            profiles.add(workload)
    else:
        for workload in _parse_measured(root, gpu):
            profiles.add(workload)
    return profiles


def _parse_gpu(node: Node) -> GpuSpec:
    node.reject_unknown(
        ["name", "power_limit_watts", "idle_floor_watts", "loaded_idle_watts",
         "clock_levels_mhz", "default_clock_mhz", "batch_sizes", "clock_change_s", "reload_s",
         "power_noise_watts", "power_jitter_fraction"]
    )  # fmt: skip
    clocks = node.required("clock_levels_mhz").ascending_integers()
    default_node = node.required("default_clock_mhz")
    default_clock = default_node.integer(positive=True)
    if default_clock not in clocks:
        raise default_node.error(f"{default_clock} is not one of clock_levels_mhz")
    gpu = GpuSpec(
        name=node.required("name").string(),
        power_limit_watts=node.required("power_limit_watts").number(positive=True),
        idle_floor_watts=node.required("idle_floor_watts").number(positive=True),
        loaded_idle_watts=node.required("loaded_idle_watts").number(positive=True),
        clock_levels_mhz=clocks,
        default_clock_mhz=default_clock,
        batch_sizes=node.required("batch_sizes").ascending_integers(),
        clock_change_s=node.required("clock_change_s").number(minimum=0.0),
        reload_s=node.required("reload_s").number(minimum=0.0),
        power_noise_watts=node.required("power_noise_watts").number(minimum=0.0),
        power_jitter_fraction=node.required("power_jitter_fraction").fraction(),
    )
    if gpu.loaded_idle_watts >= gpu.power_limit_watts:
        raise node.error("loaded_idle_watts must be below power_limit_watts")
    return gpu


def _parse_parametric(root: Node, gpu: GpuSpec) -> list[WorkloadProfile]:
    voltage_node = root.required("voltage")
    voltage_node.reject_unknown(["floor_volts", "floor_until_mhz", "max_volts"])
    voltage = VoltageCurve(
        floor_volts=voltage_node.required("floor_volts").number(positive=True),
        floor_until_mhz=voltage_node.required("floor_until_mhz").number(positive=True),
        max_volts=voltage_node.required("max_volts").number(positive=True),
        max_clock_mhz=float(gpu.max_clock_mhz),
    )
    model = root.required("model")
    model.reject_unknown(
        ["peak_tflops", "memory_gbps", "memory_full_batch", "min_saturation_batch",
         "max_saturation_batch", "reload_s_per_mb"]
    )  # fmt: skip
    constants = ModelConstants(
        peak_tflops=model.required("peak_tflops").number(positive=True),
        memory_gbps=model.required("memory_gbps").number(positive=True),
        memory_full_batch=model.required("memory_full_batch").integer(positive=True),
        min_saturation_batch=model.required("min_saturation_batch").number(positive=True),
        max_saturation_batch=model.required("max_saturation_batch").number(positive=True),
        reload_s_per_mb=model.required("reload_s_per_mb").number(minimum=0.0),
    )
    families = {key: _parse_family(node) for key, node in root.required("families").items()}
    datasets = [_parse_dataset(key, node) for key, node in root.required("datasets").items()]
    workloads: list[WorkloadProfile] = []
    for key, node in root.required("dnns").items():
        dnn = _parse_dnn(key, node, families)
        family = families[dnn.family]
        for dataset in datasets:
            workloads.append(
                ParametricWorkload(
                    gpu=gpu,
                    voltage=voltage,
                    constants=constants,
                    family=family,
                    dnn=dnn,
                    dataset=dataset,
                )
            )
    return workloads


def _parse_family(node: Node) -> FamilyParams:
    node.reject_unknown(
        ["efficiency", "fill_gflops", "utilization_exponent", "power_exponent", "contention",
         "launch_overhead_s", "sm_watts", "memory_watts"]
    )  # fmt: skip
    return FamilyParams(
        efficiency=node.required("efficiency").number(positive=True),
        fill_gflops=node.required("fill_gflops").number(positive=True),
        utilization_exponent=node.required("utilization_exponent").number(positive=True),
        power_exponent=node.required("power_exponent").number(positive=True),
        contention=node.required("contention").number(minimum=0.0),
        launch_overhead_s=node.required("launch_overhead_s").number(minimum=0.0),
        sm_watts=node.required("sm_watts").number(positive=True),
        memory_watts=node.required("memory_watts").number(minimum=0.0),
    )


def _parse_dataset(key: str, node: Node) -> DatasetParams:
    node.reject_unknown(["prep_s_per_batch", "prep_s_per_image"])
    return DatasetParams(
        key=key,
        prep_s_per_batch=node.required("prep_s_per_batch").number(minimum=0.0),
        prep_s_per_image=node.required("prep_s_per_image").number(minimum=0.0),
    )


def _parse_dnn(key: str, node: Node, families: dict[str, FamilyParams]) -> DnnParams:
    node.reject_unknown(["name", "family", "gflops_per_image", "frozen_graph_mb", "table1_mflops"])
    family = node.required("family").choice(sorted(families))
    table1 = node.child("table1_mflops")
    return DnnParams(
        key=key,
        full_name=node.required("name").string(),
        family=family,
        gflops_per_image=node.required("gflops_per_image").number(positive=True),
        frozen_graph_mb=node.required("frozen_graph_mb").number(positive=True),
        table1_mflops=None if table1.value is None else table1.number(positive=True),
    )


def _parse_measured(root: Node, gpu: GpuSpec) -> list[WorkloadProfile]:
    workloads: list[WorkloadProfile] = []
    for node in root.required("workloads").elements():
        node.reject_unknown(["dnn", "dataset", "reload_s", "points"])
        dnn = node.required("dnn").string()
        dataset = node.required("dataset").string()
        reload_node = node.child("reload_s")
        reload_s = gpu.reload_s if reload_node.value is None else reload_node.number(minimum=0.0)
        points = [_parse_point(p) for p in node.required("points").elements()]
        try:
            workloads.append(MeasuredWorkload(gpu, dnn, dataset, reload_s, points))
        except ValueError as error:
            raise node.error(str(error)) from None
    return workloads


def _parse_point(node: Node) -> MeasuredPoint:
    node.reject_unknown(["batch", "clock_mhz", "latency_s", "prep_s", "busy_watts"])
    return MeasuredPoint(
        batch=node.required("batch").integer(positive=True),
        clock_mhz=node.required("clock_mhz").integer(positive=True),
        latency_s=node.required("latency_s").number(positive=True),
        prep_s=node.required("prep_s").number(minimum=0.0),
        busy_watts=node.required("busy_watts").number(positive=True),
    )
