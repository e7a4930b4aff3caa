"""``capinfer-operator``: watches PowerCappedInference objects and deploys Triton pods."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import kopf

from capinfer_operator import handlers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capinfer-operator",
        description=(
            "Deploys NVIDIA Triton pods with a capinfer sidecar for every PowerCappedInference"
            " and reports their power, batch size and readiness in its status."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    scope.add_argument(
        "--namespace", "-n", action="append", default=[],
        help="watch only this namespace (repeatable; globs like 'team-*' allowed)",
    )  # fmt: skip
    ha = parser.add_mutually_exclusive_group()
    ha.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through kopf's peering object NAME (high availability)",
    )
    ha.add_argument(
        "--standalone", action="store_true", help="no peering: this is the only replica (default)"
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=os.environ.get("CAPINFER_LIVENESS"),
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz [env CAPINFER_LIVENESS]",
    )
    parser.add_argument(
        "--sidecar-image",
        default=os.environ.get(handlers.SIDECAR_IMAGE_ENV, ""),
        help="sidecar image for objects that name none [env CAPINFER_SIDECAR_IMAGE]",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CAPINFER_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO) [env CAPINFER_LOG_LEVEL]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    if args.sidecar_image:
        os.environ[handlers.SIDECAR_IMAGE_ENV] = args.sidecar_image
    namespaces = list(args.namespace)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=not args.peering,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
