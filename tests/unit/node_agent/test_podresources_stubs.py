"""The committed pod-resources stubs are exactly what the kubelet's published proto gives."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

NODE = Path(__file__).resolve().parents[3] / "node"


def load_generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_podresources", NODE / "gen_podresources.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_podresources"] = module
    spec.loader.exec_module(module)
    return module


def test_the_proto_is_the_published_one_and_the_stubs_are_generated_from_it(
    tmp_path: Path,
) -> None:
    generator = load_generator()
    generator.check_proto()  # type: ignore[attr-defined]
    for fresh in generator.generate(tmp_path):  # type: ignore[attr-defined]
        committed = NODE / fresh.relative_to(tmp_path)
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} differs from what node/gen_podresources.py generates: run it"
        )
