"""``capinfer characterize``: a model's batch ladder measured on a real GPU.

The options and the handler live in :mod:`capinfer.characterize_gpu`, which also runs on
its own (``python -m capinfer.characterize_gpu``) on GPU machines without the Triton client.
"""

from __future__ import annotations

import argparse

from capinfer.characterize_gpu import DESCRIPTION, add_arguments, run_characterize


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "characterize",
        help="measure a model's throughput, latency and power across batch sizes on a GPU",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_characterize)
