"""``capinfer``: the user's command line. Each subcommand lives in ``capinfer.commands``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from capinfer.commands import COMMANDS
from capinfer.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capinfer",
        description=(
            "capinfer: GPU inference under a power cap, with the most throughput it allows."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except UserError as error:
        print(f"capinfer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capinfer: interrupted", file=sys.stderr)
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
