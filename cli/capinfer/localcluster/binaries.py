"""The control plane's binaries, built from source by ``build-cluster-binaries.sh``."""

from __future__ import annotations

import os
import subprocess
import sys
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
            bin_dir = _run_build(["bash", str(script)], show_progress)
            binaries = cls(bin_dir)
        missing = [n for n in BINARY_NAMES if not os.access(binaries.path(n), os.X_OK)]
        if missing:
            raise UserError(f"missing cluster binaries in {binaries.bin_dir}: {', '.join(missing)}")
        return binaries


ERROR_PREFIX = "build-cluster-binaries: error: "


def _run_build(argv: list[str], show_progress: bool) -> Path:
    """Run the build script: progress lines pass through, its error becomes a UserError."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    error = ""
    for line in process.stderr or ():
        if line.startswith(ERROR_PREFIX):
            error = line.removeprefix(ERROR_PREFIX).strip()
        elif show_progress:
            sys.stderr.write(line)
    stdout = process.stdout.read() if process.stdout is not None else ""
    if process.wait() != 0:
        raise UserError(error or f"{BUILD_SCRIPT} failed with exit code {process.returncode}")
    return Path(stdout.strip().splitlines()[-1])
