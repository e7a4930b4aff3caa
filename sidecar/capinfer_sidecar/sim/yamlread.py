"""Typed reading of YAML documents with errors that name the file and the field.

Profiles and workloads are hand-written files; a mistake in one must come back as one clear
line (``p40.yaml: dnns.Res50.gflops_per_image: expected a positive number, got 'x'``), never
as a traceback from deep inside the simulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class SpecError(ValueError):
    """A profile or workload file is missing, unreadable or wrong; the message says where."""


def load_yaml_file(path: Path) -> Any:
    """Parse one YAML file, turning every failure into a :class:`SpecError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = ""
        mark = getattr(error, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None


class Node:
    """A value inside a document, with the dotted path that leads to it (for messages)."""

    def __init__(self, value: Any, path: str, source: str) -> None:
        self.value = value
        self.path = path
        self.source = source

    def error(self, message: str) -> SpecError:
        where = f"{self.path}: " if self.path else ""
        return SpecError(f"{self.source}: {where}{message}")

    def child(self, key: str | int) -> Node:
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            path = f"{self.path}.{key}" if self.path else key
        return Node(self._index(key), path, self.source)

    def _index(self, key: str | int) -> Any:
        if isinstance(key, int):
            return self.as_list()[key]
        return self.as_mapping().get(key)

    # -- shapes ---------------------------------------------------------------------------

    def as_mapping(self) -> Mapping[str, Any]:
        if not isinstance(self.value, Mapping):
            raise self.error(f"expected a mapping, got {_describe(self.value)}")
        return self.value

    def as_list(self) -> Sequence[Any]:
        if not isinstance(self.value, list):
            raise self.error(f"expected a list, got {_describe(self.value)}")
        return self.value

    def items(self) -> list[tuple[str, Node]]:
        return [(str(key), self.child(str(key))) for key in self.as_mapping()]

    def elements(self) -> list[Node]:
        return [self.child(index) for index in range(len(self.as_list()))]

    def has(self, key: str) -> bool:
        return self.as_mapping().get(key) is not None

    def reject_unknown(self, known: Sequence[str]) -> None:
        """Fail on keys the reader does not know: a typo must not be silently ignored."""
        unknown = sorted(str(key) for key in self.as_mapping() if key not in known)
        if unknown:
            raise self.error(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")

    # -- scalars --------------------------------------------------------------------------

    def required(self, key: str) -> Node:
        node = self.child(key)
        if node.value is None:
            raise node.error("required field is missing")
        return node

    def string(self) -> str:
        if not isinstance(self.value, str) or not self.value:
            raise self.error(f"expected a non-empty string, got {_describe(self.value)}")
        return self.value

    def number(self, *, positive: bool = False, minimum: float | None = None) -> float:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"expected a number, got {_describe(value)}")
        number = float(value)
        if positive and number <= 0:
            raise self.error(f"expected a positive number, got {value}")
        if minimum is not None and number < minimum:
            raise self.error(f"expected a number of at least {minimum:g}, got {value}")
        return number

    def fraction(self) -> float:
        """A number in [0, 1)."""
        number = self.number(minimum=0.0)
        if number >= 1.0:
            raise self.error(f"expected a fraction in [0, 1), got {self.value}")
        return number

    def integer(self, *, positive: bool = False) -> int:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected an integer, got {_describe(value)}")
        if positive and value <= 0:
            raise self.error(f"expected a positive integer, got {value}")
        return value

    def ascending_integers(self) -> tuple[int, ...]:
        """A non-empty, strictly ascending list of positive integers (a ladder)."""
        values = tuple(node.integer(positive=True) for node in self.elements())
        if not values:
            raise self.error("expected a non-empty list")
        if list(values) != sorted(set(values)):
            raise self.error(f"expected strictly ascending values, got {list(values)}")
        return values

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"expected true or false, got {_describe(self.value)}")
        return self.value

    def choice(self, options: Sequence[str]) -> str:
        value = self.string()
        if value not in options:
            raise self.error(f"expected one of {', '.join(options)}, got {value!r}")
        return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r}"
