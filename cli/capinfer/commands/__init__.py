"""Subcommands of ``capinfer``: each module exposes ``register(subparsers)``.

A handler is set with ``parser.set_defaults(handler=...)`` and returns the exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from capinfer.commands import bench, characterize, cluster, demo

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

COMMANDS: list[Register] = [
    cluster.register,
    demo.register,
    bench.register,
    characterize.register,
]
