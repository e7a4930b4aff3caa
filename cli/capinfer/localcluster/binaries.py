"""The control plane's binaries, built from source by ``build-cluster-binaries.sh``."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from capinfer.errors import UserError

BUILD_SCRIPT = "build-cluster-binaries.sh"
BINARY_NAMES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "helm",
    "kwok",
    "kwokctl",
)


@dataclass(frozen=True)
class ClusterBinaries:
    """A folder holding every binary the local cluster runs."""

    bin_dir: Path

    def path(self, name: str) -> Path:
        if name not in BINARY_NAMES:
            raise ValueError(f"unknown cluster binary {name!r}")
        return self.bin_dir / name

    @classmethod
    def ensure(cls, *, show_progress: bool = True) -> ClusterBinaries:
        """Build what is missing (minutes on a cold cache) and return the folder.

        ``CAPINFER_BIN_DIR`` points at a folder of ready binaries and skips the build.
        """
        override = os.environ.get("CAPINFER_BIN_DIR")
        if override:
            binaries = cls(Path(override))
        else:
            script = resources.files("capinfer.localcluster").joinpath(BUILD_SCRIPT)
            result = subprocess.run(
                ["bash", str(script)],
                stdout=subprocess.PIPE,
                stderr=None if show_progress else subprocess.PIPE,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                detail = (result.stderr or "").strip().splitlines()
                raise UserError(
                    detail[-1] if detail else f"{BUILD_SCRIPT} failed ({result.returncode})"
                )
            binaries = cls(Path(result.stdout.strip().splitlines()[-1]))
        missing = [n for n in BINARY_NAMES if not os.access(binaries.path(n), os.X_OK)]
        if missing:
            raise UserError(f"missing cluster binaries in {binaries.bin_dir}: {', '.join(missing)}")
        return binaries
