"""The pure parts of the local tritonserver helper: command line, environment, discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from capinfer.testmodels import SimBatchSpec, render_config_pbtxt
from capinfer.tritonlocal import (
    ServerPorts,
    TritonDistribution,
    TritonNotInstalledError,
    find_distribution,
    free_tcp_ports,
    log_tail,
    server_arguments,
    server_environment,
)


def fake_pytriton(root: Path, stub_versions: tuple[str, ...] = ("3.11",)) -> Path:
    server_dir = root / "pytriton" / "tritonserver"
    for folder in ("bin", "backends/python", "caches"):
        (server_dir / folder).mkdir(parents=True)
    (server_dir / "bin" / "tritonserver").touch()
    (server_dir / "backends" / "python" / "libtriton_python.so").touch()
    for version in stub_versions:
        stub_dir = server_dir / "python_backend_stubs" / version
        stub_dir.mkdir(parents=True)
        (stub_dir / "triton_python_backend_stub").touch()
    (root / "nvidia_pytriton.libs").mkdir()
    return root / "pytriton"


def distribution(root: Path) -> TritonDistribution:
    return find_distribution(fake_pytriton(root), python_version=(3, 11))


def test_finds_the_stub_of_the_requested_python(tmp_path: Path) -> None:
    found = distribution(tmp_path)
    assert found.stub_path.parent.name == "3.11"
    assert found.libs_dir == tmp_path / "nvidia_pytriton.libs"


def test_a_python_without_a_stub_is_named_in_the_error(tmp_path: Path) -> None:
    root = fake_pytriton(tmp_path, stub_versions=("3.10",))
    with pytest.raises(TritonNotInstalledError, match=r"Python 3\.11"):
        find_distribution(root, python_version=(3, 11))


def test_a_missing_binary_is_reported(tmp_path: Path) -> None:
    root = fake_pytriton(tmp_path)
    (root / "tritonserver" / "bin" / "tritonserver").unlink()
    with pytest.raises(TritonNotInstalledError, match="tritonserver is missing"):
        find_distribution(root, python_version=(3, 11))


def test_arguments_bind_every_service_to_loopback_in_explicit_mode(tmp_path: Path) -> None:
    argv = server_arguments(
        distribution(tmp_path),
        tmp_path / "models",
        tmp_path / "backends",
        ServerPorts(http=1001, grpc=1002, metrics=1003),
        load_models=["a", "b"],
        shm_prefix="p-",
        exit_timeout_s=5,
    )
    assert "--model-control-mode=explicit" in argv
    assert {"--load-model=a", "--load-model=b"} <= set(argv)
    for service, port in (("http", 1001), ("grpc", 1002), ("metrics", 1003)):
        assert f"--{service}-address=127.0.0.1" in argv
        assert f"--{service}-port={port}" in argv
    assert "--backend-config=python,shm-region-prefix-name=p-" in argv


def test_environment_puts_this_python_and_the_bundled_libraries_first(tmp_path: Path) -> None:
    env = server_environment(
        distribution(tmp_path),
        {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib", "HOME": "/root"},
        Path("/venv/bin"),
    )
    assert env["PATH"] == "/venv/bin:/usr/bin"
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path / 'nvidia_pytriton.libs'}:/opt/lib"
    assert env["HOME"] == "/root"


def test_free_ports_are_distinct() -> None:
    ports = free_tcp_ports(3)
    assert len(set(ports)) == 3


def test_log_tail_leaves_out_the_option_tables(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("first\n+-----+\n| Option | Value |\nE1 failed to load\n")
    assert log_tail(log) == "first\nE1 failed to load"
    assert "no log" in log_tail(tmp_path / "absent")


def test_config_carries_batching_and_quoted_parameters() -> None:
    text = render_config_pbtxt(
        SimBatchSpec(
            max_batch_size=16,
            preferred_batch_sizes=(4, 16),
            batch_report_path='/tmp/a "b"',
        )
    )
    assert "max_batch_size: 16\n" in text
    assert "preferred_batch_size: [ 4, 16 ]" in text
    assert 'string_value: "/tmp/a \\"b\\""' in text
    assert 'key: "max_supported_batch_size"' in text
