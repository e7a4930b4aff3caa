"""The binaries build fails with one clear line when Go or the module proxy is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capinfer.errors import UserError
from capinfer.localcluster.binaries import ClusterBinaries


def test_no_go_toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPINFER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CAPINFER_BIN_DIR", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if any(Path(d, "go").exists() for d in ("/usr/bin", "/bin")):
        pytest.fail("this check needs a PATH without go; /usr/bin/go exists here")
    with pytest.raises(UserError, match=r"^no Go toolchain on PATH"):
        ClusterBinaries.ensure(show_progress=False)


def test_unreachable_module_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPINFER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CAPINFER_BIN_DIR", raising=False)
    monkeypatch.setenv("GOPROXY", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(UserError, match=r"Go module proxy http://127\.0\.0\.1:9 is unreachable"):
        ClusterBinaries.ensure(show_progress=False)


def test_an_override_folder_must_hold_every_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPINFER_BIN_DIR", str(tmp_path))
    (tmp_path / "etcd").write_text("")
    os.chmod(tmp_path / "etcd", 0o755)
    with pytest.raises(UserError, match=r"missing cluster binaries.*kube-apiserver"):
        ClusterBinaries.ensure()
