"""A virtual GPU that a real Triton server drives: the loop closes through real inference.

The ``simbatch`` Python-backend model announces every batch it executes on a UNIX datagram
socket: ``S <size> <start_s>`` when it begins and ``<size> <start_s> <end_s>`` when it ends
(times on CLOCK_MONOTONIC, shared by every process on the host). Each batch drives the
power model of :mod:`capinfer_sidecar.sim.gpu_model`, so power spikes while the model
computes, exactly as a GPU's would. The model sleeps for the profile's latency at the
current SM clock, which this device publishes in a small JSON file each time the clock
changes: a lower clock really slows inference down.

The virtual GPU's knobs (the locked SM clock, the board power limit) live in a small JSON
*controls file*, the way a real GPU's live in the driver: :class:`VirtualGpuControls` (held
by the node agent, as NVML's ``Set*`` calls are) writes it, and the
:class:`VirtualGpuDevice` that the sidecar reads follows it. So the knobs outlive the
process that set them, as on a real GPU, and a restarted agent finds them as they were.
The board limit is recorded and read back; the power model enforces the profile's own
limit, not the one set (it does not model the firmware's controller).

Fault injection (tests only; the NVML device has no such path): a datagram
``F <kind> <seconds>`` on the same socket makes every reading of the device raise, for
that long, the error the NVML device raises for that NVML return code, built by the same
function (the knobs are the node agent's, through the controls file, and stay untouched).
``<kind>`` is the code's name without ``NVML_ERROR_``, in lower case (``unknown``,
``timeout``, ``gpu_is_lost``...); ``F clear 0`` ends a fault early. The device logs when a
fault starts and, at the first call after it ended, how many errors it raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capinfer_sidecar.gpu.base import GpuControls, GpuDevice, PowerLimitRange
from capinfer_sidecar.gpu.errors import GpuInvalidArgumentError
from capinfer_sidecar.gpu.nvml import NVML_ERROR_CODES, gpu_error_for_code
from capinfer_sidecar.sim.gpu_model import VirtualGpu
from capinfer_sidecar.sim.profiles import WorkloadProfile

log = logging.getLogger(__name__)

VIRTUAL_UUID = "GPU-00000000-0000-0000-0000-virtual00000"
MIN_LIMIT_FRACTION = 0.5
"""The virtual card's lowest board limit, as a fraction of its default (a P40's 125/250 W)."""


def read_controls(path: Path) -> dict[str, object]:
    """The knob state in a controls file; empty (the defaults) when there is none."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return state if isinstance(state, dict) else {}


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)  # atomic: no reader ever sees half a file


class VirtualGpuControls(GpuControls):
    """The knobs of a virtual GPU, kept in its controls file."""

    def __init__(self, profile: WorkloadProfile, controls_path: Path, uuid: str = VIRTUAL_UUID):
        self._profile = profile
        self._path = controls_path
        self._uuid = uuid

    @property
    def uuid(self) -> str:
        return self._uuid

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return tuple(self._profile.gpu.clock_levels_mhz)

    def set_locked_sm_clock_mhz(self, clock_mhz: int) -> None:
        if clock_mhz not in self._profile.gpu.clock_levels_mhz:
            raise GpuInvalidArgumentError(
                "set locked SM clock", f"{clock_mhz} MHz is not a supported clock"
            )
        self._update(locked_sm_clock_mhz=clock_mhz)

    def reset_sm_clock(self) -> None:
        self._update(locked_sm_clock_mhz=None)

    def power_limit_range(self) -> PowerLimitRange:
        default = float(self._profile.gpu.power_limit_watts)
        return PowerLimitRange(default * MIN_LIMIT_FRACTION, default, default)

    def set_power_limit_watts(self, watts: float) -> None:
        limits = self.power_limit_range()
        if not limits.min_watts <= watts <= limits.max_watts:
            raise GpuInvalidArgumentError(
                "set power limit",
                f"{watts:g} W is outside [{limits.min_watts:g}, {limits.max_watts:g}] W",
            )
        self._update(power_limit_watts=None if watts == limits.default_watts else watts)

    def enforced_power_limit_watts(self) -> float:
        value = read_controls(self._path).get("power_limit_watts")
        return (
            float(value) if isinstance(value, int | float) else self.power_limit_range().max_watts
        )

    def locked_sm_clock_mhz(self) -> int | None:
        value = read_controls(self._path).get("locked_sm_clock_mhz")
        return int(value) if isinstance(value, int) else None

    def _update(self, **changes: object) -> None:
        state = read_controls(self._path)
        state.update(changes)
        state["uuid"] = self._uuid
        _write_atomically(self._path, json.dumps(state, sort_keys=True))


@dataclass
class _Fault:
    kind: str
    until_s: float
    raised: int = 0


def latency_table(profile: WorkloadProfile, clock_mhz: int | None) -> dict[str, object]:
    """Batch latency per size at one clock, as the ``simbatch`` model reads it."""
    sizes = sorted(profile.gpu.batch_sizes)
    return {
        "clock_mhz": clock_mhz,
        "batch_sizes": sizes,
        "latency_s": [profile.batch_latency_s(size, clock_mhz) for size in sizes],
    }


class VirtualGpuDevice(GpuDevice):
    """:class:`GpuDevice` over the power model, fed by batches a real model executed."""

    def __init__(
        self,
        profile: WorkloadProfile,
        monotonic: Callable[[], float],
        *,
        latency_table_path: Path | None = None,
        controls_path: Path | None = None,
        seed: int = 0,
        uuid: str = VIRTUAL_UUID,
    ) -> None:
        self._profile = profile
        self._monotonic = monotonic
        self._model = VirtualGpu(profile, seed=seed, start_s=monotonic())
        self._latency_table_path = latency_table_path
        self._controls_path = controls_path
        self._controls_seen: int | None = None
        self._clock_mhz: int | None = None
        self._limit_watts = float(profile.gpu.power_limit_watts)
        self._uuid = uuid
        self._fault: _Fault | None = None
        self._publish_latency(None)
        self.follow_controls()

    # -- fault injection (tests) ---------------------------------------------------------
    def inject_fault(self, kind: str, duration_s: float) -> None:
        """Every call raises ``kind``'s NVML error for ``duration_s``; ``clear`` ends it."""
        self._end_fault(self._monotonic(), force=True)
        if kind == "clear":
            return
        if kind not in NVML_ERROR_CODES:
            raise ValueError(f"unknown fault {kind!r}: not an NVML error name, nor 'clear'")
        if not duration_s > 0:
            raise ValueError(f"a fault lasts more than 0 s, not {duration_s}")
        self._fault = _Fault(kind, self._monotonic() + duration_s)
        log.warning("virtual GPU: injected fault %s for %.2f s", kind, duration_s)

    def _end_fault(self, now: float, force: bool = False) -> None:
        fault = self._fault
        if fault is not None and (force or now >= fault.until_s):
            self._fault = None
            log.warning(
                "virtual GPU: injected fault %s over, %d errors raised", fault.kind, fault.raised
            )

    def _check_fault(self, operation: str) -> None:
        if self._fault is None:
            return
        self._end_fault(self._monotonic())
        fault = self._fault
        if fault is None:
            return
        fault.raised += 1
        raise gpu_error_for_code(operation, NVML_ERROR_CODES[fault.kind])

    # -- fed by the batch reports --------------------------------------------------------
    def batch_started(self, size: int, start_s: float) -> None:
        if self._model.executing:
            # The end of the previous batch was lost: close it where this one starts.
            self._model.finish_batch(start_s)
        self._model.start_batch(size, start_s)

    def batch_finished(self, size: int, start_s: float, end_s: float) -> None:
        if self._model.executing:
            self._model.finish_batch(end_s)
        else:
            self._model.record_batch(size, start_s, end_s)

    # -- GpuDevice -----------------------------------------------------------------------
    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def name(self) -> str:
        return f"virtual {self._profile.gpu.name} running {self._profile.label}"

    def power_watts(self) -> float:
        self._check_fault("power_watts")
        self.follow_controls()
        return self._model.instant_power_watts(self._monotonic())

    def average_power_watts(self) -> float:
        self._check_fault("average_power_watts")
        return self._model.average_power_watts(self._monotonic())

    def energy_joules(self) -> float:
        self._check_fault("energy_joules")
        return self._model.energy_joules(self._monotonic())

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return tuple(self._profile.gpu.clock_levels_mhz)

    def sm_clock_mhz(self) -> int:
        self._check_fault("sm_clock_mhz")
        clock = self._model.clock_mhz(self._monotonic())
        return clock if clock is not None else self._profile.gpu.default_clock_mhz

    def power_limit_watts(self) -> float:
        self.follow_controls()
        return self._limit_watts

    def follow_controls(self) -> None:
        """Take up knob changes from the controls file (cheap when it did not change)."""
        if self._controls_path is None:
            return
        try:
            seen: int | None = self._controls_path.stat().st_mtime_ns
        except FileNotFoundError:
            seen = None
        if seen == self._controls_seen:
            return
        self._controls_seen = seen
        state = read_controls(self._controls_path)
        clock = state.get("locked_sm_clock_mhz")
        clock_mhz = clock if isinstance(clock, int) else None
        limit = state.get("power_limit_watts")
        self._limit_watts = (
            float(limit) if isinstance(limit, int | float) else self._profile.gpu.power_limit_watts
        )
        if clock_mhz != self._clock_mhz:
            self._clock_mhz = clock_mhz
            self._model.set_clock(clock_mhz, self._monotonic())
            self._publish_latency(clock_mhz)

    def _publish_latency(self, clock_mhz: int | None) -> None:
        if self._latency_table_path is not None:
            table = latency_table(self._profile, clock_mhz)
            _write_atomically(self._latency_table_path, json.dumps(table))


class _BatchReportProtocol(asyncio.DatagramProtocol):
    def __init__(self, device: VirtualGpuDevice) -> None:
        self._device = device
        self.malformed = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        for line in data.decode(errors="replace").splitlines():
            self._handle(line.split())

    def _handle(self, fields: list[str]) -> None:
        try:
            if fields and fields[0] == "S" and len(fields) == 3:
                self._device.batch_started(int(fields[1]), float(fields[2]))
            elif fields and fields[0] == "F" and len(fields) == 3:
                self._device.inject_fault(fields[1], float(fields[2]))
            elif len(fields) == 3:
                self._device.batch_finished(int(fields[0]), float(fields[1]), float(fields[2]))
            else:
                raise ValueError(f"unexpected report {' '.join(fields)!r}")
        except (ValueError, RuntimeError) as error:
            self.malformed += 1
            if self.malformed == 1:
                log.warning("ignoring a batch report: %s", error)


def bind_report_socket(socket_path: Path) -> socket.socket:
    """The datagram socket the model reports to (a stale one from a crash is replaced)."""
    socket_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(socket_path))
    return sock


async def receive_batch_reports(
    device: VirtualGpuDevice, sock: socket.socket
) -> asyncio.DatagramTransport:
    """Feed the device from the bound socket; close the transport to stop."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _BatchReportProtocol(device), sock=sock
    )
    return transport
