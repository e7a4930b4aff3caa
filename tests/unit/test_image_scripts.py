"""What ``image/build.sh`` and ``image/run.sh`` refuse, and the name of the stand-in base.

Building the image (minutes, root, buildah) is ``make image``, and running it against the
local cluster is ``make image-check``: neither is part of ``make test``. What is checked
here takes milliseconds: the scripts refuse clearly, before touching anything, what they
cannot do (their checks use bash builtins only, so an empty PATH reaches them), and the
stand-in base is named exactly as the Dockerfile's own base, so the Dockerfile is built
as written.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "image"
SCRIPTS = ["build.sh", "run.sh"]
NOBODY = 65534


def run_script(
    argv: list[str], *, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, "/bin/bash", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
        cwd=REPO,
    )


def as_root() -> tuple[str, ...]:
    """uid 0: as we are (CI runs as root), or in a user namespace of our own."""
    return () if os.geteuid() == 0 else ("unshare", "--user", "--map-root-user")


def as_nobody() -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()
    return ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")


@pytest.mark.parametrize("script", SCRIPTS)
def test_refuses_to_run_without_root(script: str) -> None:
    result = run_script([f"image/{script}"], prefix=as_nobody())
    assert result.returncode == 2, result.stderr
    assert f"{script}: error: must run as root" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("script", "tools", "packages"),
    [
        ("build.sh", "buildah debootstrap chroot sed", "buildah debootstrap coreutils sed"),
        (
            "run.sh",
            "buildah unshare setpriv chroot mount python3",
            "buildah util-linux coreutils mount python3",
        ),
    ],
)
def test_names_every_missing_tool_and_the_packages_that_bring_them(
    script: str, tools: str, packages: str, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path)}
    result = run_script([str(IMAGE_DIR / script)], prefix=as_root(), env=env)
    assert result.returncode == 2, result.stderr
    assert f"missing: {tools} (on Debian: apt-get install -y {packages})" in result.stderr
    assert list(tmp_path.iterdir()) == [empty], "nothing may be written before the checks"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["image/build.sh", "--no-such-flag"], "unknown argument: --no-such-flag"),
        (["image/run.sh", "--no-such-flag"], "unknown argument: --no-such-flag"),
        (["image/run.sh", "--env", "NOVALUE"], "--env NOVALUE: expected NAME=VALUE"),
    ],
)
def test_refuses_malformed_arguments(argv: list[str], message: str) -> None:
    result = run_script(argv, prefix=as_nobody())
    assert result.returncode == 2
    assert message in result.stderr


def dockerfile_base_default() -> str:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile names its base in ARG PYTHON_IMAGE"
    return match.group(1)


def sourced(function: str) -> str:
    result = run_script(["-c", f"source image/common.sh && {function}"])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_stand_in_carries_the_name_the_dockerfile_builds_from() -> None:
    default = dockerfile_base_default()
    assert "@" not in default, "a base pinned by digest in the Dockerfile cannot have a stand-in"
    assert "/" not in default.partition(":")[0], default
    assert sourced("dockerfile_base") == f"docker.io/library/{default}"
    stages = re.findall(r"^FROM (\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert stages and set(stages) == {"${PYTHON_IMAGE}"}, stages


def test_the_image_is_tagged_with_the_package_version() -> None:
    operator = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())
    version = operator["project"]["version"]
    assert sourced("project_version") == version


def test_help_says_the_base_is_a_stand_in_and_how_read_only_is_enforced() -> None:
    build = run_script(["image/build.sh", "--help"])
    assert build.returncode == 0
    assert "THE BASE IS A STAND-IN" in build.stdout
    assert dockerfile_base_default() in build.stdout
    run = run_script(["image/run.sh", "--help"])
    assert run.returncode == 0
    assert "mount -o remount,bind,ro" in run.stdout
    assert "#" not in run.stdout.splitlines()[0]
