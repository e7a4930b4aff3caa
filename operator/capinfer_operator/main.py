"""``capinfer-operator``: watches PowerCappedInference objects and deploys Triton pods."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from capinfer_operator import handlers

PRIORITY_CEILING_MS = 2**42
"""Above any wall-clock time in milliseconds for a century: a start time becomes a priority."""


def start_priority(now_ns: int, tie_breaker: int) -> int:
    """A peering priority that is higher the earlier the replica started.

    kopf lets the replica with the highest priority handle events and pauses every other; two
    live replicas of the same priority both pause. Started first means leading: a new or
    restarted replica waits behind the running one instead of taking over from it, and the
    tie breaker (0-999) keeps two replicas started in the same millisecond apart."""
    return (PRIORITY_CEILING_MS - now_ns // 1_000_000) * 1000 + tie_breaker


def _listed(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="capinfer-operator",
        description=(
            "Deploys NVIDIA Triton pods with a capinfer sidecar for every PowerCappedInference"
            " and reports their power, batch size and readiness in its status."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true",
        help="watch every namespace (the default when no namespace is given)",
    )  # fmt: skip
    scope.add_argument(
        "--namespace", "-n", action="append",
        help="watch only this namespace (repeatable; globs like 'team-*' allowed)"
        " [env CAPINFER_WATCH_NAMESPACES, comma-separated]",
    )  # fmt: skip
    ha = parser.add_mutually_exclusive_group()
    ha.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through kopf's peering object NAME (high availability;"
        " needs kopf's peering CRDs) [env CAPINFER_PEERING]",
    )
    ha.add_argument(
        "--standalone", action="store_true", help="no peering: this is the only replica (default)"
    )
    parser.add_argument(
        "--peering-priority",
        type=int,
        default=int(env("CAPINFER_PEERING_PRIORITY") or 0) or None,
        help="this replica's priority among its peers: the highest handles events (default: the"
        " replica that started first leads) [env CAPINFER_PEERING_PRIORITY]",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(env("CAPINFER_PEERING_LIFETIME") or handlers.PEERING_LIFETIME_S),
        help="seconds a replica's keep-alive stays valid: how soon another replica takes over"
        f" from one that died (default {handlers.PEERING_LIFETIME_S})"
        " [env CAPINFER_PEERING_LIFETIME]",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=env("CAPINFER_LIVENESS"),
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz [env CAPINFER_LIVENESS]",
    )
    parser.add_argument(
        "--sidecar-image",
        default=env(handlers.SIDECAR_IMAGE_ENV, ""),
        help="sidecar image for objects that name none [env CAPINFER_SIDECAR_IMAGE]",
    )
    parser.add_argument(
        "--node-agent-address",
        default=env(handlers.NODE_AGENT_ENV, ""),
        help="where sidecars reach capinfer-node-agent (tcp://host:port or unix:///path);"
        " empty: no agent, batch size alone [env CAPINFER_NODE_AGENT_ADDRESS]",
    )
    parser.add_argument(
        "--log-level",
        default=env("CAPINFER_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO) [env CAPINFER_LOG_LEVEL]",
    )
    return parser


def kopf_options(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """What ``kopf.run`` gets: flags first, then the environment, then the defaults."""
    if args.all_namespaces:
        namespaces: list[str] = []
    else:
        namespaces = list(args.namespace or _listed(environ.get("CAPINFER_WATCH_NAMESPACES")))
    peering = None if args.standalone else (args.peering or environ.get("CAPINFER_PEERING"))
    options: dict[str, Any] = {
        "clusterwide": not namespaces,
        "namespaces": namespaces,
        "standalone": not peering,
        "peering_name": peering,
        "liveness_endpoint": args.liveness,
    }
    if peering:
        options["priority"] = args.peering_priority or start_priority(
            time.time_ns(), random.randrange(1000)
        )
    return options


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    if args.sidecar_image:
        os.environ[handlers.SIDECAR_IMAGE_ENV] = args.sidecar_image
    os.environ[handlers.PEERING_LIFETIME_ENV] = str(args.peering_lifetime)
    if args.node_agent_address:
        os.environ[handlers.NODE_AGENT_ENV] = args.node_agent_address
    kopf.run(**kopf_options(args, os.environ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
