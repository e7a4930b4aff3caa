"""Models for a local tritonserver: tests and the demo serve them through the Python backend.

``simbatch`` (see ``simbatch_model.py``) answers ``OUTPUT0 = 2 * INPUT0`` after sleeping for a
batch latency, and can report every executed batch to a file or socket.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SIMBATCH_MODEL_SOURCE = Path(__file__).with_name("simbatch_model.py")
SIMBATCH_INPUT = "INPUT0"
SIMBATCH_OUTPUT = "OUTPUT0"


@dataclass(frozen=True)
class SimBatchSpec:
    """What goes into a ``simbatch`` model's ``config.pbtxt``."""

    name: str = "simbatch"
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    row_width: int = 16
    """Elements per row of ``INPUT0``/``OUTPUT0`` (FP32)."""
    instance_count: int = 1
    base_latency_ms: float = 5.0
    per_item_latency_ms: float = 0.5
    max_supported_batch_size: int = 1024
    batch_report_path: str = ""
    latency_table_path: str = ""
    """A JSON latency table (see ``simbatch_model.py``) that overrides the fixed formula."""
    extra_parameters: Mapping[str, str] = field(default_factory=dict)

    def parameters(self) -> dict[str, str]:
        values = {
            "base_latency_ms": f"{self.base_latency_ms:g}",
            "per_item_latency_ms": f"{self.per_item_latency_ms:g}",
            "max_supported_batch_size": str(self.max_supported_batch_size),
        }
        if self.batch_report_path:
            values["batch_report_path"] = self.batch_report_path
        if self.latency_table_path:
            values["latency_table_path"] = self.latency_table_path
        values.update(self.extra_parameters)
        return values


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config_pbtxt(spec: SimBatchSpec) -> str:
    """The model's configuration in protobuf text format, as Triton reads it from disk."""
    preferred = ""
    if spec.preferred_batch_sizes:
        sizes = ", ".join(str(size) for size in spec.preferred_batch_sizes)
        preferred = f"  preferred_batch_size: [ {sizes} ]\n"
    parameters = "".join(
        f"parameters {{ key: {_quoted(key)} value {{ string_value: {_quoted(value)} }} }}\n"
        for key, value in sorted(spec.parameters().items())
    )
    return (
        f"name: {_quoted(spec.name)}\n"
        'backend: "python"\n'
        f"max_batch_size: {spec.max_batch_size}\n"
        f'input [ {{ name: "{SIMBATCH_INPUT}" data_type: TYPE_FP32 '
        f"dims: [ {spec.row_width} ] }} ]\n"
        f'output [ {{ name: "{SIMBATCH_OUTPUT}" data_type: TYPE_FP32 '
        f"dims: [ {spec.row_width} ] }} ]\n"
        "dynamic_batching {\n"
        f"{preferred}"
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}\n"
        "}\n"
        f"instance_group [ {{ kind: KIND_CPU count: {spec.instance_count} }} ]\n"
        f"{parameters}"
    )


def write_model_repository(repository: Path, spec: SimBatchSpec | None = None) -> Path:
    """Write the ``simbatch`` model (version 1) into ``repository``; return the model's folder."""
    spec = spec or SimBatchSpec()
    model_dir = repository / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(render_config_pbtxt(spec))
    shutil.copyfile(SIMBATCH_MODEL_SOURCE, model_dir / "1" / "model.py")
    return model_dir
