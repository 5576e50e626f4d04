"""`dynanoise` console entry point: a thin shell over library functions.

Each sub-command lives in `service.commands.<name>` and registers itself through
``register(subparsers)``; commands whose optional dependencies are missing
(torch for `train`, for instance) say so when run, not at import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("serve", "tenants", "train", "audit", "calibrate", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynanoise",
        description="Serve ONNX classifiers behind the DynaNoise defense, and audit them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"service.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("service.commands"):
                continue  # command not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int | None = args.handler(args)
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
