"""`dynanoise` console entry point: a thin shell over library functions.

Each sub-command lives in `service.commands.<name>` and registers itself through
``register(subparsers)``. The list below is explicit: a command that fails to import
is an error, never a command that silently goes missing. Commands whose optional
dependencies are missing (torch for `train`, for instance) say so when run, not at
import; `bench` delegates to the benchmark harness of a source checkout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import audit, bench, calibrate, models, serve, tenants, train

COMMANDS = (serve, tenants, models, train, audit, calibrate, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynanoise",
        description="Serve ONNX classifiers behind the DynaNoise defense, and audit them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "forwards_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.forwarded = rest  # a delegating command (bench) parses these itself
    result: int | None = args.handler(args)
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
