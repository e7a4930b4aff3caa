"""Generate the Python stubs of the kubelet's pod-resources API from its published proto.

The proto is ``pkg/apis/podresources/v1/api.proto`` of the Go module ``k8s.io/kubelet``
(the version in ``PROTO_SOURCE``), copied unchanged next to the stubs. Fetch it again with::

    GOFLAGS=-mod=mod go mod download -json k8s.io/kubelet@v0.34.4   # prints "Dir"
    cp <Dir>/pkg/apis/podresources/v1/api.proto node/capinfer_node_agent/podresources/v1/

then run ``python node/gen_podresources.py`` (needs ``grpcio-tools``, a test dependency).
The generated files are committed, so building or installing capinfer needs neither Go nor
``grpcio-tools``; ``tests/unit/node_agent/test_podresources_stubs.py`` regenerates them and
fails when they differ from what is committed, or when the proto is not the published one.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

NODE_ROOT = Path(__file__).resolve().parent
PROTO = Path("capinfer_node_agent/podresources/v1/api.proto")
PROTO_SOURCE = "k8s.io/kubelet@v0.34.4 pkg/apis/podresources/v1/api.proto"
PROTO_SHA256 = "a61f7013802cfdb9ccf5b3976fc5f6331f03e83f9eda77c4448074fd75de77cf"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def check_proto(root: Path = NODE_ROOT) -> None:
    digest = hashlib.sha256((root / PROTO).read_bytes()).hexdigest()
    if digest != PROTO_SHA256:
        raise SystemExit(f"{PROTO} is not {PROTO_SOURCE} (sha256 {digest}, want {PROTO_SHA256})")


def generate(out_root: Path, root: Path = NODE_ROOT) -> list[Path]:
    """Write the stubs under ``out_root`` (mirroring the package path); returns them."""
    from grpc_tools import protoc  # noqa: PLC0415 (a test dependency: only generation needs it)

    check_proto(root)
    (out_root / PROTO.parent).mkdir(parents=True, exist_ok=True)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{root}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with code {code}")
    return [out_root / PROTO.parent / name for name in GENERATED]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=NODE_ROOT, help="root to write under")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
